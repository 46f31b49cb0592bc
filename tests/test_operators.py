"""Unit tests of flagsdk.engine.operators: semver ordering, timestamps, the regex
guard, and the server's `check_condition`. The operators' behaviour on users is in
tests/cases/operators.json; this file covers what the cases cannot express."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap

import pytest
from flagsdk import Snapshot
from flagsdk.engine import Condition, ConditionError, check_condition, check_pattern
from flagsdk.engine.operators import MAX_MATCH_INPUT_LENGTH, OPERATORS, parse_timestamp, semver_key

# --- the operator table --------------------------------------------------------------


def test_the_operators_are_exactly_the_documented_ones() -> None:
    assert set(OPERATORS) == {
        "in", "not_in", "starts_with", "ends_with", "contains", "matches",
        "lt", "lte", "gt", "gte",
        "semver_eq", "semver_lt", "semver_lte", "semver_gt", "semver_gte",
        "before", "after",
    }


# --- semver ----------------------------------------------------------------------------

# semver.org, item 11, extended with core ordering that a string sort gets wrong.
PRECEDENCE = [
    "0.9.9", "1.0.0-1", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
    "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0", "10.0.0",
]


def test_semver_key_orders_by_semantic_version_precedence() -> None:
    keys = [semver_key(v) for v in PRECEDENCE]
    assert None not in keys
    for lower, higher, a, b in zip(keys, keys[1:], PRECEDENCE, PRECEDENCE[1:], strict=False):
        assert lower < higher, f"{a} < {b}"
    assert sorted(PRECEDENCE, key=semver_key) == PRECEDENCE


@pytest.mark.parametrize(
    ("text", "same_as"),
    [("v1.2.3", "1.2.3"), ("1.2", "1.2.0"), ("2", "2.0.0"), ("1.2.3+build.7", "1.2.3"),
     ("1.2.3-rc.1+exp.sha.5114f85", "1.2.3-rc.1")],
)
def test_semver_key_equivalences(text: str, same_as: str) -> None:
    assert semver_key(text) == semver_key(same_as) is not None


@pytest.mark.parametrize(
    "text",
    ["", "latest", "1.2.3.4", "01.2.3", "1.02.3", "1.2.x", "1.2.3-", "1.2.3-rc..1", "1.2.3+", " 1.2.3", "1.2.3 ",
     "v", "1." + "0" * 300 + ".0"],
)
def test_semver_key_refuses_what_is_not_a_version(text: str) -> None:
    assert semver_key(text) is None


@pytest.mark.parametrize(
    "text",
    ["1.2.3\n", "1\u0661.2.3", "1.2.1\uff13"],
    ids=["trailing-newline", "arabic-indic-digit", "fullwidth-digit"],
)
def test_semver_key_is_ascii_and_whole_string_only(text: str) -> None:
    """Given a newline after the version or digits from other scripts, then it is not
    a version. SemVer digits are ASCII; today "1\u0661.2.3" reads as 11.2.3 and
    "1.2.3\\n" as 1.2.3 (`\\d` is Unicode-aware and `$` matches before a final
    newline in Python), which SDKs in other languages would not do."""
    assert semver_key(text) is None


# --- timestamps ------------------------------------------------------------------------

NEW_YEAR_2024 = 1704067200.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2024-01-01T00:00:00Z", NEW_YEAR_2024),
        ("2024-01-01T00:00:00z", NEW_YEAR_2024),
        ("2024-01-01T00:00:00+00:00", NEW_YEAR_2024),
        ("2024-01-01T01:00:00+01:00", NEW_YEAR_2024),
        ("2023-12-31T19:00:00-05:00", NEW_YEAR_2024),
        ("2024-01-01T00:00:00", NEW_YEAR_2024),  # naive means UTC
        ("2024-01-01", NEW_YEAR_2024),
        ("2024-01-01T00:00:00.5Z", NEW_YEAR_2024 + 0.5),
        (" 2024-01-01T00:00:00Z ", NEW_YEAR_2024),
        (1704067200, NEW_YEAR_2024),
        (1704067200.25, NEW_YEAR_2024 + 0.25),
        (0, 0.0),
        (-86400, -86400.0),
    ],
)
def test_parse_timestamp_reads_iso_8601_and_epoch_seconds(value: object, seconds: float) -> None:
    assert parse_timestamp(value) == seconds


@pytest.mark.parametrize(
    "value",
    [None, True, False, "", "yesterday", "2024-13-01", "2024-01-01T25:00:00Z", "x" * 65, [NEW_YEAR_2024],
     {"t": 1}, float("nan"), float("inf"), float("-inf")],
)
def test_parse_timestamp_gives_none_for_what_is_not_a_time(value: object) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize("text", ["nan", "-Infinity"])
def test_parse_timestamp_refuses_non_finite_strings_as_it_refuses_non_finite_numbers(text: str) -> None:
    """float('nan') and float('inf') give None; their spellings as strings must too,
    or `before ["nan"]` passes the server's check and then never (or always) holds."""
    assert parse_timestamp(text) is None


def test_parse_timestamp_of_a_huge_integer_is_none_not_an_overflow() -> None:
    assert parse_timestamp(10**400) is None


# --- the regex guard -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[a-z0-9._%+-]+@[a-z0-9-]+\.(?:org|com)$",
        r".*foo.*",
        r"^v?\d+\.\d+",
        r"^v[0-9]+$",
        r"\d{3}-\d{4}",
        r"^(?:foo|bar)$",
        r"(ab)+",
        r"a{2,5}",
        r"a*b*",
        r"(?i)^beta-",
        "a" * 256,
    ],
)
def test_check_pattern_accepts_ordinary_patterns(pattern: str) -> None:
    check_pattern(pattern)  # raises ConditionError when refused
    assert check_condition(Condition("name", "matches", (pattern,))) is None


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+$",  # nested variable repeat
        r"(a*)*",
        r"(a{1,3})+",
        r"(?:a?b?)*c",
        r"(a|aa)*",  # alternation inside an unbounded repeat
        r"(?:ab|cd)+$",
        r"(x)\1",  # back-references
        r"(?P<n>x)(?P=n)",
        r"(x)?(?(1)a|b)",
        r"a*b*c*d*",  # more than two unbounded repeats
        r"a*b*c*",
        r".*-.*-.*-beta",
        r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$",
        r"a{1,1000}a{1,1000}a{1,1000}c",  # wide bounded repeats backtrack like unbounded ones
        r"\s*\s*\s{0,16}\s{0,16}$",  # narrow ranges multiply too: 6.7 s of CPU on 256 characters
        r"\s{0,16}" * 6 + "$",  # 28 s on 256 characters
        "a" * 257,  # too long
        "(",  # not a regex
        "[a-",
    ],
)
def test_check_pattern_refuses_dangerous_or_broken_patterns(pattern: str) -> None:
    with pytest.raises(ConditionError):
        check_pattern(pattern)


# The worst patterns the guard accepts, each with the input of exactly
# MAX_MATCH_INPUT_LENGTH characters on which Python's backtracking `re.search` does the
# most work: two unbounded repeats that can split the same run (about n**3/6 steps,
# ~15 ms of CPU when measured) and narrow ranges within the guard's budget. `matched`
# shows that the regex ran on the whole input: a longer one is never searched.
WORST_ACCEPTED = [
    pytest.param(r"\s*\s*$", " " * (MAX_MATCH_INPUT_LENGTH - 1) + "x", True, id="2-overlapping-stars"),
    pytest.param(r".*-.*-beta", "-" * MAX_MATCH_INPUT_LENGTH, False, id="2-dot-stars"),
    pytest.param(r"a{1,16}a{1,16}c", "a" * MAX_MATCH_INPUT_LENGTH, False, id="2-narrow-ranges"),
    pytest.param(r"\s{0,16}\s{0,16}\s{0,16}$", " " * (MAX_MATCH_INPUT_LENGTH - 1) + "x", True, id="3-narrow-ranges"),
    pytest.param(r"\s*\s*\s{0,3}$", " " * (MAX_MATCH_INPUT_LENGTH - 1) + "x", True, id="2-stars-and-a-range-of-4"),
]

# Each evaluation is repeated for EVALUATIONS users so that the child's 1 s CPU limit
# sits between the two behaviours with a wide margin on each side: the patterns above
# use ~0.15 s in all (with the interpreter's start), while one more unbounded repeat
# or a 1,024-character input costs ~0.9 s per evaluation, ~4.5 s in all.
EVALUATIONS = 5

_EVALUATE_IN_CHILD = textwrap.dedent(
    """
    import json, sys
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (1, 1))  # the kernel stops a stalled child
    except (ImportError, ValueError, OSError):
        pass
    from flagsdk import Snapshot
    pattern, text, evaluations = json.loads(sys.argv[1])
    snapshot = Snapshot.from_dict({"flags": {"f": {"enabled": True, "rules": [
        {"id": "r", "conditions": [{"attribute": "a", "op": "matches", "values": [pattern]}], "serve": "on"}]}}})
    results = [snapshot.evaluate("f", {"key": f"u{i}", "a": text}) for i in range(evaluations)]
    print(json.dumps([r.reason for r in results]))
    """
)


@pytest.mark.parametrize(("pattern", "text", "matched"), WORST_ACCEPTED)
def test_a_pattern_the_guard_accepts_cannot_stall_an_evaluation(pattern: str, text: str, matched: bool) -> None:
    """Given a flag whose `matches` pattern is among the worst the guard accepts, when
    users with the worst input of the longest length searched are evaluated, then the
    evaluations end within 1 s of CPU. They run in a child process that the kernel
    stops at 1 s of CPU, because `re` cannot be interrupted."""
    check_pattern(pattern)  # raises ConditionError if refused: then this case belongs in the refused list
    assert len(text) == MAX_MATCH_INPUT_LENGTH
    try:
        done = subprocess.run(
            [sys.executable, "-c", _EVALUATE_IN_CHILD, json.dumps([pattern, text, EVALUATIONS])],
            capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"evaluating {pattern!r} on {len(text)} characters did not finish in 60 s")
    assert done.returncode == 0, (
        f"evaluating {pattern!r} on {len(text)} characters {EVALUATIONS} times used up its 1 s of CPU "
        f"(exit status {done.returncode}): {done.stderr[-500:]}"
    )
    reasons = json.loads(done.stdout)
    assert "ERROR" not in reasons
    assert [reason == "TARGETING_MATCH" for reason in reasons] == [matched] * EVALUATIONS


# The patterns that set the guard's limit: three unbounded repeats that can split the
# same run cost about n**4/24 steps, ~0.9 s of CPU each on 256 characters when measured
# (60 times the two-repeat patterns above), and more than 20 s on 1,024 characters.
@pytest.mark.parametrize(
    "pattern",
    [r"\s*\s*\s*$", r".*-.*-.*-beta", r"a{1,1000}a{1,1000}a{1,1000}a{1,1000}c"],
    ids=["3-overlapping-stars", "3-dot-stars", "4-wide-ranges"],
)
def test_the_once_slow_patterns_with_three_or_more_unbounded_repeats_are_refused(pattern: str) -> None:
    with pytest.raises(ConditionError, match="unbounded repeats"):
        check_pattern(pattern)


# --- check_condition (what the server uses to refuse bad conditions at write time) ----


@pytest.mark.parametrize(
    "condition",
    [
        Condition("plan", "resembles", ("gold",)),
        Condition("plan", "in", ()),
        Condition("plan", "starts_with", (7,)),
        Condition("age", "lt", ("18",)),
        Condition("age", "gt", (True,)),
        Condition("age", "gte", (float("nan"),)),
        Condition("app", "semver_lt", ("two",)),
        Condition("signup", "before", ("not a date",)),
        Condition("signup", "after", (True,)),
        Condition("name", "matches", ("(a+)+",)),
    ],
    ids=lambda c: f"{c.op}-{c.values!r}",
)
def test_check_condition_refuses_unknown_operators_and_unsuitable_values(condition: Condition) -> None:
    with pytest.raises(ConditionError):
        check_condition(condition)


@pytest.mark.parametrize(
    "condition",
    [
        Condition("plan", "in", ("gold", 1, True)),
        Condition("plan", "not_in", ("banned",), negate=True),
        Condition("email", "ends_with", ("@company.com",), ignore_case=True),
        Condition("age", "gte", (18, 21.5)),
        Condition("app", "semver_gte", ("v1.2", "2.0.0-rc.1")),
        Condition("signup", "before", ("2024-01-01T00:00:00Z", 1704067200)),
    ],
    ids=lambda c: c.op,
)
def test_check_condition_accepts_well_formed_conditions(condition: Condition) -> None:
    assert check_condition(condition) is None


@pytest.mark.parametrize("op", ["lt", "gte", "before", "after"])
def test_a_huge_integer_value_is_refused_or_compared_never_an_overflow(op: str) -> None:
    """Given `10**400` (a valid JSON number) as a condition value, then the server's
    check either accepts it or refuses it with ConditionError; it never crashes."""
    with contextlib.suppress(ConditionError):
        check_condition(Condition("n", op, (10**400,)))


@pytest.mark.parametrize("op", ["lt", "gt", "before", "after"])
def test_a_huge_integer_attribute_is_an_ordinary_non_error_evaluation(op: str) -> None:
    """Given a user whose attribute is `10**400`, when a numeric or time condition
    reads it, then the evaluation is not an internal error (GENERAL)."""
    value = 5 if op in ("lt", "gt") else "2024-01-01T00:00:00Z"
    snapshot = Snapshot.from_dict({"flags": {"f": {"enabled": True, "rules": [
        {"id": "r", "conditions": [{"attribute": "n", "op": op, "values": [value]}], "serve": "on"}]}}})

    result = snapshot.evaluate("f", {"key": "u", "n": 10**400})

    assert result.reason in ("TARGETING_MATCH", "SPLIT"), result
