"""The storage protocol for rollout plans, their decisions, and the controller's lease.

A rollout record: `{"environment", "flag", "plan": {...}, "state": {...},
"version": int (from 1), "updated_at": float}` — `plan` and `state` are the JSON
forms of `flagserver.rollout.plan`; the store keeps them opaque. Every write of a
rollout goes with its audit entry (target_type "rollout", `action` as given) in one
transaction; deleting a flag deletes its rollout and decisions. Rollouts do not
change the config document: writing one bumps no config version.

Rules every backend keeps (pinned by tests/storage/test_rollouts_contract.py):
methods naming an environment or a flag raise NotFound("environment") or
NotFound("flag") for unknown ones, reads included; `list_rollouts` is sorted by
(environment, flag); the records returned are copies (mutating them changes
nothing stored).
"""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]

DECISIONS_KEPT = 1_000  # per rollout; the oldest go first


class RolloutStore(Protocol):
    def get_rollout(self, env: str, flag: str) -> Record | None:
        """Raises NotFound for an unknown environment or flag."""

    def put_rollout(self, env: str, flag: str, plan: Record, state: Record, *,
                    expected_version: int | None, actor: str, action: str | None) -> Record:
        """Create (`expected_version=None`: only if absent, else AlreadyExists) or
        replace at `expected_version` (else VersionConflict; NotFound("rollout")
        when there is none to replace). Audited as `action` (e.g. "rollout.start"),
        target_type "rollout", target_key the flag, with the records before and
        after; `action=None` writes no audit entry (the controller's routine state
        after a hold, which the decision log records). Raises NotFound for an
        unknown environment or flag."""

    def list_rollouts(self, env: str | None = None) -> list[Record]:
        """Every rollout (of `env`, or of all environments), for the controller and
        listings, sorted by (environment, flag). NotFound for an unknown `env`."""

    def record_decision(self, env: str, flag: str, decision: Record, *, replace_last: bool) -> None:
        """Append a decision `{"at", "action", "reason", "numbers", "stage_index", "key"}`;
        with `replace_last`, overwrite the newest instead (a hold that merely
        updates its numbers; with no decision yet it appends). Decisions are kept
        per rollout, newest first, capped at `DECISIONS_KEPT`. The decision is
        stored as given (JSON-compatible). Raises NotFound("rollout") when the
        flag has no rollout."""

    def list_decisions(self, env: str, flag: str, limit: int = 100) -> list[Record]:
        """Newest first, at most `limit`; empty when the flag has no rollout."""

    def acquire_lease(self, name: str, holder: str, ttl_seconds: float, *, now: float | None = None) -> bool:
        """Take or renew the lease `name` for `holder`: True when `holder` holds it
        until `now + ttl_seconds` (it was free, expired, or already `holder`'s),
        False (changing nothing) while another holder's lease runs. A lease expires
        at its `expires_at` exactly. `now` is epoch seconds, `time.time()` when None
        (tests pass it to make time pass); every holder of one lease must use the
        same clock. Raises ValueError unless `ttl_seconds` is positive and finite."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if `holder` holds it."""
