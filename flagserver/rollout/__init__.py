"""Automatic rollouts: the plan a product manager sets, and the pure decision taken
at every tick (`decide`), by always-valid sequential tests (STATISTICS.md).

The controller loads a `RolloutPlan`, builds `RolloutStats` from the store's
per-stage counts, calls `decide(plan, stats, now)`, applies the `Decision`'s
action and stores its `state`, reason and numbers. Nothing here does I/O.
"""

from .inputs import ArmCounts, RolloutStats, StageStats
from .plan import Guardrail, PlanConfig, PlanError, RolloutPlan, RolloutPlanSchema, Stage
from .policy import Decision, approve, decide, resume
from .state import PlanState, StageMark, StateError

__all__ = [
    "ArmCounts",
    "Decision",
    "Guardrail",
    "PlanConfig",
    "PlanError",
    "PlanState",
    "RolloutPlan",
    "RolloutPlanSchema",
    "RolloutStats",
    "Stage",
    "StageMark",
    "StageStats",
    "StateError",
    "approve",
    "decide",
    "resume",
]
