"""The one definition of the wire format: frozen dataclasses with from_dict/to_dict.

`from_dict` checks structure and raises `ModelError` naming the offending field.
It is deliberately lenient about *meaning* (an unknown operator, a regex that does
not compile, a rule naming a segment the document lacks): such parts are kept, and
evaluation reports them as errors when it reaches them, so that a newer server can
add operators without breaking older SDKs. The server is strict about meaning; it
uses `operators.check_condition` for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .bucketing import BUCKETS, SUPPORTED_HASH_VERSIONS

DEFAULT_VARIANTS = ("off", "on")


class ModelError(ValueError):
    """A document does not have the shape of the wire format.

    `field` is a path such as `rules[1].rollout`; `message` says what is wrong.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> ModelError:
        """The same error, with its field path below `prefix`."""
        if not self.field:
            return ModelError(prefix, self.message)
        joiner = "" if self.field.startswith("[") else "."
        return ModelError(f"{prefix}{joiner}{self.field}", self.message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_text(value: str) -> bool:
    """Whether `value` is text UTF-8 can encode (JSON can smuggle in lone surrogates,
    which the hash function must never see)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_str(data: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str) or not value or not is_text(value):
        raise ModelError(name, "must be a non-empty string")
    return value


def _str_list(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(name, "must be a list of strings")
    return tuple(value)


def _mapping(data: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ModelError(name, "must be an object")
    return data


def check_percentage(value: Any, name: str = "percentage") -> float:
    """A percentage from 0 to 100 in steps of 0.01; raises `ModelError`."""
    if not _is_number(value) or not 0 <= value <= 100:  # NaN fails the range; a huge int never overflows
        raise ModelError(name, "must be a number from 0 to 100")
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ModelError(name, "must be in steps of 0.01")
    return float(value) if isinstance(value, float) else value


@dataclass(frozen=True, slots=True)
class Condition:
    """`attribute op values`, optionally case-insensitive and negated."""

    attribute: str
    op: str
    values: tuple[Any, ...]
    ignore_case: bool = False
    negate: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> Condition:
        data = _mapping(data, "")
        values = data.get("values")
        if not isinstance(values, list) or not all(
            isinstance(v, (str, int, float, bool)) for v in values
        ):
            raise ModelError("values", "must be a list of strings, numbers or booleans")
        for name in ("ignore_case", "negate"):
            if not isinstance(data.get(name, False), bool):
                raise ModelError(name, "must be a boolean")
        return cls(
            attribute=_require_str(data, "attribute"),
            op=_require_str(data, "op"),
            values=tuple(values),
            ignore_case=data.get("ignore_case", False),
            negate=data.get("negate", False),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attribute": self.attribute, "op": self.op, "values": list(self.values)}
        if self.ignore_case:
            out["ignore_case"] = True
        if self.negate:
            out["negate"] = True
        return out


def _conditions(data: Mapping[str, Any]) -> tuple[Condition, ...]:
    raw = data.get("conditions", [])
    if not isinstance(raw, list):
        raise ModelError("conditions", "must be a list")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Condition.from_dict(item))
        except ModelError as exc:
            raise exc.within(f"conditions[{i}]") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Rollout:
    """Either a percentage (users who get the last variant) or variant weights.

    Weights are basis points in declared order, summing to 10,000.
    """

    percentage: float | None = None
    weights: tuple[tuple[str, int], ...] | None = None

    @classmethod
    def from_wire(cls, value: Any, variants: tuple[str, ...]) -> Rollout:
        if isinstance(value, Mapping):
            weights = []
            for variant, weight in value.items():
                if variant not in variants:
                    raise ModelError(f"{variant}", "is not one of the flag's variants")
                if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                    raise ModelError(f"{variant}", "must be a whole number of basis points, 0 or more")
                weights.append((variant, weight))
            if sum(w for _, w in weights) != BUCKETS:
                raise ModelError("", f"weights must sum to {BUCKETS}")
            return cls(weights=tuple(weights))
        return cls(percentage=check_percentage(value, ""))

    def to_wire(self) -> float | dict[str, int]:
        if self.weights is not None:
            return dict(self.weights)
        assert self.percentage is not None
        return self.percentage


@dataclass(frozen=True, slots=True)
class Rule:
    """Users in any of `segments` who meet all `conditions` get `serve` or a `rollout`."""

    id: str
    segments: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    serve: str | None = None
    rollout: Rollout | None = None

    @classmethod
    def from_dict(cls, data: Any, variants: tuple[str, ...]) -> Rule:
        data = _mapping(data, "")
        serve = data.get("serve")
        rollout_wire = data.get("rollout")
        if (serve is None) == (rollout_wire is None):
            raise ModelError("serve", "a rule needs exactly one of serve and rollout")
        rollout = None
        if serve is not None:
            if not isinstance(serve, str) or serve not in variants:
                raise ModelError("serve", "must be one of the flag's variants")
        else:
            try:
                rollout = Rollout.from_wire(rollout_wire, variants)
            except ModelError as exc:
                raise exc.within("rollout") from None
        return cls(
            id=_require_str(data, "id"),
            segments=_str_list(data, "segments"),
            conditions=_conditions(data),
            serve=serve,
            rollout=rollout,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.segments:
            out["segments"] = list(self.segments)
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        if self.serve is not None:
            out["serve"] = self.serve
        else:
            assert self.rollout is not None
            out["rollout"] = self.rollout.to_wire()
        return out


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag as one environment sees it."""

    key: str
    enabled: bool = False
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    salt: str = ""
    bucket_by: str = "key"
    rules: tuple[Rule, ...] = ()
    rollout: Rollout = field(default_factory=lambda: Rollout(percentage=0))
    hash_version: int = 1
    version: int = 0

    @classmethod
    def from_dict(cls, key: str, data: Any) -> Flag:
        data = _mapping(data, "")
        enabled = data.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ModelError("enabled", "must be a boolean")
        variants = data.get("variants", list(DEFAULT_VARIANTS))
        if (
            not isinstance(variants, list)
            or len(variants) < 2
            or not all(isinstance(v, str) and v for v in variants)
            or len(set(variants)) != len(variants)
        ):
            raise ModelError("variants", "must be a list of at least two distinct non-empty strings")
        variants_t = tuple(variants)
        hash_version = data.get("hash_version", 1)
        if type(hash_version) is not int or hash_version not in SUPPORTED_HASH_VERSIONS:
            raise ModelError("hash_version", f"must be one of {sorted(SUPPORTED_HASH_VERSIONS)}")
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ModelError("version", "must be a whole number, 0 or more")
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ModelError("rules", "must be a list")
        rules = []
        for i, item in enumerate(raw_rules):
            try:
                rules.append(Rule.from_dict(item, variants_t))
            except ModelError as exc:
                raise exc.within(f"rules[{i}]") from None
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            raise ModelError("rules", "rule ids must be unique within a flag")
        try:
            rollout = Rollout.from_wire(data.get("rollout", 0), variants_t)
        except ModelError as exc:
            raise exc.within("rollout") from None
        return cls(
            key=key,
            enabled=enabled,
            variants=variants_t,
            salt=_require_str(data, "salt", key),
            bucket_by=_require_str(data, "bucket_by", "key"),
            rules=tuple(rules),
            rollout=rollout,
            hash_version=hash_version,
            version=version,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flag object of the config document (without its key)."""
        return {
            "enabled": self.enabled,
            "salt": self.salt or self.key,
            "bucket_by": self.bucket_by,
            "variants": list(self.variants),
            "rules": [r.to_dict() for r in self.rules],
            "rollout": self.rollout.to_wire(),
            "hash_version": self.hash_version,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """A named set of users: listed keys, or conditions and an optional percentage.

    A segment with neither conditions nor a percentage holds only its `included`
    users (otherwise a pure list segment would match everyone).
    """

    key: str
    included: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    percentage: float | None = None
    bucket_by: str = "key"
    version: int = 0

    @classmethod
    def from_dict(cls, key: str, data: Any) -> Segment:
        data = _mapping(data, "")
        percentage = data.get("percentage")
        if percentage is not None:
            percentage = check_percentage(percentage)
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ModelError("version", "must be a whole number, 0 or more")
        return cls(
            key=key,
            included=_str_list(data, "included"),
            excluded=_str_list(data, "excluded"),
            conditions=_conditions(data),
            percentage=percentage,
            bucket_by=_require_str(data, "bucket_by", "key"),
            version=version,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.included:
            out["included"] = list(self.included)
        if self.excluded:
            out["excluded"] = list(self.excluded)
        if self.conditions:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        if self.percentage is not None:
            out["percentage"] = self.percentage
        if self.bucket_by != "key":
            out["bucket_by"] = self.bucket_by
        return out


class ConfigError(ValueError):
    """A document that is not a config document at all; it is refused whole."""


@dataclass(frozen=True, slots=True)
class Config:
    """A parsed config document. Malformed flags and segments are left out and
    listed in `invalid_flags` / `invalid_segments` with the reason."""

    environment: str
    version: int
    segments: Mapping[str, Segment]
    flags: Mapping[str, Flag]
    invalid_flags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    invalid_segments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_dict(cls, data: Any) -> Config:
        """Parse a document; raises `ConfigError` when it is not a config at all."""
        if not isinstance(data, Mapping):
            raise ConfigError("a config document must be a JSON object")
        flags_raw = data.get("flags")
        segments_raw = data.get("segments", {})
        if not isinstance(flags_raw, Mapping):
            raise ConfigError("a config document needs a 'flags' object")
        if not isinstance(segments_raw, Mapping):
            raise ConfigError("'segments' must be an object")
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError("'version' must be a whole number")
        environment = data.get("environment", "")
        if not isinstance(environment, str):
            raise ConfigError("'environment' must be a string")
        segments: dict[str, Segment] = {}
        invalid_segments: dict[str, str] = {}
        for key, raw in segments_raw.items():
            try:
                if not isinstance(key, str) or not key or not is_text(key):
                    raise ModelError("key", "must be a non-empty string")
                segments[key] = Segment.from_dict(key, raw)
            except Exception as exc:  # one bad segment must not cost the others
                invalid_segments[str(key)] = str(exc)
        flags: dict[str, Flag] = {}
        invalid_flags: dict[str, str] = {}
        for key, raw in flags_raw.items():
            try:
                if not isinstance(key, str) or not key or not is_text(key):
                    raise ModelError("key", "must be a non-empty string")
                flags[key] = Flag.from_dict(key, raw)
            except Exception as exc:  # one bad flag must not cost the others
                invalid_flags[str(key)] = str(exc)
        return cls(
            environment=environment,
            version=version,
            segments=MappingProxyType(segments),
            flags=MappingProxyType(flags),
            invalid_flags=MappingProxyType(invalid_flags),
            invalid_segments=MappingProxyType(invalid_segments),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "version": self.version,
            "segments": {k: s.to_dict() for k, s in self.segments.items()},
            "flags": {k: f.to_dict() for k, f in self.flags.items()},
        }
