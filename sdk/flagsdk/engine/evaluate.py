"""Evaluation: a config compiled once into per-flag evaluators; `evaluate` never raises.

Every possible result of a flag (disabled, each rule's variant, each split variant,
the default) is built once when the flag is compiled, so an evaluation allocates
nothing: it walks closures and returns one of those shared, immutable objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import mmh3

from .bucketing import below_line, bucket_of_hash, threshold
from .model import Config, Flag, Rollout, Rule, Segment, is_text
from .operators import ConditionError, InvalidContext, compile_condition

log = logging.getLogger(__name__)

# Reasons (OpenFeature's names).
DEFAULT = "DEFAULT"
DISABLED = "DISABLED"
TARGETING_MATCH = "TARGETING_MATCH"
SPLIT = "SPLIT"
ERROR = "ERROR"
STALE = "STALE"

# Error codes (OpenFeature's names).
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
PARSE_ERROR = "PARSE_ERROR"
TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
INVALID_CONTEXT = "INVALID_CONTEXT"
PROVIDER_NOT_READY = "PROVIDER_NOT_READY"
GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The answer for one flag and one user, with why."""

    flag_key: str
    variant: str | None
    enabled: bool
    reason: str
    error_code: str | None = None
    rule_id: str | None = None
    randomized: bool = False
    flag_version: int | None = None
    error_message: str | None = None


class EvaluationError(Exception):
    """Raised inside evaluators; turned into an `ERROR` result by `Snapshot.evaluate`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# A matcher takes the user and its (validated) key.
Matcher = Callable[[Mapping[str, Any], str], bool]
Outcome = Callable[[Mapping[str, Any], str], Evaluation]
FlagEvaluator = Callable[[Any], Evaluation]


def _broken(code: str, message: str) -> Callable[..., Any]:
    def fail(*_: Any) -> Any:
        raise EvaluationError(code, message)
    return fail


def _condition_matchers(owner: str, conditions: tuple[Any, ...]) -> tuple[Matcher, ...]:
    out = []
    for i, condition in enumerate(conditions):
        try:
            out.append(compile_condition(condition))
        except ConditionError as exc:
            out.append(_broken(PARSE_ERROR, f"{owner}.conditions[{i}].{exc.field}: {exc.message}"))
    return tuple(out)


def _all_of(matchers: tuple[Matcher, ...]) -> Matcher | None:
    """One matcher for "all of these", None for none; no extra call layer for one."""
    if not matchers:
        return None
    if len(matchers) == 1:
        return matchers[0]
    if len(matchers) == 2:
        first, second = matchers
        return lambda user, key: first(user, key) and second(user, key)

    def every(user: Mapping[str, Any], key: str) -> bool:
        for matcher in matchers:
            if not matcher(user, key):
                return False
        return True
    return every


def _bucket_value(user: Mapping[str, Any], bucket_by: str) -> str | None:
    """The user's `bucket_by` attribute as text; None (never bucketed) when missing,
    not a string or an int, or not encodable text."""
    value = user.get(bucket_by)
    if type(value) is str:
        return value if value and is_text(value) else None
    if type(value) is int and -(10**18) < value < 10**18:
        return str(value)
    return None


class CompiledSegment:
    """A segment ready for rules: its listed keys apart, so a rule can test them inline.

    `only_keys` is set when the segment is nothing but a key list; `matcher` is the
    `(user, key) -> bool` of the whole segment.
    """

    __slots__ = ("matcher", "only_keys", "conditions_only")

    def __init__(self, segment: Segment) -> None:
        included = frozenset(segment.included)
        excluded = frozenset(segment.excluded)
        conditions = _all_of(_condition_matchers(f"segments.{segment.key}", segment.conditions))
        has_rules = conditions is not None or segment.percentage is not None
        self.only_keys = included if not has_rules else None
        # A segment of conditions alone is its conditions' matcher: no layer of its own.
        self.conditions_only = (conditions if not included and not excluded and segment.percentage is None
                                else None)
        prefix = f"{segment.key}:"
        below = below_line(threshold(segment.percentage)) if segment.percentage is not None else None
        bucket_by = segment.bucket_by

        def contains(user: Mapping[str, Any], key: str) -> bool:
            if key in included:
                return True
            if not has_rules or key in excluded:
                return False
            if conditions is not None and not conditions(user, key):
                return False
            if below is None:
                return True
            value = key if bucket_by == "key" else _bucket_value(user, bucket_by)
            return value is not None and below(mmh3.hash(prefix + value, 0, False))
        self.matcher: Matcher = contains


def compile_segment(segment: Segment) -> Matcher:
    """`(user, key) -> bool`: listed keys first, then conditions and percentage."""
    return CompiledSegment(segment).matcher


class _FlagCompiler:
    """Builds the evaluator of one flag and all of its possible results."""

    def __init__(self, flag: Flag, segments: Mapping[str, CompiledSegment]) -> None:
        self.flag = flag
        self.segments = segments

    def result(self, variant: str, reason: str, rule_id: str | None = None) -> Evaluation:
        flag = self.flag
        return Evaluation(
            flag_key=flag.key,
            variant=variant,
            enabled=variant != flag.variants[0],
            reason=reason,
            rule_id=rule_id,
            randomized=reason == SPLIT,
            flag_version=flag.version,
        )

    def split(self, rollout: Rollout, rule_id: str | None) -> Outcome:
        flag = self.flag
        prefix = f"{flag.salt or flag.key}:"
        bucket_by = flag.bucket_by
        no_bucket = self.result(flag.variants[0], DEFAULT)
        if rollout.weights is None:
            assert rollout.percentage is not None
            below = below_line(threshold(rollout.percentage))
            on = self.result(flag.variants[-1], SPLIT, rule_id)
            off = self.result(flag.variants[0], SPLIT, rule_id)
            if bucket_by == "key":
                return lambda user, key: on if below(mmh3.hash(prefix + key, 0, False)) else off

            def by_percentage(user: Mapping[str, Any], key: str) -> Evaluation:
                value = _bucket_value(user, bucket_by)
                if value is None:
                    return no_bucket
                return on if below(mmh3.hash(prefix + value, 0, False)) else off
            return by_percentage

        ranges = []
        upper = 0
        for variant, weight in rollout.weights:
            if weight:
                upper += weight
                ranges.append((upper, self.result(variant, SPLIT, rule_id)))
        bands = tuple(ranges)

        def by_weights(user: Mapping[str, Any], key: str) -> Evaluation:
            value = key if bucket_by == "key" else _bucket_value(user, bucket_by)
            if value is None:
                return no_bucket
            b = bucket_of_hash(mmh3.hash(prefix + value, 0, False))
            for upper, result in bands:
                if b < upper:
                    return result
            return bands[-1][1]
        return by_weights

    def rule_matcher(self, rule: Rule) -> Matcher:
        missing = [s for s in rule.segments if s not in self.segments]
        if missing:
            return _broken(PARSE_ERROR, f"rule {rule.id!r} names unknown segment {missing[0]!r}")
        compiled = [self.segments[s] for s in rule.segments]
        keys = frozenset().union(*(c.only_keys for c in compiled if c.only_keys is not None))
        others = tuple(c.conditions_only or c.matcher for c in compiled if c.only_keys is None)
        conditions = _all_of(_condition_matchers(f"rules.{rule.id}", rule.conditions))
        if not compiled:
            return conditions or (lambda user, key: True)
        # "In any of the segments": listed keys (one set lookup) or any other segment.
        if not others:
            in_segments: Matcher = lambda user, key: key in keys  # noqa: E731
        elif len(others) == 1:
            other = others[0]
            in_segments = (lambda user, key: key in keys or other(user, key)) if keys else other
        else:
            def in_segments(user: Mapping[str, Any], key: str) -> bool:
                if key in keys:
                    return True
                for segment in others:
                    if segment(user, key):
                        return True
                return False
        if conditions is None:
            return in_segments
        return lambda user, key: in_segments(user, key) and conditions(user, key)

    def build(self) -> FlagEvaluator:
        flag = self.flag
        disabled = self.result(flag.variants[0], DISABLED)
        rules = tuple(
            (
                self.rule_matcher(rule),
                self.result(rule.serve, TARGETING_MATCH, rule.id) if rule.serve is not None else None,
                self.split(rule.rollout, rule.id) if rule.rollout is not None else None,
            )
            for rule in flag.rules
        )
        fallthrough = self.split(flag.rollout, None)
        enabled = flag.enabled

        def evaluate_flag(user: Any) -> Evaluation:
            if not enabled:
                return disabled
            if type(user) is not dict:
                user = as_user_mapping(user)
            key = user.get("key")
            if type(key) is not str or not key or not (key.isascii() or is_text(key)):
                if key is None or key == "":
                    raise EvaluationError(TARGETING_KEY_MISSING, "user has no 'key'")
                raise EvaluationError(INVALID_CONTEXT, "user 'key' must be a string of text")
            for matches, served, split in rules:
                if matches(user, key):
                    return served if served is not None else split(user, key)  # type: ignore[misc]
            return fallthrough(user, key)
        return evaluate_flag


def as_user_mapping(user: Any) -> Mapping[str, Any]:
    """A user given as a Mapping or an object with `to_dict()` (the SDK's `User`);
    raises `EvaluationError(INVALID_CONTEXT)` for anything else."""
    if isinstance(user, Mapping):
        return user
    to_dict = getattr(user, "to_dict", None)
    if to_dict is not None:
        mapping = to_dict()
        if isinstance(mapping, Mapping):
            return mapping
    raise EvaluationError(INVALID_CONTEXT, "user must be a dict with a 'key'")


def compile_flag(flag: Flag, segments: Mapping[str, Segment | CompiledSegment]) -> FlagEvaluator:
    """An evaluator `user -> Evaluation` for `flag`; it raises `EvaluationError`
    (or `InvalidContext`) for a bad user or a broken part of the flag, and nothing else."""
    compiled = {k: s if isinstance(s, CompiledSegment) else CompiledSegment(s) for k, s in segments.items()}
    return _FlagCompiler(flag, compiled).build()


class Snapshot:
    """An immutable, compiled config: what an SDK swaps in on every update."""

    __slots__ = ("config", "evaluators")

    def __init__(self, config: Config) -> None:
        segments = {key: CompiledSegment(s) for key, s in config.segments.items()}
        evaluators: dict[str, FlagEvaluator] = {
            key: _FlagCompiler(flag, segments).build() for key, flag in config.flags.items()
        }
        for key, problem in config.invalid_flags.items():
            evaluators[key] = _broken(PARSE_ERROR, f"flag {key!r} is malformed: {problem}")
        self.config = config
        self.evaluators: dict[str, FlagEvaluator] = evaluators  # read-only by convention: a dict is fastest

    @classmethod
    def from_dict(cls, document: Any) -> Snapshot:
        """Parse and compile a config document; raises `ConfigError` if it is not one."""
        return cls(Config.from_dict(document))

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(Config(environment="", version=0, segments=MappingProxyType({}), flags=MappingProxyType({})))

    def evaluate(self, flag_key: str, user: Any, default: str | None = None) -> Evaluation:
        """Evaluate `flag_key` for `user`. Never raises: failures give `default`
        with reason `ERROR` and an error code."""
        evaluator = self.evaluators.get(flag_key) if type(flag_key) is str else None
        if evaluator is None:
            return error_result(flag_key, default, FLAG_NOT_FOUND, f"no flag {flag_key!r}")
        try:
            return evaluator(user)
        except EvaluationError as exc:
            return error_result(flag_key, default, exc.code, exc.message, self._version(flag_key))
        except InvalidContext as exc:
            return error_result(flag_key, default, INVALID_CONTEXT, str(exc), self._version(flag_key))
        except Exception as exc:  # a bug must not reach the application
            log.exception("flagsdk: unexpected error evaluating %r", flag_key)
            return error_result(flag_key, default, GENERAL, repr(exc), self._version(flag_key))

    def _version(self, flag_key: str) -> int | None:
        flag = self.config.flags.get(flag_key)
        return flag.version if flag is not None else None


def error_result(
    flag_key: str, default: str | None, code: str, message: str, flag_version: int | None = None
) -> Evaluation:
    """The result of a failed evaluation: the caller's default, reason `ERROR`."""
    return Evaluation(
        flag_key=flag_key,
        variant=default,
        enabled=False,
        reason=ERROR,
        error_code=code,
        flag_version=flag_version,
        error_message=message,
    )
