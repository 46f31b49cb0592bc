"""The storage protocol for rollout plans, their decisions, and the controller's lease.

A rollout record: `{"environment", "flag", "plan": {...}, "state": {...},
"version": int (from 1), "updated_at": float}` — `plan` and `state` are the JSON
forms of `flagserver.rollout.plan`; the store keeps them opaque. Every write of a
rollout goes with its audit entry (target_type "rollout", `action` as given) in one
transaction; deleting a flag deletes its rollout and decisions.
"""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]


class RolloutStore(Protocol):
    def get_rollout(self, env: str, flag: str) -> Record | None:
        """Raises NotFound for an unknown environment or flag."""

    def put_rollout(self, env: str, flag: str, plan: Record, state: Record, *,
                    expected_version: int | None, actor: str, action: str) -> Record:
        """Create (`expected_version=None`: only if absent, else AlreadyExists) or
        replace at `expected_version` (else VersionConflict). Audited as `action`
        (e.g. "rollout.start"). Raises NotFound for an unknown environment or flag."""

    def list_rollouts(self, env: str | None = None) -> list[Record]:
        """Every rollout (of `env`, or of all environments), for the controller and listings."""

    def record_decision(self, env: str, flag: str, decision: Record, *, replace_last: bool) -> None:
        """Append a decision `{"at", "action", "reason", "numbers", "stage_index", "key"}`;
        with `replace_last`, overwrite the newest instead (a hold that merely
        updates its numbers). Decisions are kept per rollout, newest first, capped
        at 1,000."""

    def list_decisions(self, env: str, flag: str, limit: int = 100) -> list[Record]:
        """Newest first."""

    def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew the lease `name` for `holder`: True when `holder` holds it
        for the next `ttl_seconds` (it was free, expired, or already `holder`'s)."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if `holder` holds it."""
