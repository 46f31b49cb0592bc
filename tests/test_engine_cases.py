"""The evaluation cases (tests/cases/*.json) against the engine and the offline client.

Given the config of a case file, when a case's flag is evaluated for its user with
its default, then every field the case expects is what the engine gives, what the
offline `FlagClient.evaluate` gives, and `variant` / `is_enabled` agree with it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import flagsdk
import pytest
from flagsdk import FlagClient, Snapshot
from flagsdk.engine.model import Config
from flagsdk.engine.operators import OPERATORS

from tests.evaluation_cases import EXPECT_FIELDS, case_ids, load_cases

CASES = load_cases()
IDS = case_ids(CASES)
FILES = sorted({file_name for file_name, _, _ in CASES})
REASONS = {"DEFAULT", "DISABLED", "TARGETING_MATCH", "SPLIT", "ERROR"}
ERROR_CODES = {"FLAG_NOT_FOUND", "PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT"}


@functools.cache
def snapshot_of(file_name: str) -> Snapshot:
    config = next(config for name, _, config in CASES if name == file_name)
    return Snapshot.from_dict(config)


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, FlagClient]]:
    """One offline client per case file, built on first use, closed at the end."""
    made: dict[str, FlagClient] = {}
    yield made
    for client in made.values():
        client.close()


def client_of(clients: dict[str, FlagClient], file_name: str, config: dict[str, Any]) -> FlagClient:
    if file_name not in clients:
        clients[file_name] = FlagClient(offline=True, bootstrap=config)
    return clients[file_name]


def observed(result: flagsdk.Evaluation, expect: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(result, name) for name in expect}


def expected_enabled(case: dict[str, Any], config: dict[str, Any]) -> bool:
    """`is_enabled` from the case alone: any variant but the flag's first; False on ERROR."""
    expect = case["expect"]
    if expect["reason"] == "ERROR":
        return False
    variants = config["flags"][case["flag"]].get("variants", ["off", "on"])
    return bool(expect["variant"] != variants[0])


@pytest.mark.parametrize(("file_name", "case", "config"), CASES, ids=IDS)
def test_engine(file_name: str, case: dict[str, Any], config: dict[str, Any]) -> None:
    result = snapshot_of(file_name).evaluate(case["flag"], case["user"], case.get("default"))

    assert result.flag_key == case["flag"]
    assert observed(result, case["expect"]) == case["expect"]


@pytest.mark.parametrize(("file_name", "case", "config"), CASES, ids=IDS)
def test_offline_client(
    clients: dict[str, FlagClient], file_name: str, case: dict[str, Any], config: dict[str, Any]
) -> None:
    client = client_of(clients, file_name, config)
    flag, user, default, expect = case["flag"], case["user"], case.get("default"), case["expect"]

    result = client.evaluate(flag, user, default)

    assert observed(result, expect) == expect
    assert client.variant(flag, user, default) == expect["variant"]
    assert client.is_enabled(flag, user) is expected_enabled(case, config)
    # On ERROR, is_enabled answers the caller's default; otherwise the default does not matter.
    assert client.is_enabled(flag, user, default=True) is (
        True if expect["reason"] == "ERROR" else expected_enabled(case, config)
    )


@pytest.mark.parametrize("file_name", FILES)
def test_cases_survive_a_round_trip_through_the_model(file_name: str) -> None:
    """Given a config parsed and written back with `Config.to_dict` (what the server
    sends), when the cases of its well-formed flags run, then nothing changes."""
    config = next(config for name, _, config in CASES if name == file_name)
    parsed = Config.from_dict(config)
    again = Snapshot.from_dict(parsed.to_dict())
    cases = [case for name, case, _ in CASES if name == file_name and case["flag"] in parsed.flags]
    assert cases, f"{file_name} has no case on a well-formed flag"

    for case in cases:
        result = again.evaluate(case["flag"], case["user"], case.get("default"))
        assert observed(result, case["expect"]) == case["expect"], case["name"]


def test_case_data_is_self_consistent() -> None:
    """The expectations agree with the rules every result obeys, so a typo in a
    case cannot pass unnoticed: `enabled` is any variant but the first, `randomized`
    is reason SPLIT, ERROR carries a code and the caller's default, and nothing else does."""
    problems = []
    for file_name, case, config in CASES:
        expect, where = case["expect"], f"{file_name}/{case['name']}"
        reason = expect["reason"]
        if reason not in REASONS:
            problems.append(f"{where}: unknown reason {reason}")
        if "enabled" in expect and expect["enabled"] != expected_enabled(case, config):
            problems.append(f"{where}: enabled contradicts the variant")
        if "randomized" in expect and expect["randomized"] != (reason == "SPLIT"):
            problems.append(f"{where}: randomized contradicts the reason")
        if "error_code" in expect and (expect["error_code"] is not None) != (reason == "ERROR"):
            problems.append(f"{where}: error_code contradicts the reason")
        if reason == "ERROR":
            if expect.get("error_code") not in ERROR_CODES:
                problems.append(f"{where}: an ERROR case must name its error code")
            if expect["variant"] != case.get("default"):
                problems.append(f"{where}: an ERROR gives the caller's default")
        elif case["flag"] not in config["flags"]:
            problems.append(f"{where}: the flag is not in the config")
    assert problems == []


def test_cases_cover_every_operator_reason_and_error_code() -> None:
    ops_used: set[str] = set()
    ignore_case_ops: set[str] = set()
    negated = False
    for _, _, config in {id(c): (n, k, c) for n, k, c in CASES}.values():
        documents = [*config["flags"].values(), *config["segments"].values()]
        for document in documents:
            if not isinstance(document, dict):
                continue
            rules = document.get("rules", [])
            conditions = [*document.get("conditions", [])] if isinstance(document.get("conditions"), list) else []
            for rule in rules if isinstance(rules, list) else []:
                if isinstance(rule, dict) and isinstance(rule.get("conditions"), list):
                    conditions.extend(rule["conditions"])
            for condition in conditions:
                ops_used.add(condition["op"])
                if condition.get("ignore_case"):
                    ignore_case_ops.add(condition["op"])
                negated = negated or bool(condition.get("negate"))
    reasons = {case["expect"]["reason"] for _, case, _ in CASES}
    codes = {case["expect"].get("error_code") for _, case, _ in CASES} - {None}

    assert set(OPERATORS) <= ops_used
    assert {"in", "not_in", "starts_with", "ends_with", "contains", "matches"} <= ignore_case_ops
    assert negated
    assert reasons == REASONS
    assert codes == ERROR_CODES


def test_every_case_checks_variant_and_reason_and_only_known_fields() -> None:
    assert len(CASES) >= 300
    for _, case, _ in CASES:
        assert {"variant", "reason"} <= case["expect"].keys() <= EXPECT_FIELDS
    assert len(set(IDS)) == len(IDS)
