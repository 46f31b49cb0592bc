"""A rollout plan's runtime state: what `decide` carries from one tick to the next.

Everything in it is JSON-safe (`to_dict` gives plain dicts, lists, strings and
finite numbers) so the controller can store it next to the plan. Its pieces:

- where the rollout is: `status`, `stage_index`, `stage_started_at`, `ticks_in_stage`;
- what must not move once set: `tau`, the mixture scale of each conversion
  guardrail, frozen at the first tick its test runs (STATISTICS.md 2.6);
- what is accumulated: `error_log_lr`, each error guardrail's log-likelihood
  ratio per ρ of the grid (2.7), and `last_counts`, every stage's cumulative event
  counts as of the previous tick, from which the next tick's increments come;
- what was last seen and said: `srm_log_bayes_factor`, `hold_notified` (the
  max-hold notice goes out once per stage), `status_reason`, `status_since`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Status = Literal["running", "waiting_for_approval", "paused", "rolled_back", "completed", "aborted"]
STATUSES: tuple[str, ...] = ("running", "waiting_for_approval", "paused", "rolled_back", "completed", "aborted")
#: Statuses after which nothing happens any more.
FINAL_STATUSES: frozenset[str] = frozenset({"rolled_back", "completed", "aborted"})


class StateError(ValueError):
    """A stored state that cannot be read back (wrong type or unknown status)."""


@dataclass(frozen=True, slots=True)
class StageMark:
    """One stage's cumulative counts per guardrail event as of the previous tick,
    recognised by its start time and percentage."""

    started_at: float
    percentage: float
    canary_events: Mapping[str, int] = field(default_factory=dict)
    control_events: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "percentage": self.percentage,
                "canary_events": dict(self.canary_events), "control_events": dict(self.control_events)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageMark:
        return cls(float(data["started_at"]), float(data["percentage"]),
                   {str(k): int(v) for k, v in data.get("canary_events", {}).items()},
                   {str(k): int(v) for k, v in data.get("control_events", {}).items()})


@dataclass(frozen=True, slots=True)
class PlanState:
    """The runtime state of a plan (see the module docstring). Treat it as immutable:
    `decide` returns a new one."""

    status: Status = "running"
    stage_index: int = 0
    stage_started_at: float = 0.0
    ticks_in_stage: int = 0
    tau: Mapping[str, float] = field(default_factory=dict)
    error_log_lr: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    last_counts: tuple[StageMark, ...] = ()
    srm_log_bayes_factor: float = 0.0
    hold_notified: bool = False
    status_reason: str = ""
    status_since: float | None = None
    last_tick_at: float | None = None

    @classmethod
    def initial(cls, now: float) -> PlanState:
        """A plan that starts its first stage at `now`."""
        return cls(stage_started_at=now, status_since=now)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def tau_for(self, event: str) -> float | None:
        """The frozen τ of a conversion guardrail, None before its first test."""
        return self.tau.get(event)

    def promoted(self, now: float) -> PlanState:
        """The state after moving to the next stage at `now`: running, soak and hold
        notice reset; τ, the error test and the counts carry over."""
        return replace(self, status="running", stage_index=self.stage_index + 1, stage_started_at=now,
                       ticks_in_stage=0, hold_notified=False, status_reason="", status_since=now)

    def with_status(self, status: Status, reason: str, now: float) -> PlanState:
        """The same state with another status, and why."""
        return replace(self, status=status, status_reason=reason, status_since=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "stage_index": self.stage_index, "stage_started_at": self.stage_started_at,
            "ticks_in_stage": self.ticks_in_stage, "tau": dict(self.tau),
            "error_log_lr": {k: list(v) for k, v in self.error_log_lr.items()},
            "last_counts": [m.to_dict() for m in self.last_counts],
            "srm_log_bayes_factor": _finite(self.srm_log_bayes_factor),
            "hold_notified": self.hold_notified, "status_reason": self.status_reason,
            "status_since": self.status_since, "last_tick_at": self.last_tick_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanState:
        """Read a stored state; missing keys take their defaults. Raises StateError for
        an unknown status or values of the wrong type."""
        try:
            status = data.get("status", "running")
            if status not in STATUSES:
                raise StateError(f"unknown status {status!r}")
            since = data.get("status_since")
            tick = data.get("last_tick_at")
            return cls(
                status=status,
                stage_index=int(data.get("stage_index", 0)),
                stage_started_at=float(data.get("stage_started_at", 0.0)),
                ticks_in_stage=int(data.get("ticks_in_stage", 0)),
                tau={str(k): float(v) for k, v in data.get("tau", {}).items()},
                error_log_lr={str(k): tuple(float(x) for x in v) for k, v in data.get("error_log_lr", {}).items()},
                last_counts=tuple(StageMark.from_dict(m) for m in data.get("last_counts", [])),
                srm_log_bayes_factor=float(data.get("srm_log_bayes_factor", 0.0)),
                hold_notified=bool(data.get("hold_notified", False)),
                status_reason=str(data.get("status_reason", "")),
                status_since=None if since is None else float(since),
                last_tick_at=None if tick is None else float(tick),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if isinstance(exc, StateError):
                raise
            raise StateError(f"unreadable rollout state: {exc}") from exc


def _finite(value: float) -> float:
    """JSON has no infinities: clamp to ±1e308."""
    if math.isnan(value):
        return 0.0
    return max(-1e308, min(1e308, value))
