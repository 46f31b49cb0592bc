"""What the controller gives `decide`: the exact per-stage counts of the store.

Only the randomized population counts (exposures split by the flag's own
rollout, DESIGN.md "Events and attribution"): users served by a targeting rule
are not a random sample and must not be passed in here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """One arm of one stage: `exposed` distinct users, and per guardrail event the
    distinct exposed users who sent it after their exposure. Raises ValueError for
    negative counts."""

    exposed: int
    events: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.exposed < 0 or any(v < 0 for v in self.events.values()):
            raise ValueError("counts must be >= 0")
        object.__setattr__(self, "events", MappingProxyType(dict(self.events)))

    def count(self, event: str) -> int:
        """Users who sent `event`; 0 when the event was never seen."""
        return self.events.get(event, 0)


@dataclass(frozen=True, slots=True)
class StageStats:
    """One stage of the plan: its configured `percentage` (the canary's share, 0-100),
    when it started, and its two arms (control = the flag's first variant, canary =
    the variant being rolled out)."""

    percentage: float
    started_at: float
    control: ArmCounts
    canary: ArmCounts


@dataclass(frozen=True, slots=True)
class RolloutStats:
    """The plan's stages entered so far, oldest first; the last one is current."""

    stages: tuple[StageStats, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def current(self) -> StageStats | None:
        return self.stages[-1] if self.stages else None
