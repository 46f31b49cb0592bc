"""The rollout plan: what a product manager configures (`PlanConfig`), what the
controller carries between ticks (`PlanState`), and the marshmallow schema of
`PUT /api/v1/envs/{env}/flags/{key}/rollout-plan` (`RolloutPlanSchema`).

Defaults are resolved in one place, `PlanConfig.from_dict`, so a stored plan
always holds explicit numbers. Invalid plans raise `PlanError`, a ValueError
whose `fields` name every bad field (`{"stages[2].percentage": [...]}`); the
schema turns it into marshmallow's ValidationError, which the app's error
handler answers with a 422 naming the same fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from marshmallow import Schema, ValidationError, fields, post_load, validate

from .state import PlanState

Mode = Literal["auto", "manual", "hybrid"]
Kind = Literal["conversion", "error"]
RollbackTo = Literal["zero", "previous_stage"]
OnSrm = Literal["rollback", "pause"]

MODES: tuple[str, ...] = ("auto", "manual", "hybrid")
KINDS: tuple[str, ...] = ("conversion", "error")
ROLLBACK_TARGETS: tuple[str, ...] = ("zero", "previous_stage")
SRM_ACTIONS: tuple[str, ...] = ("rollback", "pause")

DEFAULT_PERCENTAGES: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
#: Non-inferiority margin for leaving a stage (STATISTICS.md 8.2). A stage at another
#: percentage takes the margin of the nearest default at or below it (0.30 below 5%).
DEFAULT_MARGINS: tuple[tuple[float, float], ...] = ((5.0, 0.30), (25.0, 0.15), (50.0, 0.10))
DEFAULT_MIN_USERS_PER_ARM = 200
DEFAULT_SOAK_INTERVALS = 10
DEFAULT_GUARDRAIL_MARGIN: dict[str, float] = {"conversion": 0.10, "error": 0.5}
MAX_STAGES = 20
MAX_GUARDRAILS = 20


class PlanError(ValueError):
    """An invalid plan; `fields` maps each bad field's path to its messages."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        first = next(iter(fields.items()))
        super().__init__(f"{first[0]}: {first[1][0]}")


def default_margin(percentage: float) -> float:
    """The default margin of a stage at `percentage`: 0.30 up to 25%, 0.15 up to 50%,
    0.10 from 50% (the default of the nearest default stage at or below it)."""
    margin = DEFAULT_MARGINS[0][1]
    for at, value in DEFAULT_MARGINS:
        if percentage >= at:
            margin = value
    return margin


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of the rollout. The canary leaves it only after `min_duration_seconds`,
    with `min_users_per_arm` users in each arm, and once the evidence rules out a relative
    conversion loss bigger than `margin`. Past `max_hold_seconds` people are notified."""

    percentage: float
    min_duration_seconds: float
    min_users_per_arm: int = DEFAULT_MIN_USERS_PER_ARM
    margin: float = 0.30
    max_hold_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"percentage": self.percentage, "min_duration_seconds": self.min_duration_seconds,
                "min_users_per_arm": self.min_users_per_arm, "margin": self.margin,
                "max_hold_seconds": self.max_hold_seconds}


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A metric that must not get worse: `conversion` (the share of exposed users who sent
    `event`; `margin` is the relative drop that hybrid mode treats as "looking off" at half)
    or `error` (bad when it rises; `margin` is the relative rise, halved likewise)."""

    event: str
    kind: Kind
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "kind": self.kind, "margin": self.margin}


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """A validated rollout plan with every default resolved. Constructing one directly
    checks the cross-field rules too, raising PlanError."""

    stages: tuple[Stage, ...]
    guardrails: tuple[Guardrail, ...]
    mode: Mode = "auto"
    interval_seconds: float = 60.0
    rollback_to: RollbackTo = "zero"
    on_srm: OnSrm = "rollback"
    alpha: float = 0.05
    alpha_promotion: float = 0.05
    tau_rel: float = 0.2
    srm_alpha: float = 0.001
    srm_concentration: float = 1000.0

    def __post_init__(self) -> None:
        errors = check_config(self)
        if errors:
            raise PlanError(errors)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanConfig:
        """Build from plan JSON, filling defaults; raises PlanError naming every bad field."""
        if not isinstance(data, Mapping):
            raise PlanError({"_schema": ["a rollout plan must be a JSON object"]})
        errors: dict[str, list[str]] = {}
        interval = _number(data, "interval_seconds", 60.0, errors, minimum=1.0)
        raw_stages = data.get("stages")
        if raw_stages is None:
            raw_stages = [{"percentage": p} for p in DEFAULT_PERCENTAGES]
        stages: list[Stage] = []
        if not isinstance(raw_stages, (list, tuple)) or not raw_stages:
            errors["stages"] = ["must be a non-empty list of stages"]
        else:
            for i, raw in enumerate(raw_stages):
                stage = _stage(raw, f"stages[{i}]", interval, errors)
                if stage is not None:
                    stages.append(stage)
        raw_guardrails = data.get("guardrails")
        guardrails: list[Guardrail] = []
        if not isinstance(raw_guardrails, (list, tuple)):
            errors["guardrails"] = ["must be a list with at least one conversion guardrail"]
        else:
            for i, raw in enumerate(raw_guardrails):
                guardrail = _guardrail(raw, f"guardrails[{i}]", errors)
                if guardrail is not None:
                    guardrails.append(guardrail)
        values = {
            "mode": _choice(data, "mode", "auto", MODES, errors),
            "interval_seconds": interval,
            "rollback_to": _choice(data, "rollback_to", "zero", ROLLBACK_TARGETS, errors),
            "on_srm": _choice(data, "on_srm", "rollback", SRM_ACTIONS, errors),
            "alpha": _number(data, "alpha", 0.05, errors, minimum=0.0, maximum=1.0, open_ends=True),
            "alpha_promotion": _number(data, "alpha_promotion", 0.05, errors, minimum=0.0, maximum=1.0,
                                       open_ends=True),
            "tau_rel": _number(data, "tau_rel", 0.2, errors, minimum=0.0, open_ends=True),
            "srm_alpha": _number(data, "srm_alpha", 0.001, errors, minimum=0.0, maximum=1.0, open_ends=True),
            "srm_concentration": _number(data, "srm_concentration", 1000.0, errors, minimum=0.0,
                                         open_ends=True),
        }
        if errors:
            raise PlanError(errors)
        return cls(stages=tuple(stages), guardrails=tuple(guardrails), **values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [s.to_dict() for s in self.stages],
            "guardrails": [g.to_dict() for g in self.guardrails],
            "mode": self.mode, "interval_seconds": self.interval_seconds, "rollback_to": self.rollback_to,
            "on_srm": self.on_srm, "alpha": self.alpha, "alpha_promotion": self.alpha_promotion,
            "tau_rel": self.tau_rel, "srm_alpha": self.srm_alpha, "srm_concentration": self.srm_concentration,
        }

    @property
    def conversion_guardrails(self) -> tuple[Guardrail, ...]:
        return tuple(g for g in self.guardrails if g.kind == "conversion")

    @property
    def error_guardrails(self) -> tuple[Guardrail, ...]:
        return tuple(g for g in self.guardrails if g.kind == "error")


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A plan as the controller holds it: the configuration and its runtime state."""

    config: PlanConfig
    state: PlanState = field(default_factory=PlanState)

    @classmethod
    def start(cls, config: PlanConfig, now: float) -> RolloutPlan:
        """A new plan at its first stage, running from `now`."""
        return cls(config, PlanState.initial(now))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        """From `{"config": ..., "state": ...}`; raises PlanError for a bad config, StateError
        for an unreadable state."""
        return cls(PlanConfig.from_dict(data.get("config", {})), PlanState.from_dict(data.get("state", {})))

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "state": self.state.to_dict()}


def check_config(config: PlanConfig) -> dict[str, list[str]]:
    """The rules that span fields: percentages strictly increasing and ending at 100,
    distinct guardrail events, at least one conversion guardrail, values in range."""
    errors: dict[str, list[str]] = {}
    if not config.stages:
        errors["stages"] = ["must have at least one stage"]
    elif len(config.stages) > MAX_STAGES:
        errors["stages"] = [f"at most {MAX_STAGES} stages"]
    previous = 0.0
    for i, stage in enumerate(config.stages):
        at = f"stages[{i}]"
        if not 0 < stage.percentage <= 100:
            errors[f"{at}.percentage"] = ["must be more than 0 and at most 100"]
        elif abs(stage.percentage * 100 - round(stage.percentage * 100)) > 1e-6:
            errors[f"{at}.percentage"] = ["must be a multiple of 0.01"]
        elif i > 0 and stage.percentage <= previous:
            errors[f"{at}.percentage"] = [f"must be greater than the previous stage's {previous:g}"]
        previous = stage.percentage
        if not 0 < stage.margin < 1:
            errors[f"{at}.margin"] = ["must be between 0 and 1 (a relative loss, 0.15 = 15%)"]
        if stage.min_duration_seconds < 0:
            errors[f"{at}.min_duration_seconds"] = ["must be >= 0"]
        if stage.min_users_per_arm < 0:
            errors[f"{at}.min_users_per_arm"] = ["must be >= 0"]
        if stage.max_hold_seconds is not None and not stage.max_hold_seconds > 0:
            errors[f"{at}.max_hold_seconds"] = ["must be positive or null"]
    if config.stages and config.stages[-1].percentage != 100 and f"stages[{len(config.stages) - 1}].percentage" \
            not in errors:
        errors[f"stages[{len(config.stages) - 1}].percentage"] = ["the last stage must be 100"]
    seen: set[str] = set()
    for i, guardrail in enumerate(config.guardrails):
        if guardrail.event in seen:
            errors[f"guardrails[{i}].event"] = [f"{guardrail.event!r} is already a guardrail"]
        seen.add(guardrail.event)
        if guardrail.kind not in KINDS:
            errors[f"guardrails[{i}].kind"] = [f"must be one of {', '.join(KINDS)}"]
        if not guardrail.margin > 0 or (guardrail.kind == "conversion" and not guardrail.margin < 1):
            errors[f"guardrails[{i}].margin"] = ["must be positive (and below 1 for a conversion)"]
    if len(config.guardrails) > MAX_GUARDRAILS:
        errors["guardrails"] = [f"at most {MAX_GUARDRAILS} guardrails"]
    elif not any(g.kind == "conversion" for g in config.guardrails):
        errors["guardrails"] = ["needs at least one conversion guardrail (promotion gates test it)"]
    if config.mode not in MODES:
        errors["mode"] = [f"must be one of {', '.join(MODES)}"]
    if config.rollback_to not in ROLLBACK_TARGETS:
        errors["rollback_to"] = [f"must be one of {', '.join(ROLLBACK_TARGETS)}"]
    if config.on_srm not in SRM_ACTIONS:
        errors["on_srm"] = [f"must be one of {', '.join(SRM_ACTIONS)}"]
    if not config.interval_seconds >= 1:
        errors["interval_seconds"] = ["must be at least 1"]
    for name in ("alpha", "alpha_promotion", "srm_alpha"):
        if not 0 < getattr(config, name) < 1:
            errors[name] = ["must be between 0 and 1"]
    for name in ("tau_rel", "srm_concentration"):
        value = getattr(config, name)
        if not (value > 0 and math.isfinite(value)):
            errors[name] = ["must be positive"]
    return errors


def _is_number(value: Any) -> bool:
    """A JSON number a double can hold (never a boolean, NaN, an infinity or a 400-digit int)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(data: Mapping[str, Any], key: str, default: float | None, errors: dict[str, list[str]],
            prefix: str = "", minimum: float | None = None, maximum: float | None = None,
            open_ends: bool = False) -> Any:
    value = data.get(key)
    if value is None:
        return default
    name = f"{prefix}.{key}" if prefix else key
    if not _is_number(value):
        errors[name] = ["must be a number"]
        return default
    low_bad = minimum is not None and (value <= minimum if open_ends else value < minimum)
    high_bad = maximum is not None and (value >= maximum if open_ends else value > maximum)
    if low_bad or high_bad:
        bounds = f"{'more than' if open_ends else 'at least'} {minimum:g}" if minimum is not None else ""
        if maximum is not None:
            bounds += f"{' and ' if bounds else ''}{'less than' if open_ends else 'at most'} {maximum:g}"
        errors[name] = [f"must be {bounds}"]
    return float(value)


def _choice(data: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...],
            errors: dict[str, list[str]]) -> Any:
    value = data.get(key, default)
    if value not in choices:
        errors[key] = [f"must be one of {', '.join(choices)}"]
        return default
    return value


def _stage(raw: Any, at: str, interval: float, errors: dict[str, list[str]]) -> Stage | None:
    if not isinstance(raw, Mapping):
        errors[at] = ["must be an object with a percentage"]
        return None
    before = len(errors)
    if raw.get("percentage") is None:
        errors[f"{at}.percentage"] = ["is required"]
    percentage = _number(raw, "percentage", 100.0, errors, at)
    soak = _number(raw, "min_duration_seconds", DEFAULT_SOAK_INTERVALS * interval, errors, at, minimum=0.0)
    users = raw.get("min_users_per_arm")
    if users is None:
        users = DEFAULT_MIN_USERS_PER_ARM
    elif not (isinstance(users, int) and not isinstance(users, bool)) or users < 0:
        errors[f"{at}.min_users_per_arm"] = ["must be a whole number >= 0"]
    margin = _number(raw, "margin", default_margin(percentage), errors, at)
    hold = _number(raw, "max_hold_seconds", None, errors, at)
    if len(errors) > before:
        return None
    return Stage(percentage=percentage, min_duration_seconds=soak, min_users_per_arm=int(users),
                 margin=margin, max_hold_seconds=hold)


def _guardrail(raw: Any, at: str, errors: dict[str, list[str]]) -> Guardrail | None:
    if not isinstance(raw, Mapping):
        errors[at] = ["must be an object with an event and a kind"]
        return None
    before = len(errors)
    event = raw.get("event")
    if not isinstance(event, str) or not 1 <= len(event) <= 200:
        errors[f"{at}.event"] = ["must be an event name of 1-200 characters"]
    kind = raw.get("kind")
    if kind not in KINDS:
        errors[f"{at}.kind"] = [f"must be one of {', '.join(KINDS)}"]
        kind = "conversion"
    margin = _number(raw, "margin", DEFAULT_GUARDRAIL_MARGIN[kind], errors, at)
    if len(errors) > before:
        return None
    return Guardrail(event=cast(str, event), kind=cast(Kind, kind), margin=margin)


# -- the API schema ------------------------------------------------------------------------------


class StrictNumber(fields.Float):
    """A JSON number: booleans and numeric strings are refused, not coerced."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not _is_number(value):
            raise ValidationError("must be a number")
        return super()._deserialize(value, attr, data, **kwargs)


class StageSchema(Schema):
    percentage = StrictNumber(required=True, validate=validate.Range(0, 100, min_inclusive=False))
    min_duration_seconds = StrictNumber(load_default=None, allow_none=True, validate=validate.Range(min=0))
    min_users_per_arm = fields.Integer(load_default=None, allow_none=True, strict=True,
                                       validate=validate.Range(min=0))
    margin = StrictNumber(load_default=None, allow_none=True,
                          validate=validate.Range(0, 1, min_inclusive=False, max_inclusive=False))
    max_hold_seconds = StrictNumber(load_default=None, allow_none=True,
                                    validate=validate.Range(min=0, min_inclusive=False))


class GuardrailSchema(Schema):
    event = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    margin = StrictNumber(load_default=None, allow_none=True, validate=validate.Range(0, min_inclusive=False))


class RolloutPlanSchema(Schema):
    """The body of `PUT .../rollout-plan`. `load` returns a `PlanConfig` with every default
    resolved, or raises ValidationError naming each bad field (`stages[1].percentage`);
    `dump` accepts a `PlanConfig` (or its `to_dict()`)."""

    stages = fields.List(fields.Nested(StageSchema), load_default=None,
                         validate=validate.Length(min=1, max=MAX_STAGES))
    guardrails = fields.List(fields.Nested(GuardrailSchema), required=True,
                             validate=validate.Length(min=1, max=MAX_GUARDRAILS))
    mode = fields.String(load_default="auto", validate=validate.OneOf(MODES))
    interval_seconds = StrictNumber(load_default=60.0, validate=validate.Range(min=1))
    rollback_to = fields.String(load_default="zero", validate=validate.OneOf(ROLLBACK_TARGETS))
    on_srm = fields.String(load_default="rollback", validate=validate.OneOf(SRM_ACTIONS))
    alpha = StrictNumber(load_default=0.05, validate=validate.Range(0, 1, min_inclusive=False, max_inclusive=False))
    alpha_promotion = StrictNumber(load_default=0.05,
                                   validate=validate.Range(0, 1, min_inclusive=False, max_inclusive=False))
    tau_rel = StrictNumber(load_default=0.2, validate=validate.Range(0, min_inclusive=False))
    srm_alpha = StrictNumber(load_default=0.001,
                             validate=validate.Range(0, 1, min_inclusive=False, max_inclusive=False))
    srm_concentration = StrictNumber(load_default=1000.0, validate=validate.Range(0, min_inclusive=False))

    @post_load
    def make_config(self, data: dict[str, Any], **kwargs: Any) -> PlanConfig:
        try:
            return PlanConfig.from_dict(data)
        except PlanError as exc:
            raise ValidationError(cast(Any, exc.fields)) from exc
