"""The evaluation engine: pure (stdlib + mmh3), shared by the SDK and the server."""

from .bucketing import bucket, threshold
from .evaluate import Evaluation, EvaluationError, Snapshot, compile_flag, compile_segment, error_result
from .model import Condition, Config, ConfigError, Flag, ModelError, Rollout, Rule, Segment
from .operators import ConditionError, check_condition, check_pattern

__all__ = [
    "Condition",
    "ConditionError",
    "Config",
    "ConfigError",
    "Evaluation",
    "EvaluationError",
    "Flag",
    "ModelError",
    "Rollout",
    "Rule",
    "Segment",
    "Snapshot",
    "bucket",
    "check_condition",
    "check_pattern",
    "compile_flag",
    "compile_segment",
    "error_result",
    "threshold",
]
