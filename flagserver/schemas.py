"""marshmallow schemas: API JSON <-> the records storage keeps.

Schemas check types and shapes and name the bad field; `check_flag` and
`check_segment` then run the engine's own parser and operator compiler over the
result, so the server accepts exactly what SDKs can evaluate.
"""

from __future__ import annotations

import math
from typing import Any

from flagsdk.engine import Condition, Flag, ModelError, Rollout, Rule, Segment, check_condition
from flagsdk.engine.model import DEFAULT_VARIANTS
from flagsdk.engine.operators import OPERATORS, ConditionError
from marshmallow import Schema, ValidationError, fields, validate

from .errors import field_error, validation_error
from .storage.documents import flag_wire, segment_wire

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
KEY_RULE = validate.Regexp(
    KEY_PATTERN, error="must be 1-100 letters, digits, '.', '_' or '-', not starting with a symbol")
Key = lambda **kw: fields.String(validate=KEY_RULE, **kw)  # noqa: E731


class Boolean(fields.Field):
    """JSON true or false; never "false", 0 or "yes" (marshmallow's Boolean takes those)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise ValidationError("must be true or false")
        return value


class Number(fields.Field):
    """A JSON number (never a string or a boolean) that a double can hold."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float | int:
        if type(value) not in (int, float):
            raise ValidationError("must be a number")
        try:
            if not math.isfinite(value):
                raise ValidationError("must be a finite number")
        except OverflowError:
            raise ValidationError("must be a number a double can hold") from None
        return value  # type: ignore[no-any-return]


class ConditionSchema(Schema):
    attribute = fields.String(required=True, validate=validate.Length(min=1, max=200))
    op = fields.String(required=True, validate=validate.OneOf(sorted(OPERATORS)))
    values = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=10_000))
    ignore_case = Boolean(load_default=False)
    negate = Boolean(load_default=False)


class RolloutField(fields.Field):
    """A percentage (0-100, steps of 0.01) or a map of variant -> basis points."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
            raise ValidationError("must be a percentage or an object of variant weights")
        return value


class RuleSchema(Schema):
    id = Key(required=True)
    segments = fields.List(Key(), load_default=list)
    conditions = fields.List(fields.Nested(ConditionSchema), load_default=list)
    serve = fields.String()
    rollout = RolloutField()


class FlagSchema(Schema):
    """A flag as the admin API shows it in one environment."""

    key = Key(required=True)
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    tags = fields.List(fields.String(validate=validate.Length(min=1, max=100)), load_default=list)
    owner = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    variants = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                           load_default=lambda: list(DEFAULT_VARIANTS), validate=validate.Length(min=2, max=100))
    salt = fields.String(validate=validate.Length(min=1, max=200))
    bucket_by = fields.String(load_default="key", validate=validate.Length(min=1, max=200))
    hash_version = fields.Integer(load_default=1, strict=True)
    enabled = Boolean(load_default=False)
    rules = fields.List(fields.Nested(RuleSchema), load_default=list, validate=validate.Length(max=500))
    rollout = RolloutField(load_default=0)
    version = fields.Integer(dump_only=True)
    updated_at = fields.Float(dump_only=True)


class FlagPatchSchema(FlagSchema):
    """Any subset of a flag's writable fields, e.g. `{"rollout": 25}` or `{"enabled": false}`."""

    class Meta:
        exclude = ("key",)


class SegmentSchema(Schema):
    key = Key(required=True)
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    included = fields.List(fields.String(validate=validate.Length(min=1, max=500)), load_default=list)
    excluded = fields.List(fields.String(validate=validate.Length(min=1, max=500)), load_default=list)
    conditions = fields.List(fields.Nested(ConditionSchema), load_default=list)
    percentage = Number(load_default=None, allow_none=True, validate=validate.Range(0, 100))
    bucket_by = fields.String(load_default="key", validate=validate.Length(min=1, max=200))
    version = fields.Integer(dump_only=True)
    updated_at = fields.Float(dump_only=True)


class SegmentPatchSchema(SegmentSchema):
    class Meta:
        exclude = ("key",)


class EnvironmentSchema(Schema):
    key = Key(required=True)
    name = fields.String(validate=validate.Length(min=1, max=200))
    created_at = fields.Float(dump_only=True)


class TokenSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(required=True, validate=validate.OneOf(["admin", "sdk"]))
    environment = Key(load_default=None, allow_none=True)
    created_at = fields.Float(dump_only=True)
    token = fields.String(dump_only=True, metadata={"description": "the secret, shown once"})


class EvaluateSchema(Schema):
    flag = Key(required=True)
    user = fields.Raw(required=True)
    default = fields.String(load_default=None, allow_none=True)


def _check_conditions(conditions: list[dict[str, Any]], prefix: str, errors: dict[str, list[str]]) -> None:
    for j, raw in enumerate(conditions):
        try:
            check_condition(Condition.from_dict(raw))
        except (ModelError, ConditionError) as exc:
            errors.setdefault(f"{prefix}conditions[{j}].{exc.field}".rstrip("."), []).append(exc.message)


def check_flag(record: dict[str, Any]) -> dict[str, Any]:
    """Validate a loaded flag with the engine; raise one 422 `APIError` naming every bad field."""
    record.setdefault("salt", record["key"])
    wire = flag_wire({**record, "version": 1})
    try:  # variants, salt, bucket_by, hash_version: the rest depends on them
        Flag.from_dict(record["key"], {**wire, "rules": [], "rollout": 0})
    except ModelError as exc:
        raise field_error(exc.field, exc.message) from None
    variants = tuple(record["variants"])
    errors: dict[str, list[str]] = {}
    for i, rule in enumerate(record["rules"]):
        try:
            Rule.from_dict(rule, variants)
        except ModelError as exc:
            errors.setdefault(exc.within(f"rules[{i}]").field, []).append(exc.message)
        _check_conditions(rule.get("conditions", []), f"rules[{i}].", errors)
    try:
        Rollout.from_wire(record["rollout"], variants)
    except ModelError as exc:
        errors.setdefault(exc.within("rollout").field, []).append(exc.message)
    ids = [rule["id"] for rule in record["rules"]]
    if len(set(ids)) != len(ids):
        errors.setdefault("rules", []).append("rule ids must be unique within a flag")
    if errors:
        raise validation_error(errors)
    return record


def check_segment(record: dict[str, Any]) -> dict[str, Any]:
    """Validate a loaded segment with the engine; raise a 422 `APIError` naming the field."""
    errors: dict[str, list[str]] = {}
    try:
        Segment.from_dict(record["key"], segment_wire(record))
    except ModelError as exc:
        errors.setdefault(exc.field, []).append(exc.message)
    _check_conditions(record["conditions"], "", errors)
    if errors:
        raise validation_error(errors)
    return record
