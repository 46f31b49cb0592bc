"""The storage protocol for exposures and conversions (the evidence of a rollout).

A flag's *stage* in an environment starts when the flag is created and again at
every write that changes its `rollout` or `enabled`; stage n covers the flag
versions from its `start_version` up to the next stage's. An exposure belongs to
the stage of the flag version it was evaluated at, so late deliveries land in the
right stage.

Per (environment, flag, stage, arm) the store keeps, exactly:
- distinct users exposed, a user's arm being the variant of their first exposure
  in that stage; a user later seen with another variant stays in the first arm and
  is counted as `mixed`;
- per tracked event, the distinct exposed users who sent it at or after their
  first exposure in that stage, and the sum of those events' values.

Each count exists twice: over all exposures (`all`, for reporting) and over the
comparison population (`randomized`: reason SPLIT from the flag's own rollout,
rule id null), which is what canary-versus-control statistics may use.

The rules every backend keeps (pinned by tests/storage/test_events_contract.py):
- stage 1 starts at version 1 when the flag is created, in every environment
  (and when an environment is created, for every flag); a new stage starts at the
  new version in the same transaction as every `update_flag` that changes the
  flag's `rollout` or `enabled` in that environment (`_records.starts_stage`);
  deleting a flag deletes its stages and everything counted in them;
- an exposure belongs to the stage with the largest `start_version` at or below
  its `flag_version` (a version below the first stage's belongs to stage 1); an
  exposure of a flag that no longer exists is skipped;
- a batch is processed in time order (`at`), exposures before conversions at
  equal times, otherwise in the order given;
- a user's arm and population (`randomized` when the exposure is `comparable`)
  are those of their first recorded exposure in the stage; a later exposure with
  another variant marks them `mixed`, once. Their exposure time is the earliest
  recorded, so an exposure delivered late can only make later conversions count;
- a conversion counts in every stage of the environment (any flag) where its user
  was exposed at or before the conversion's `at`: once per user and event for
  `users`, every time for `value_sum` (a `value` of None adds nothing);
- batch ids are remembered per environment for at least `BATCH_ID_RETENTION`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

BATCH_ID_RETENTION = 7 * 24 * 3600  # seconds a batch id is remembered, at least


class Exposure(NamedTuple):
    """One user seeing one variant (immutable; a tuple because ingestion builds
    thousands a second and a frozen dataclass costs three times as much)."""

    flag: str
    variant: str
    rule_id: str | None
    reason: str
    randomized: bool
    flag_version: int
    user: str
    at: float

    @property
    def comparable(self) -> bool:
        """In the canary-versus-control comparison: split by the flag's own rollout."""
        return self.randomized and self.rule_id is None


class Conversion(NamedTuple):
    """One tracked event of one user."""

    event: str
    user: str
    value: float | None
    at: float


ALL = "all"  # the population of every exposure
RANDOMIZED = "randomized"  # the comparison population: split by the flag's own rollout


def empty_counts() -> dict[str, Any]:
    """One population of one arm before anything was counted."""
    return {"exposed": 0, "mixed": 0, "events": {}}


def check_batch(exposures: Iterable[Exposure], conversions: Iterable[Conversion]) -> None:
    """Raise ValueError for an event time or a value that is not a finite number
    (they cannot be ordered or summed); backends call it before counting anything."""
    for exposure in exposures:
        if not math.isfinite(exposure.at):
            raise ValueError(f"exposure of {exposure.flag!r} by {exposure.user!r}: `at` {exposure.at!r} is not finite")
    for conversion in conversions:
        if not math.isfinite(conversion.at):
            raise ValueError(f"conversion {conversion.event!r} by {conversion.user!r}: `at` is not finite")
        if conversion.value is not None and not math.isfinite(conversion.value):
            raise ValueError(f"conversion {conversion.event!r} by {conversion.user!r}: `value` is not finite")


class EventStore(Protocol):
    def record_events(self, env: str, batch_id: str, exposures: list[Exposure],
                      conversions: list[Conversion]) -> bool:
        """Count a batch, all or nothing. Exposures are applied before conversions of
        the same or a later time (the batch is processed in time order). Returns
        False, counting nothing, when `batch_id` was already recorded for `env`.
        Raises NotFound for an unknown environment, and ValueError, counting
        nothing, for an event whose `at` (or a conversion's `value`) is not a
        finite number. Exposures of flags that do not exist are refused by the
        caller (the API); one that slips through (the flag deleted meanwhile) is
        skipped."""

    def list_stages(self, env: str, flag: str) -> list[dict[str, Any]]:
        """Stages, oldest first: `{"stage", "start_version", "started_at", "rollout",
        "enabled"}`. Raises NotFound for an unknown environment or flag."""

    def stage_counts(self, env: str, flag: str, stage: int) -> dict[str, Any]:
        """`{arm: {"all": C, "randomized": C}}` with C =
        `{"exposed": int, "mixed": int, "events": {name: {"users": int, "value_sum": float}}}`.
        Arms with no exposure are absent; both populations are present for every
        arm (zeros and no events when nobody in it was randomized), and an event
        is present in a population once one of its users converted. Raises
        NotFound for an unknown environment, flag or stage."""
