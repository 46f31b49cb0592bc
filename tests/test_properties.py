"""Properties of bucketing and evaluation, with hypothesis and with fixed large samples.

Statistical tests use fixed key sets ("user-0" ... ), so each is a deterministic
check that cannot flake; the thresholds are stated where they are used. Hypothesis
runs derandomized (the same examples on every run) for the same reason.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from flagsdk import ConfigError, Evaluation, FlagClient, Snapshot, User, bucket
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.evaluation_cases import load_cases

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
REASONS = {"DEFAULT", "DISABLED", "TARGETING_MATCH", "SPLIT", "ERROR"}
CODES = {"FLAG_NOT_FOUND", "PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT"}

basis_points = st.integers(min_value=0, max_value=10_000)
# hypothesis' text() leaves out lone surrogates; they are tested apart (test_offline_client).
user_keys = st.lists(st.text(min_size=1, max_size=24), min_size=1, max_size=40, unique=True)


# --- raising a percentage never removes a user ---------------------------------------


def flag_rollout(percentage: float) -> dict[str, Any]:
    return {"flags": {"f": {"enabled": True, "salt": "mono", "rollout": percentage}}}


def rule_rollout(percentage: float) -> dict[str, Any]:
    return {"flags": {"f": {"enabled": True, "salt": "mono", "rollout": 0,
                            "rules": [{"id": "all", "rollout": percentage}]}}}


def segment_percentage(percentage: float) -> dict[str, Any]:
    return {"segments": {"mono": {"percentage": percentage}},
            "flags": {"f": {"enabled": True, "salt": "unrelated", "rules": [
                {"id": "seg", "segments": ["mono"], "serve": "on"}]}}}


@pytest.mark.parametrize("document", [flag_rollout, rule_rollout, segment_percentage])
@PROPERTY
@given(lines=st.tuples(basis_points, basis_points), keys=user_keys)
def test_raising_a_percentage_never_removes_a_user(document: Any, lines: tuple[int, int], keys: list[str]) -> None:
    """Given a flag rollout, a rule rollout or a segment percentage at p and at q >= p
    (steps of 0.01), then every user on at p is on at q, and the users who change
    are exactly those with p*100 <= bucket("mono", key) < q*100."""
    low, high = sorted(lines)
    at_low = Snapshot.from_dict(document(low / 100))
    at_high = Snapshot.from_dict(document(high / 100))
    for key in keys:
        before = at_low.evaluate("f", {"key": key}).variant
        after = at_high.evaluate("f", {"key": key}).variant
        assert (before, after) != ("on", "off"), key
        assert (before != after) == (low <= bucket("mono", key) < high), key


# --- uniformity and independence -----------------------------------------------------


def chi_square_upper_tail(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df), by the Wilson-Hilferty normal
    approximation (accurate to about 1e-3 relative in the tails used here)."""
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square(counts: list[int], expected: float) -> float:
    return sum((c - expected) ** 2 / expected for c in counts)


N_KEYS = 100_000
KEYS = [f"user-{i}" for i in range(N_KEYS)]
ALPHA = 0.001  # each test fails if its p-value is below ALPHA or above 1 - ALPHA (too even is suspicious too)


@pytest.fixture(scope="module")
def buckets() -> dict[str, list[int]]:
    return {salt: [bucket(salt, key) for key in KEYS] for salt in ("new-checkout", "random-10", "checkout-layout")}


@pytest.mark.parametrize("salt", ["new-checkout", "random-10"])
@pytest.mark.parametrize(("cells", "cell_of"), [
    (100, lambda b: b // 100),  # whole percentages (Unleash's h % 100)
    (100, lambda b: b % 100),  # the 0.01% steps within a percentage
    (10_000, lambda b: b),  # every bucket
], ids=["percent", "hundredths", "bucket"])
def test_buckets_are_uniform(buckets: dict[str, list[int]], salt: str, cells: int, cell_of: Any) -> None:
    """Given 100,000 keys, then their cells pass a chi-square goodness-of-fit test of
    uniformity: ALPHA < p < 1 - ALPHA, p by the Wilson-Hilferty approximation."""
    counts = Counter(cell_of(b) for b in buckets[salt])
    statistic = chi_square([counts.get(c, 0) for c in range(cells)], N_KEYS / cells)
    p = chi_square_upper_tail(statistic, cells - 1)
    assert ALPHA < p < 1 - ALPHA, (statistic, p)


def test_chi_square_tail_approximation_is_good_enough() -> None:
    # Reference quantiles of chi-square from tables: (df, x, upper tail).
    for df, x, tail in [(99, 148.230, 0.001), (99, 123.225, 0.05), (81, 103.010, 0.05), (81, 126.083, 0.001),
                        (9999, 10441.709, 0.001)]:
        assert chi_square_upper_tail(x, df) == pytest.approx(tail, rel=0.02)


@pytest.mark.parametrize(("salt_a", "salt_b"), [("new-checkout", "random-10"), ("new-checkout", "checkout-layout")])
def test_two_salts_bucket_independently(buckets: dict[str, list[int]], salt_a: str, salt_b: str) -> None:
    """Given 100,000 keys and their deciles under two salts, then the 10x10
    contingency table passes a chi-square test of independence (df 81):
    ALPHA < p < 1 - ALPHA."""
    table = Counter(zip((b // 1000 for b in buckets[salt_a]), (b // 1000 for b in buckets[salt_b]), strict=True))
    rows = Counter(b // 1000 for b in buckets[salt_a])
    cols = Counter(b // 1000 for b in buckets[salt_b])
    statistic = sum(
        (table.get((r, c), 0) - rows[r] * cols[c] / N_KEYS) ** 2 / (rows[r] * cols[c] / N_KEYS)
        for r in range(10) for c in range(10)
    )
    p = chi_square_upper_tail(statistic, 81)
    assert ALPHA < p < 1 - ALPHA, (statistic, p)


def test_a_segments_random_10_percent_gets_a_flags_25_percent_like_everyone(buckets: dict[str, list[int]]) -> None:
    """Given the 10% of DESIGN's `random-10` segment, then the flag's 25% admits
    25% of them, within 4.5 binomial standard deviations."""
    in_segment = [i for i, b in enumerate(buckets["random-10"]) if b < 1000]
    admitted = sum(buckets["new-checkout"][i] < 2500 for i in in_segment)
    n = len(in_segment)
    assert abs(n - N_KEYS * 0.10) <= 4.5 * math.sqrt(N_KEYS * 0.10 * 0.90)
    assert abs(admitted - 0.25 * n) <= 4.5 * math.sqrt(n * 0.25 * 0.75)


# --- variant weights -------------------------------------------------------------------

WEIGHT_KEYS = KEYS[:10_000]


@st.composite
def weight_maps(draw: st.DrawFn) -> dict[str, int]:
    """2 to 5 variants with positive weights summing to 10,000, in a random order."""
    n = draw(st.integers(min_value=2, max_value=5))
    cuts = sorted(draw(st.lists(st.integers(1, 9_999), min_size=n - 1, max_size=n - 1, unique=True)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 10_000], strict=True)]
    names = draw(st.permutations([f"v{i}" for i in range(n)]))
    return dict(zip(names, weights, strict=True))


@settings(PROPERTY, max_examples=15)
@given(weights=weight_maps())
@example(weights={"control": 5000, "blue": 2500, "green": 2500})
@example(weights={"a": 1, "b": 9999})
def test_variant_weights_give_their_shares(weights: dict[str, int]) -> None:
    """Given weights in basis points, then each of 10,000 users gets the variant whose
    cumulative range (declared order) holds their bucket, and each variant's share
    is within 4.5 binomial standard deviations (+1 user) of its weight."""
    variants = sorted(weights)
    snapshot = Snapshot.from_dict({"flags": {"w": {"enabled": True, "variants": variants, "rollout": weights}}})
    bounds, upper = [], 0
    for variant, weight in weights.items():
        upper += weight
        bounds.append((upper, variant))
    counts: Counter[str] = Counter()
    for key in WEIGHT_KEYS:
        result = snapshot.evaluate("w", {"key": key})
        b = bucket("w", key)
        assert result.variant == next(v for top, v in bounds if b < top), key
        assert (result.reason, result.randomized, result.enabled) == ("SPLIT", True, result.variant != variants[0])
        counts[result.variant] += 1
    n = len(WEIGHT_KEYS)
    for variant, weight in weights.items():
        share = weight / 10_000
        assert abs(counts[variant] - n * share) <= 4.5 * math.sqrt(n * share * (1 - share)) + 1, variant


# --- evaluation never raises -----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from([10**400, "", "gold", "NL", "pro", "vip", "u-inc", "1.2.3", "v2.0.0-rc.1",
                     "2024-01-01T00:00:00Z", "jo@Company.COM", "x" * 2000, 1704067200]),
)
garbage = st.recursive(
    st.one_of(scalars, st.binary(max_size=4), st.builds(object), st.frozensets(st.integers(), max_size=3)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.lists(st.text(max_size=6), max_size=4),
    ),
    max_leaves=10,
)
ATTRIBUTES = ["plan", "email", "age", "app", "signup", "country", "org", "name", "tier", "beta", "ua", "version",
              "text", "key"]
attribute_maps = st.dictionaries(st.sampled_from(ATTRIBUTES), garbage, max_size=4)
users = st.one_of(
    garbage,
    attribute_maps,
    st.builds(lambda key, attributes: {**attributes, "key": key},
              st.one_of(st.text(max_size=10), st.sampled_from(["vip", "u-inc", "list-a"])), attribute_maps),
    st.builds(User, key=st.text(max_size=10), attributes=attribute_maps),
)
defaults = st.one_of(st.none(), st.sampled_from(["x", "on", "off"]))

CASE_FILES = ["example.json", "errors.json", "operators.json", "rollouts.json", "rules.json", "segments.json"]
CONFIGS = {name: config for name, _, config in load_cases() if name in CASE_FILES}
FLAGS = sorted({(name, flag) for name, config in CONFIGS.items() for flag in [*config["flags"], "no-such-flag"]})


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[Snapshot, FlagClient]]:
    return {name: (Snapshot.from_dict(c), FlagClient(offline=True, bootstrap=c)) for name, c in CONFIGS.items()}


def check_result(result: Any, flag: str, default: Any, config: dict[str, Any]) -> None:
    assert isinstance(result, Evaluation)
    assert result.flag_key == flag
    assert result.reason in REASONS
    if result.reason == "ERROR":
        assert (result.variant, result.enabled, result.randomized) == (default, False, False)
        assert result.error_code in CODES | {"GENERAL"}
    else:
        variants = config["flags"][flag].get("variants", ["off", "on"])
        assert result.variant in variants and result.error_code is None
        assert result.enabled == (result.variant != variants[0])
        assert result.randomized == (result.reason == "SPLIT")


@settings(PROPERTY, max_examples=200)
@given(target=st.sampled_from(FLAGS), user=users, default=defaults)
def test_evaluation_never_raises_for_any_user(
    loaded: dict[str, tuple[Snapshot, FlagClient]], target: tuple[str, str], user: Any, default: Any
) -> None:
    """Given any user object at all (nested garbage included), when any flag of the
    case files is evaluated, then the engine and the offline client return a
    well-formed result (ERROR ones with the caller's default), never an exception,
    and the client agrees with the engine."""
    name, flag = target
    snapshot, client = loaded[name]

    result = snapshot.evaluate(flag, user, default)
    via_client = client.evaluate(flag, user, default)
    enabled = client.is_enabled(flag, user)
    variant = client.variant(flag, user, default)

    check_result(result, flag, default, CONFIGS[name])
    assert (via_client.variant, via_client.reason, via_client.error_code, via_client.rule_id) == (
        result.variant, result.reason, result.error_code, result.rule_id)
    assert enabled is (result.enabled if result.reason != "ERROR" else False)
    assert variant == result.variant


@settings(PROPERTY, max_examples=100)
@given(target=st.sampled_from(FLAGS), user=users, default=defaults)
def test_bad_users_give_a_specific_error_code_never_an_internal_error(
    loaded: dict[str, tuple[Snapshot, FlagClient]], target: tuple[str, str], user: Any, default: Any
) -> None:
    """GENERAL means an exception escaped the engine's own checks: a bad user must be
    named (INVALID_CONTEXT, TARGETING_KEY_MISSING) or simply not match."""
    name, flag = target
    result = loaded[name][0].evaluate(flag, user, default)
    assert result.error_code != "GENERAL", result.error_message


# --- garbage configs -------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
plausible = st.one_of(
    json_values,
    st.sampled_from([True, False, 0, 1, 2, 25, 100, 0.01, 12.345, -1, 101, "on", "off", "key", "org", [], {},
                     ["off", "on"], ["on"], ["a", "a"], {"off": 5000, "on": 5000}, {"off": 10000},
                     {"off": 5000, "on": 4999}, {"purple": 10000}]),
)
conditions = st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "attribute": st.one_of(plausible, st.just("plan")),
    "op": st.one_of(plausible, st.sampled_from(["in", "not_in", "matches", "lt", "semver_gt", "after", "nope"])),
    "values": st.one_of(plausible, st.lists(st.one_of(st.text(max_size=4), st.integers(), st.floats()), max_size=3)),
    "ignore_case": plausible, "negate": plausible,
})), max_size=3)
rules = st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "id": st.one_of(plausible, st.sampled_from(["r1", "r2"])),
    "segments": st.one_of(plausible, st.lists(st.sampled_from(["s1", "s2", "missing"]), max_size=2)),
    "conditions": st.one_of(plausible, conditions),
    "serve": plausible, "rollout": plausible,
})), max_size=3)
flag_bodies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "enabled": plausible, "variants": plausible, "salt": plausible, "bucket_by": plausible,
    "rules": st.one_of(plausible, rules), "rollout": plausible, "hash_version": plausible, "version": plausible,
}))
segment_bodies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "included": plausible, "excluded": plausible, "conditions": st.one_of(plausible, conditions),
    "percentage": plausible, "bucket_by": plausible, "version": plausible,
}))
GOOD_FLAG = {"enabled": True, "rules": [{"id": "vip", "conditions": [
    {"attribute": "key", "op": "in", "values": ["vip"]}], "serve": "on"}], "rollout": 0}


@settings(PROPERTY, max_examples=300)
@given(garbage_flags=st.dictionaries(st.sampled_from(["g1", "g2", "g3"]), flag_bodies, min_size=1),
       garbage_segments=st.dictionaries(st.sampled_from(["s1", "s2"]), segment_bodies),
       user=st.one_of(st.just({"key": "vip", "plan": "gold"}), users))
@example(garbage_flags={"g1": {"enabled": True, "hash_version": []}}, garbage_segments={}, user={"key": "vip"})
def test_garbage_flags_are_skipped_and_the_others_keep_working(
    garbage_flags: dict[str, Any], garbage_segments: dict[str, Any], user: Any
) -> None:
    """Given a config whose other flags and segments hold garbage, then loading it never
    raises, the well-formed flag answers as always, every malformed flag answers
    PARSE_ERROR with the caller's default, and no evaluation raises."""
    document = {"environment": "test", "version": 1, "segments": garbage_segments,
                "flags": {"good": GOOD_FLAG, **garbage_flags}}

    snapshot = Snapshot.from_dict(document)
    client = FlagClient(offline=True, bootstrap=document)

    for evaluate in (snapshot.evaluate, client.evaluate):
        assert evaluate("good", {"key": "vip"}).variant == "on"
        assert evaluate("good", {"key": "someone"}).variant == "off"
        for key in garbage_flags:
            result = evaluate(key, user, "x")
            assert isinstance(result, Evaluation)
            if key in snapshot.config.invalid_flags:
                assert (result.variant, result.reason, result.error_code) == ("x", "ERROR", "PARSE_ERROR")
    assert set(snapshot.config.flags) | set(snapshot.config.invalid_flags) == {"good", *garbage_flags}


not_configs = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)),
    st.dictionaries(st.sampled_from(["environment", "version", "segments", "flag"]), json_values),
    st.fixed_dictionaries({"flags": json_values.filter(lambda v: not isinstance(v, dict))}),
    st.fixed_dictionaries({"flags": st.just({}), "segments": json_values.filter(lambda v: not isinstance(v, dict))}),
    st.fixed_dictionaries({"flags": st.just({}),
                           "version": st.one_of(st.booleans(), st.floats(), st.text(max_size=3), st.lists(st.none()))}),
    st.fixed_dictionaries({"flags": st.just({}), "environment": json_values.filter(lambda v: not isinstance(v, str))}),
)


@PROPERTY
@given(document=not_configs)
def test_a_document_that_is_not_a_config_is_refused_and_the_previous_one_stays(document: Any) -> None:
    """Given a client serving a config, when a document that is not a config arrives
    (through the hook the sync uses), then it is refused whole with ConfigError, the
    client keeps its snapshot and answers as before."""
    with pytest.raises(ConfigError):
        Snapshot.from_dict(document)
    client = FlagClient(offline=True, bootstrap={"version": 1, "flags": {"good": GOOD_FLAG}})
    previous = client.snapshot

    accepted = client._apply_document(document, source="test")

    assert accepted is False
    assert client.snapshot is previous
    assert client.variant("good", {"key": "vip"}) == "on"
    assert client.evaluate("good", {"key": "someone"}).reason == "SPLIT"
