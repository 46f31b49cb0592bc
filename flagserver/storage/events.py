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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Exposure:
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


@dataclass(frozen=True, slots=True)
class Conversion:
    event: str
    user: str
    value: float | None
    at: float


class EventStore(Protocol):
    def record_events(self, env: str, batch_id: str, exposures: list[Exposure],
                      conversions: list[Conversion]) -> bool:
        """Count a batch, all or nothing. Exposures are applied before conversions of
        the same or a later time (the batch is processed in time order). Returns
        False, counting nothing, when `batch_id` was already recorded for `env`.
        Raises NotFound for an unknown environment; exposures of flags that do not
        exist are refused by the caller, not here."""

    def list_stages(self, env: str, flag: str) -> list[dict[str, Any]]:
        """Stages, oldest first: `{"stage", "start_version", "started_at", "rollout",
        "enabled"}`. Raises NotFound for an unknown environment or flag."""

    def stage_counts(self, env: str, flag: str, stage: int) -> dict[str, Any]:
        """`{arm: {"all": C, "randomized": C}}` with C =
        `{"exposed": int, "mixed": int, "events": {name: {"users": int, "value_sum": float}}}`.
        Arms with no exposure are absent."""
