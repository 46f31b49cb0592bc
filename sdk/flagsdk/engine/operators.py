"""Condition operators: a dict of small predicate factories, compiled once per load.

A factory takes the condition's values (and `ignore_case`) and returns a predicate
over one scalar attribute value. `compile_condition` wraps it with the reading of
the attribute, list attributes (any element), `not_in` and `negate`.

A user attribute may be a string, a number, a boolean, None (as if missing) or a
list of strings; anything else raises `InvalidContext` when a condition reads it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from .model import Condition

try:  # Python 3.11+
    import re._constants as _sre_constants
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_constants  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

MAX_PATTERN_LENGTH = 256
MAX_MATCH_INPUT_LENGTH = 256
# The most ways a pattern's variable repeats may split an input between them: two
# unbounded repeats over the longest input (about 15 ms of backtracking, measured)
# with room for an optional part or two beside them (`^v?\d+\.\d+`).
BACKTRACKING_BUDGET = 4 * (MAX_MATCH_INPUT_LENGTH + 1) ** 2

Predicate = Callable[[Any], bool]
UserMatcher = Callable[[Mapping[str, Any], str], bool]


class ConditionError(ValueError):
    """A condition that cannot be evaluated: unknown operator or bad values."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidContext(ValueError):
    """A user attribute of a type no condition can read."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(values: tuple[Any, ...], ignore_case: bool) -> tuple[str, ...]:
    if not values or not all(isinstance(v, str) for v in values):
        raise ConditionError("values", "must be a non-empty list of strings")
    return tuple(v.lower() for v in values) if ignore_case else values


def _finite(value: Any) -> bool:
    """A number a double can hold: finite, and no int too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _numbers(values: tuple[Any, ...]) -> tuple[float, ...]:
    if not values or not all(_is_number(v) and _finite(v) for v in values):
        raise ConditionError("values", "must be a non-empty list of finite numbers")
    return values


def _op_in(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
    if not values:
        raise ConditionError("values", "must not be empty")
    strings = frozenset(
        (v.lower() if ignore_case else v) for v in values if isinstance(v, str)
    )
    numbers = frozenset(v for v in values if _is_number(v))
    booleans = frozenset(v for v in values if isinstance(v, bool))

    if ignore_case:
        def test(value: Any) -> bool:
            if type(value) is str:
                return value.lower() in strings
            if type(value) is bool:
                return value in booleans
            return value in numbers
    else:
        def test(value: Any) -> bool:
            if type(value) is str:
                return value in strings
            if type(value) is bool:
                return value in booleans
            return value in numbers
    return test


def _op_starts_with(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
    prefixes = _strings(values, ignore_case)
    if ignore_case:
        return lambda v: type(v) is str and v.lower().startswith(prefixes)
    return lambda v: type(v) is str and v.startswith(prefixes)


def _op_ends_with(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
    suffixes = _strings(values, ignore_case)
    if ignore_case:
        return lambda v: type(v) is str and v.lower().endswith(suffixes)
    return lambda v: type(v) is str and v.endswith(suffixes)


def _op_contains(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
    parts = _strings(values, ignore_case)

    def test(value: Any) -> bool:
        if type(value) is not str:
            return False
        if ignore_case:
            value = value.lower()
        return any(p in value for p in parts)
    return test


def check_pattern(pattern: str) -> None:
    """Refuse regexes that could stall a request; raises `ConditionError`.

    Python's `re` has no time limit, so the shapes of catastrophic backtracking
    are refused at load: back-references, a variable repeat inside a repeat,
    alternation inside an unbounded repeat, and variable repeats that together can
    split an input in more than `BACKTRACKING_BUDGET` ways — each repeat multiplies
    the ways by the lengths it may take (`*` and `+` as many as the longest input,
    `{0,16}` 17, `?` 2): two `*` at most, with at most a `?` or two beside them; one
    `*` with ranges worth up to 1,028 ways; a few narrow ranges alone. Inputs are bounded too
    (`MAX_MATCH_INPUT_LENGTH`).
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ConditionError("values", f"a pattern may have at most {MAX_PATTERN_LENGTH} characters")
    try:
        parsed = _sre_parse.parse(pattern)
    except re.error as exc:
        raise ConditionError("values", f"not a valid regular expression: {exc}") from None
    ways = 1
    repeats = {_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT}
    possessive = getattr(_sre_constants, "POSSESSIVE_REPEAT", None)
    if possessive is not None:
        repeats.add(possessive)
    refused = {_sre_constants.GROUPREF, _sre_constants.GROUPREF_EXISTS}

    def walk(items: Any, inside_repeat: bool, inside_unbounded: bool) -> None:
        nonlocal ways
        for op, arg in items:
            if op in refused:
                raise ConditionError("values", "back-references are not allowed in patterns")
            if op in repeats:
                low, high, body = arg
                is_unbounded = high == _sre_constants.MAXREPEAT
                variable = low != high
                if variable and inside_repeat:
                    raise ConditionError("values", "nested repeats are not allowed in patterns")
                if variable:
                    ways *= min(high, MAX_MATCH_INPUT_LENGTH) - min(low, MAX_MATCH_INPUT_LENGTH) + 1
                walk(body, inside_repeat or high > 1, inside_unbounded or is_unbounded)
            elif op is _sre_constants.BRANCH:
                if inside_unbounded:
                    raise ConditionError("values", "alternation inside an unbounded repeat is not allowed")
                for branch in arg[1]:
                    walk(branch, inside_repeat, inside_unbounded)
            elif op is _sre_constants.SUBPATTERN:
                walk(arg[-1], inside_repeat, inside_unbounded)
            elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
                walk(arg[1], inside_repeat, inside_unbounded)
            elif getattr(_sre_constants, "ATOMIC_GROUP", None) is op:
                walk(arg, inside_repeat, inside_unbounded)
    walk(parsed, False, False)
    if ways > BACKTRACKING_BUDGET:
        raise ConditionError("values", "the pattern's repeats could backtrack for too long: at most two "
                                       "unbounded repeats (such as *, + or {2,}), fewer with ranges beside them")


def _op_matches(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
    patterns = _strings(values, False)
    flags = re.IGNORECASE if ignore_case else 0
    compiled = []
    for pattern in patterns:
        check_pattern(pattern)
        compiled.append(re.compile(pattern, flags).search)
    searches = tuple(compiled)

    def test(value: Any) -> bool:
        if type(value) is not str or len(value) > MAX_MATCH_INPUT_LENGTH:
            return False
        return any(search(value) is not None for search in searches)
    return test


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[tuple[Any, ...], bool], Predicate]:
    def factory(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
        bounds = _numbers(values)

        def test(value: Any) -> bool:
            if type(value) is not int and type(value) is not float:
                return False
            return any(compare(value, b) for b in bounds)
        return test
    return factory


_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)


@functools.lru_cache(maxsize=4096)
def semver_key(text: str) -> tuple[Any, ...] | None:
    """A sort key with semantic-version precedence, or None if `text` is not one.

    Missing minor and patch count as 0 (`"2"` is `2.0.0`); build metadata is ignored.
    """
    if len(text) > 256:
        return None
    m = _SEMVER.fullmatch(text)
    if m is None:
        return None
    major, minor, patch, pre = m.groups()
    core = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:
        return (*core, (1,))
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, (0, *ids))


def _semver(compare: Callable[[Any, Any], bool]) -> Callable[[tuple[Any, ...], bool], Predicate]:
    def factory(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
        keys = []
        for v in _strings(values, False):
            key = semver_key(v)
            if key is None:
                raise ConditionError("values", f"{v!r} is not a semantic version")
            keys.append(key)
        bounds = tuple(keys)

        def test(value: Any) -> bool:
            if type(value) is not str:
                return False
            key = semver_key(value)
            return key is not None and any(compare(key, b) for b in bounds)
        return test
    return factory


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 string (naive means UTC), else None."""
    if _is_number(value):
        return float(value) if _finite(value) else None
    if type(value) is not str or len(value) > 64:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _temporal(compare: Callable[[float, float], bool]) -> Callable[[tuple[Any, ...], bool], Predicate]:
    def factory(values: tuple[Any, ...], ignore_case: bool) -> Predicate:
        if not values:
            raise ConditionError("values", "must not be empty")
        bounds = []
        for v in values:
            moment = parse_timestamp(v)
            if moment is None or isinstance(v, bool):
                raise ConditionError("values", f"{v!r} is not an ISO 8601 time or epoch seconds")
            bounds.append(moment)
        frozen = tuple(bounds)

        def test(value: Any) -> bool:
            moment = parse_timestamp(value)
            return moment is not None and any(compare(moment, b) for b in frozen)
        return test
    return factory


OPERATORS: dict[str, Callable[[tuple[Any, ...], bool], Predicate]] = {
    "in": _op_in,
    "not_in": _op_in,  # compiled as the negation of `in`
    "starts_with": _op_starts_with,
    "ends_with": _op_ends_with,
    "contains": _op_contains,
    "matches": _op_matches,
    "lt": _numeric(lambda a, b: a < b),
    "lte": _numeric(lambda a, b: a <= b),
    "gt": _numeric(lambda a, b: a > b),
    "gte": _numeric(lambda a, b: a >= b),
    "semver_eq": _semver(lambda a, b: a == b),
    "semver_lt": _semver(lambda a, b: a < b),
    "semver_lte": _semver(lambda a, b: a <= b),
    "semver_gt": _semver(lambda a, b: a > b),
    "semver_gte": _semver(lambda a, b: a >= b),
    "before": _temporal(lambda a, b: a < b),
    "after": _temporal(lambda a, b: a > b),
}

_SCALARS = (str, int, float, bool)


def compile_condition(condition: Condition) -> UserMatcher:
    """A function `(user, key) -> bool` for `condition`; raises `ConditionError` when
    the operator is unknown or the values do not suit it.

    A missing attribute (or None) satisfies no operator except `not_in`; `negate`
    is the exact logical negation of the result. A list attribute matches when any
    of its elements does (`not_in`: when none does). Raises `InvalidContext` when
    the attribute has a type no condition can read.
    """
    factory = OPERATORS.get(condition.op)
    if factory is None:
        raise ConditionError("op", f"unknown operator {condition.op!r}")
    test = factory(condition.values, condition.ignore_case)
    attribute = condition.attribute
    flip = (condition.op == "not_in") != condition.negate

    def other(value: Any) -> bool:
        """Everything but a plain string: None, numbers, booleans, lists."""
        if value is None:
            return flip
        if type(value) in _SCALARS:
            return test(value) != flip
        if type(value) is list or type(value) is tuple:
            if not all(type(v) is str for v in value):
                raise InvalidContext(f"attribute {attribute!r} must hold strings only")
            return any(test(v) for v in value) != flip
        if isinstance(value, _SCALARS):  # subclasses such as enum.StrEnum
            return test(_plain(value)) != flip
        raise InvalidContext(f"attribute {attribute!r} has unsupported type {type(value).__name__}")

    string_test = None if flip else _string_fast_path(condition)
    if string_test is not None:
        # The common case inlined: a string attribute, no negation, one call layer less.
        return string_test(attribute, other)

    def matches(user: Mapping[str, Any], key: str) -> bool:
        value = user.get(attribute)
        if type(value) is str:
            return test(value) != flip
        return other(value)
    return matches


def _string_fast_path(condition: Condition) -> Callable[[str, Predicate], UserMatcher] | None:
    """Closures with the operator written inline for the most used string operators."""
    values = condition.values
    if not values or not all(isinstance(v, str) for v in values):
        return None
    op, ignore_case = condition.op, condition.ignore_case
    if op == "in":
        members = frozenset(v.lower() for v in values) if ignore_case else frozenset(values)
        if ignore_case:
            def build_in_ci(attribute: str, other: Predicate) -> UserMatcher:
                def matches(user: Mapping[str, Any], key: str) -> bool:
                    value = user.get(attribute)
                    return value.lower() in members if type(value) is str else other(value)
                return matches
            return build_in_ci

        def build_in(attribute: str, other: Predicate) -> UserMatcher:
            def matches(user: Mapping[str, Any], key: str) -> bool:
                value = user.get(attribute)
                return value in members if type(value) is str else other(value)
            return matches
        return build_in
    if op in ("starts_with", "ends_with"):
        affixes = tuple(v.lower() for v in values) if ignore_case else tuple(values)
        ends = op == "ends_with"
        if ignore_case and ends:
            def build_ends_ci(attribute: str, other: Predicate) -> UserMatcher:
                def matches(user: Mapping[str, Any], key: str) -> bool:
                    value = user.get(attribute)
                    return value.lower().endswith(affixes) if type(value) is str else other(value)
                return matches
            return build_ends_ci
        if ends:
            def build_ends(attribute: str, other: Predicate) -> UserMatcher:
                def matches(user: Mapping[str, Any], key: str) -> bool:
                    value = user.get(attribute)
                    return value.endswith(affixes) if type(value) is str else other(value)
                return matches
            return build_ends
        if ignore_case:
            def build_starts_ci(attribute: str, other: Predicate) -> UserMatcher:
                def matches(user: Mapping[str, Any], key: str) -> bool:
                    value = user.get(attribute)
                    return value.lower().startswith(affixes) if type(value) is str else other(value)
                return matches
            return build_starts_ci

        def build_starts(attribute: str, other: Predicate) -> UserMatcher:
            def matches(user: Mapping[str, Any], key: str) -> bool:
                value = user.get(attribute)
                return value.startswith(affixes) if type(value) is str else other(value)
            return matches
        return build_starts
    return None


def _plain(value: Any) -> Any:
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def check_condition(condition: Condition) -> None:
    """Raise `ConditionError` if `condition` would not compile (the server's check)."""
    compile_condition(condition)
