"""Automatic rollouts: the plan a product manager sets, and the pure decision taken
at every tick (`decide`), by always-valid sequential tests (STATISTICS.md).

The pure parts do no I/O: `plan`, `state`, `inputs`, `sequential`, `evidence`
and `policy` (the names below come from them). The parts that move data are
imported from their own modules: `controller` loads a `RolloutPlan`, builds
`RolloutStats` from the store's per-stage counts, calls `decide(plan, stats, now)`,
applies the `Decision`'s action and stores its `state`, reason and numbers;
`actions` carries out people's actions (API, CLI, pages); `webhooks` tells
receivers what happened.
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
