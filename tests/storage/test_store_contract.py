"""The storage contract: what every backend does, run against each of them.

Conventions these tests pin down (beyond base.py's docstrings):

- Reads and writes scoped to an environment raise `NotFound("environment")` for an
  unknown one (`get_flag`/`get_segment` return None only for an unknown flag or
  segment in a known environment); `list_audit` filters never raise.
- Create fills absent fields with defaults (flag: description "", tags [], owner
  None, variants ["off", "on"], salt = key, bucket_by "key", hash_version 1,
  enabled False, rules [], rollout 0; segment: description "", included/excluded/
  conditions [], percentage None, bucket_by "key"). Update replaces the fields
  present in its dict and keeps the absent ones; every successful update adds
  exactly 1 to the version, even when nothing changed.
- Lists are sorted by key, tokens by id.
- Audit `action` is `create`, `update` or `delete` (with `target_type`
  environment, flag, segment or token); its `environment` is the one the call named (a token's own environment, None for
  admin tokens); `before`/`after` are the records as `get_*` returns them.
- A rule naming a variant the flag lacks is `InvalidReference` (field
  `rules[i].serve`, `rules[i].rollout` or `rollout`), and so is removing a variant
  that another environment's rules or weights still use (field `variants`).
- Config versions only grow; token writes and failed writes leave them alone.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from flagsdk.engine import Config, Rollout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flagserver.storage import AlreadyExists, InvalidReference, NotFound, Store, VersionConflict
from flagserver.storage.base import ENV_FLAG_FIELDS, GLOBAL_FLAG_FIELDS, SEGMENT_FIELDS, Record

ENV_KEYS = {"key", "name", "created_at"}
FLAG_KEYS = {"key", *GLOBAL_FLAG_FIELDS, *ENV_FLAG_FIELDS, "version", "updated_at"}
SEGMENT_KEYS = {"key", *SEGMENT_FIELDS, "version", "updated_at"}
TOKEN_KEYS = {"id", "name", "kind", "environment", "created_at"}
AUDIT_KEYS = {"id", "at", "actor", "action", "environment", "target_type", "target_key", "before", "after"}

INTERNAL: Record = {
    "key": "internal",
    "description": "Staff",
    "conditions": [{"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True}],
}
BETA: Record = {"key": "beta-testers", "included": ["user-1", "user-2"]}
CHECKOUT: Record = {
    "key": "new-checkout",
    "description": "The new checkout",
    "tags": ["checkout", "q3"],
    "owner": "payments",
    "enabled": True,
    "rules": [
        {"id": "staff", "segments": ["internal"], "serve": "on"},
        {"id": "beta", "segments": ["beta-testers"], "rollout": 50},
    ],
    "rollout": 25,
}
LAYOUT: Record = {
    "key": "checkout-layout",
    "variants": ["control", "blue", "green"],
    "enabled": True,
    "rules": [{"id": "staff", "segments": ["internal"], "serve": "green"}],
    "rollout": {"control": 5000, "blue": 2500, "green": 2500},
}


# helpers


def environments(store: Store, *keys: str) -> None:
    for key in keys:
        store.create_environment(key, key.capitalize(), actor="setup")


def populate(store: Store) -> None:
    """production and staging; segments internal (both) and beta-testers
    (production); the flags new-checkout and checkout-layout; an sdk token."""
    environments(store, "production", "staging")
    for env in ("production", "staging"):
        store.create_segment(env, INTERNAL, actor="setup")
    store.create_segment("production", BETA, actor="setup")
    store.create_flag("production", CHECKOUT, actor="setup")
    store.create_flag("production", LAYOUT, actor="setup")
    store.create_token({"id": "tok1", "name": "web", "kind": "sdk", "environment": "production"}, "h1", actor="setup")


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a store holds, as its read methods show it."""
    envs = store.list_environments()
    keys = [e["key"] for e in envs]
    tokens = store.list_tokens()
    return {
        "environments": envs,
        "flags": {k: store.list_flags(k) for k in keys},
        "segments": {k: store.list_segments(k) for k in keys},
        "config_versions": {k: store.config_version(k) for k in keys},
        "documents": {k: store.config_document(k) for k in keys},
        "tokens": tokens,
        "token_hashes": {t["id"]: store.find_token(t["id"]) for t in tokens},
        "audit": store.list_audit(limit=100_000),
    }


def config_versions(store: Store) -> dict[str, int]:
    return {e["key"]: store.config_version(e["key"]) for e in store.list_environments()}


def newest_audit(store: Store) -> Record:
    (entry,) = store.list_audit(limit=1)
    return entry


def audit_count(store: Store) -> int:
    return len(store.list_audit(limit=100_000))


def weights_of(rollout: Any, variants: list[str]) -> dict[str, int]:
    parsed = Rollout.from_wire(rollout, tuple(variants))
    assert parsed.weights is not None, f"{rollout!r} is not a weights rollout"
    return {v: dict(parsed.weights).get(v, 0) for v in variants}


def race(n: int, action: Callable[[int], object]) -> list[object]:
    """Run `action(i)` in n threads released together; each result or exception."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = action(i)
        except BaseException as exc:  # handed to the test, not to the thread hook
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"race-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing thread did not finish"
    return results


# lifecycle


def test_initialize_again_keeps_data_and_ping_answers(store: Store) -> None:
    environments(store, "production")
    store.initialize()
    store.ping()  # raises when the backend does not answer
    assert [e["key"] for e in store.list_environments()] == ["production"]


# environments


def test_create_environment_returns_the_record_that_get_and_list_show(store: Store) -> None:
    t0 = time.time()
    record = store.create_environment("production", "Production", actor="alice")
    t1 = time.time()
    assert set(record) == ENV_KEYS
    assert (record["key"], record["name"]) == ("production", "Production")
    assert isinstance(record["created_at"], float) and t0 <= record["created_at"] <= t1
    assert store.get_environment("production") == record
    assert store.list_environments() == [record]


def test_environments_are_listed_by_key(store: Store) -> None:
    environments(store, "staging", "development", "production")
    assert [e["key"] for e in store.list_environments()] == ["development", "production", "staging"]


def test_unknown_environment_is_none(store: Store) -> None:
    environments(store, "production")
    assert store.get_environment("nope") is None


def test_creating_an_existing_environment_raises_already_exists(store: Store) -> None:
    environments(store, "production")
    with pytest.raises(AlreadyExists) as info:
        store.create_environment("production", "Again", actor="alice")
    assert (info.value.kind, info.value.key) == ("environment", "production")
    assert store.get_environment("production")["name"] == "Production"  # type: ignore[index]


def test_a_new_environment_gets_every_flag_disabled_with_nobody_in(store: Store) -> None:
    populate(store)
    before = {f["key"]: f for f in store.list_flags("production")}
    t0 = time.time()
    environments(store, "qa")
    flags = {f["key"]: f for f in store.list_flags("qa")}
    assert set(flags) == {"new-checkout", "checkout-layout"}
    for key, flag in flags.items():
        assert set(flag) == FLAG_KEYS
        assert (flag["enabled"], flag["rules"], flag["version"]) == (False, [], 1)
        assert flag["updated_at"] >= t0
        assert {n: flag[n] for n in GLOBAL_FLAG_FIELDS} == {n: before[key][n] for n in GLOBAL_FLAG_FIELDS}
    assert flags["new-checkout"]["rollout"] == 0
    assert weights_of(flags["checkout-layout"]["rollout"], LAYOUT["variants"]) == {
        "control": 10000,
        "blue": 0,
        "green": 0,
    }
    assert store.list_segments("qa") == []


def test_a_new_environment_changes_no_other_environment(store: Store) -> None:
    populate(store)
    before = snapshot(store)
    environments(store, "qa")
    after = snapshot(store)
    for part in ("flags", "segments", "config_versions", "documents"):
        assert {k: v for k, v in after[part].items() if k != "qa"} == before[part]
    assert isinstance(after["config_versions"]["qa"], int) and after["config_versions"]["qa"] >= 1


# flags: create and read


def test_create_flag_fills_in_the_defaults(store: Store) -> None:
    environments(store, "production")
    t0 = time.time()
    record = store.create_flag("production", {"key": "plain"}, actor="alice")
    t1 = time.time()
    assert t0 <= record.pop("updated_at") <= t1
    assert record == {
        "key": "plain",
        "description": "",
        "tags": [],
        "owner": None,
        "variants": ["off", "on"],
        "salt": "plain",
        "bucket_by": "key",
        "hash_version": 1,
        "enabled": False,
        "rules": [],
        "rollout": 0,
        "version": 1,
    }


def test_create_flag_keeps_the_given_fields_and_creates_it_everywhere_at_version_1(store: Store) -> None:
    environments(store, "production", "staging")
    for segment in (INTERNAL, BETA):
        store.create_segment("production", segment, actor="setup")
    given = {**CHECKOUT, "salt": "shared", "bucket_by": "account_id"}
    record = store.create_flag("production", given, actor="alice")
    assert set(record) == FLAG_KEYS
    assert {k: record[k] for k in given} == given
    assert record["version"] == 1
    assert store.get_flag("production", "new-checkout") == record
    elsewhere = store.get_flag("staging", "new-checkout")
    assert elsewhere is not None
    assert {n: elsewhere[n] for n in GLOBAL_FLAG_FIELDS} == {n: record[n] for n in GLOBAL_FLAG_FIELDS}
    assert (elsewhere["enabled"], elsewhere["rules"], elsewhere["rollout"], elsewhere["version"]) == (False, [], 0, 1)


def test_a_weights_flag_gets_all_weight_on_its_first_variant_elsewhere(store: Store) -> None:
    environments(store, "production", "staging")
    store.create_segment("production", INTERNAL, actor="setup")
    store.create_flag("production", LAYOUT, actor="alice")
    staging = store.get_flag("staging", "checkout-layout")
    assert staging is not None
    assert weights_of(staging["rollout"], LAYOUT["variants"]) == {"control": 10000, "blue": 0, "green": 0}
    assert Config.from_dict(store.config_document("staging")).invalid_flags == {}


def test_weights_keep_their_declared_order(store: Store) -> None:
    environments(store, "production")
    rollout = {"green": 2500, "control": 5000, "blue": 2500}
    store.create_flag("production", {**LAYOUT, "rules": [], "rollout": rollout}, actor="alice")
    stored = store.get_flag("production", "checkout-layout")
    assert stored is not None and list(stored["rollout"]) == ["green", "control", "blue"]
    wire = store.config_document("production")["flags"]["checkout-layout"]["rollout"]
    assert list(wire) == ["green", "control", "blue"]


def test_flags_are_listed_by_key(store: Store) -> None:
    environments(store, "production")
    for key in ("b-flag", "c-flag", "a-flag"):
        store.create_flag("production", {"key": key}, actor="alice")
    assert [f["key"] for f in store.list_flags("production")] == ["a-flag", "b-flag", "c-flag"]
    assert all(set(f) == FLAG_KEYS for f in store.list_flags("production"))


def test_unknown_flag_and_segment_are_none(store: Store) -> None:
    environments(store, "production")
    assert store.get_flag("production", "nope") is None
    assert store.get_segment("production", "nope") is None


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.list_flags("nope"),
        lambda s: s.get_flag("nope", "new-checkout"),
        lambda s: s.list_segments("nope"),
        lambda s: s.get_segment("nope", "internal"),
        lambda s: s.config_version("nope"),
        lambda s: s.config_document("nope"),
    ],
    ids=["list_flags", "get_flag", "list_segments", "get_segment", "config_version", "config_document"],
)
def test_reads_in_an_unknown_environment_raise_not_found(store: Store, read: Callable[[Store], object]) -> None:
    populate(store)
    with pytest.raises(NotFound) as info:
        read(store)
    assert (info.value.kind, info.value.key) == ("environment", "nope")


def test_creating_an_existing_flag_raises_already_exists_from_any_environment(store: Store) -> None:
    environments(store, "production", "staging")
    store.create_flag("production", {"key": "plain"}, actor="alice")
    for env in ("production", "staging"):
        with pytest.raises(AlreadyExists) as info:
            store.create_flag(env, {"key": "plain", "description": "again"}, actor="bob")
        assert (info.value.kind, info.value.key) == ("flag", "plain")
    assert store.get_flag("production", "plain")["description"] == ""  # type: ignore[index]


def test_a_rule_naming_a_missing_segment_raises_invalid_reference(store: Store) -> None:
    environments(store, "production")
    store.create_segment("production", INTERNAL, actor="setup")  # beta-testers is missing
    with pytest.raises(InvalidReference) as info:
        store.create_flag("production", CHECKOUT, actor="alice")
    assert info.value.field == "rules[1].segments"
    assert "beta-testers" in info.value.message
    assert store.get_flag("production", "new-checkout") is None


def test_a_segment_of_another_environment_does_not_count(store: Store) -> None:
    environments(store, "production", "staging")
    store.create_segment("production", INTERNAL, actor="setup")
    flag = {"key": "f", "rules": [{"id": "staff", "segments": ["internal"], "serve": "on"}]}
    with pytest.raises(InvalidReference) as info:
        store.create_flag("staging", flag, actor="alice")
    assert info.value.field == "rules[0].segments"


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ({"rules": [{"id": "r", "serve": "purple"}]}, "rules[0].serve"),
        (
            {"rules": [{"id": "r", "serve": "on"}, {"id": "s", "rollout": {"off": 5000, "purple": 5000}}]},
            "rules[1].rollout",
        ),
        ({"rollout": {"off": 5000, "purple": 5000}}, "rollout"),
    ],
)
def test_naming_a_variant_the_flag_lacks_raises_invalid_reference(store: Store, flag: Record, field: str) -> None:
    environments(store, "production")
    with pytest.raises(InvalidReference) as info:
        store.create_flag("production", {"key": "f", **flag}, actor="alice")
    assert info.value.field == field
    store.create_flag("production", {"key": "f"}, actor="alice")
    with pytest.raises(InvalidReference) as info:
        store.update_flag("production", "f", flag, expected_version=1, actor="alice")
    assert info.value.field == field


# flags: update and delete


def test_update_flag_adds_1_to_the_version_and_keeps_absent_fields(store: Store) -> None:
    populate(store)
    before = store.get_flag("production", "new-checkout")
    assert before is not None
    t0 = time.time()
    after = store.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=1, actor="bob")
    assert after["version"] == 2
    assert after["updated_at"] >= t0
    assert {k: v for k, v in after.items() if k not in ("rollout", "version", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("rollout", "version", "updated_at")
    }
    assert after["rollout"] == 50
    assert store.get_flag("production", "new-checkout") == after
    again = store.update_flag("production", "new-checkout", {}, expected_version=2, actor="bob")
    assert again["version"] == 3


def test_update_flag_with_a_stale_version_raises_version_conflict(store: Store) -> None:
    populate(store)
    store.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=1, actor="bob")
    with pytest.raises(VersionConflict) as info:
        store.update_flag("production", "new-checkout", {"rollout": 75}, expected_version=1, actor="carol")
    assert (info.value.kind, info.value.key, info.value.current_version) == ("flag", "new-checkout", 2)
    assert store.get_flag("production", "new-checkout")["rollout"] == 50  # type: ignore[index]


def test_update_or_delete_an_unknown_flag_raises_not_found(store: Store) -> None:
    environments(store, "production")
    with pytest.raises(NotFound) as info:
        store.update_flag("production", "nope", {"rollout": 5}, expected_version=1, actor="bob")
    assert (info.value.kind, info.value.key) == ("flag", "nope")
    with pytest.raises(NotFound) as info:
        store.delete_flag("production", "nope", expected_version=None, actor="bob")
    assert (info.value.kind, info.value.key) == ("flag", "nope")


def test_changing_environment_fields_leaves_other_environments_alone(store: Store) -> None:
    populate(store)
    staging_before = store.list_flags("staging")
    versions = config_versions(store)
    store.update_flag("production", "new-checkout", {"enabled": False, "rules": []}, expected_version=1, actor="bob")
    assert store.list_flags("staging") == staging_before
    assert config_versions(store)["staging"] == versions["staging"]
    assert config_versions(store)["production"] > versions["production"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "Changed"),
        ("tags", ["other"]),
        ("owner", "growth"),
        ("variants", ["off", "on", "holdout"]),
        ("salt", "shared-salt"),
        ("bucket_by", "account_id"),
        ("hash_version", 2),
    ],
)
def test_changing_a_global_field_bumps_the_flag_everywhere(store: Store, field: str, value: Any) -> None:
    populate(store)
    environments(store, "qa")
    others_before = {env: store.get_flag(env, "new-checkout") for env in ("staging", "qa")}
    versions = config_versions(store)
    after = store.update_flag("production", "new-checkout", {field: value}, expected_version=1, actor="bob")
    assert after[field] == value and after["version"] == 2
    for env, before in others_before.items():
        now = store.get_flag(env, "new-checkout")
        assert before is not None and now is not None
        assert now[field] == value
        assert now["version"] == before["version"] + 1
        assert {k: now[k] for k in ENV_FLAG_FIELDS} == {k: before[k] for k in ENV_FLAG_FIELDS}
    assert all(config_versions(store)[env] > v for env, v in versions.items())


def test_removing_a_variant_another_environment_uses_raises_invalid_reference(store: Store) -> None:
    populate(store)
    store.update_flag(
        "staging", "checkout-layout", {"rollout": {"control": 5000, "blue": 5000}}, expected_version=1, actor="bob"
    )
    # production serves green and weights all three; dropping blue breaks staging only.
    production_change = {
        "variants": ["control", "green"],
        "rollout": {"control": 5000, "green": 5000},
    }
    with pytest.raises(InvalidReference) as info:
        store.update_flag("production", "checkout-layout", production_change, expected_version=1, actor="bob")
    assert info.value.field == "variants"
    assert "staging" in info.value.message
    store.update_flag("staging", "checkout-layout", {"rollout": {"control": 10000}}, expected_version=2, actor="bob")
    after = store.update_flag("production", "checkout-layout", production_change, expected_version=1, actor="bob")
    assert after["variants"] == ["control", "green"]


def test_delete_flag_removes_it_from_every_environment(store: Store) -> None:
    populate(store)
    versions = config_versions(store)
    store.delete_flag("production", "new-checkout", expected_version=1, actor="bob")
    for env in ("production", "staging"):
        assert store.get_flag(env, "new-checkout") is None
        assert [f["key"] for f in store.list_flags(env)] == ["checkout-layout"]
        assert "new-checkout" not in store.config_document(env)["flags"]
    assert all(config_versions(store)[env] > v for env, v in versions.items())
    store.create_flag("staging", {"key": "new-checkout"}, actor="bob")  # the key is free again
    assert store.get_flag("production", "new-checkout")["version"] == 1  # type: ignore[index]


def test_delete_flag_compares_the_version_in_its_environment(store: Store) -> None:
    populate(store)
    store.update_flag("staging", "new-checkout", {"rollout": 5}, expected_version=1, actor="bob")
    with pytest.raises(VersionConflict) as info:
        store.delete_flag("staging", "new-checkout", expected_version=1, actor="bob")
    assert info.value.current_version == 2
    store.delete_flag("production", "new-checkout", expected_version=1, actor="bob")
    assert store.get_flag("staging", "new-checkout") is None


def test_delete_flag_without_an_expected_version_is_unconditional(store: Store) -> None:
    populate(store)
    store.update_flag("production", "new-checkout", {"rollout": 5}, expected_version=1, actor="bob")
    store.delete_flag("production", "new-checkout", expected_version=None, actor="bob")
    assert store.get_flag("production", "new-checkout") is None


def test_records_are_copies_in_both_directions(store: Store) -> None:
    environments(store, "production")
    store.create_segment("production", INTERNAL, actor="setup")
    given = copy.deepcopy(LAYOUT)
    record = store.create_flag("production", given, actor="alice")
    assert given == LAYOUT  # the caller's dict is not changed
    given["rules"].append({"id": "late", "serve": "blue"})
    given["variants"].append("late")
    record["rules"].clear()
    record["variants"].append("mutated")
    stored = store.get_flag("production", "checkout-layout")
    assert stored is not None
    assert stored["rules"] == LAYOUT["rules"] and stored["variants"] == LAYOUT["variants"]


# segments


def test_create_segment_fills_in_the_defaults(store: Store) -> None:
    environments(store, "production")
    t0 = time.time()
    record = store.create_segment("production", {"key": "plain"}, actor="alice")
    assert t0 <= record.pop("updated_at") <= time.time()
    assert record == {
        "key": "plain",
        "description": "",
        "included": [],
        "excluded": [],
        "conditions": [],
        "percentage": None,
        "bucket_by": "key",
        "version": 1,
    }


def test_create_segment_keeps_its_fields_in_its_environment_only(store: Store) -> None:
    environments(store, "production", "staging")
    given = {**INTERNAL, "included": ["u1"], "excluded": ["u2"], "percentage": 12.5, "bucket_by": "account_id"}
    record = store.create_segment("production", given, actor="alice")
    assert set(record) == SEGMENT_KEYS
    assert {k: record[k] for k in given} == given
    assert record["version"] == 1
    assert store.get_segment("production", "internal") == record
    assert store.list_segments("production") == [record]
    assert store.get_segment("staging", "internal") is None


def test_segments_are_listed_by_key(store: Store) -> None:
    environments(store, "production")
    for key in ("m", "z", "a"):
        store.create_segment("production", {"key": key}, actor="alice")
    assert [s["key"] for s in store.list_segments("production")] == ["a", "m", "z"]


def test_creating_an_existing_segment_raises_already_exists(store: Store) -> None:
    environments(store, "production", "staging")
    store.create_segment("production", INTERNAL, actor="alice")
    with pytest.raises(AlreadyExists) as info:
        store.create_segment("production", {"key": "internal"}, actor="alice")
    assert (info.value.kind, info.value.key) == ("segment", "internal")
    store.create_segment("staging", {"key": "internal"}, actor="alice")  # per environment


def test_update_segment_adds_1_to_the_version_and_keeps_absent_fields(store: Store) -> None:
    environments(store, "production")
    before = store.create_segment("production", INTERNAL, actor="alice")
    after = store.update_segment("production", "internal", {"percentage": 10}, expected_version=1, actor="bob")
    assert after["version"] == 2 and after["percentage"] == 10
    assert {k: after[k] for k in ("description", "conditions", "included")} == {
        k: before[k] for k in ("description", "conditions", "included")
    }
    assert store.get_segment("production", "internal") == after
    with pytest.raises(VersionConflict) as info:
        store.update_segment("production", "internal", {"percentage": 20}, expected_version=1, actor="carol")
    assert (info.value.kind, info.value.key, info.value.current_version) == ("segment", "internal", 2)


def test_update_or_delete_an_unknown_segment_raises_not_found(store: Store) -> None:
    environments(store, "production")
    with pytest.raises(NotFound) as info:
        store.update_segment("production", "nope", {}, expected_version=1, actor="bob")
    assert (info.value.kind, info.value.key) == ("segment", "nope")
    with pytest.raises(NotFound) as info:
        store.delete_segment("production", "nope", expected_version=None, actor="bob")
    assert (info.value.kind, info.value.key) == ("segment", "nope")


def test_deleting_a_segment_a_rule_uses_raises_invalid_reference(store: Store) -> None:
    populate(store)
    with pytest.raises(InvalidReference) as info:
        store.delete_segment("production", "beta-testers", expected_version=1, actor="bob")
    assert info.value.field == "key"
    assert "new-checkout" in info.value.message
    store.update_flag("production", "new-checkout", {"rules": CHECKOUT["rules"][:1]}, expected_version=1, actor="bob")
    store.delete_segment("production", "beta-testers", expected_version=1, actor="bob")
    assert store.get_segment("production", "beta-testers") is None


def test_a_segment_used_in_another_environment_only_can_be_deleted(store: Store) -> None:
    populate(store)  # rules name internal in production; staging has internal too
    store.delete_segment("staging", "internal", expected_version=None, actor="bob")
    assert store.get_segment("staging", "internal") is None
    assert store.get_segment("production", "internal") is not None


def test_delete_segment_compares_versions_unless_none(store: Store) -> None:
    environments(store, "production")
    store.create_segment("production", {"key": "a"}, actor="alice")
    store.create_segment("production", {"key": "b"}, actor="alice")
    store.update_segment("production", "a", {"included": ["x"]}, expected_version=1, actor="alice")
    with pytest.raises(VersionConflict) as info:
        store.delete_segment("production", "a", expected_version=1, actor="bob")
    assert info.value.current_version == 2
    store.delete_segment("production", "a", expected_version=2, actor="bob")
    store.delete_segment("production", "b", expected_version=None, actor="bob")
    assert store.list_segments("production") == []


# writes in an unknown environment


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.create_flag("nope", {"key": "f"}, actor="x"),
        lambda s: s.update_flag("nope", "new-checkout", {}, expected_version=1, actor="x"),
        lambda s: s.delete_flag("nope", "new-checkout", expected_version=None, actor="x"),
        lambda s: s.create_segment("nope", {"key": "s"}, actor="x"),
        lambda s: s.update_segment("nope", "internal", {}, expected_version=1, actor="x"),
        lambda s: s.delete_segment("nope", "internal", expected_version=None, actor="x"),
        lambda s: s.create_token({"id": "t", "name": "t", "kind": "sdk", "environment": "nope"}, "h", actor="x"),
    ],
    ids=[
        "create_flag",
        "update_flag",
        "delete_flag",
        "create_segment",
        "update_segment",
        "delete_segment",
        "create_token",
    ],
)
def test_writes_in_an_unknown_environment_raise_not_found_and_change_nothing(
    store: Store, write: Callable[[Store], object]
) -> None:
    populate(store)
    before = snapshot(store)
    with pytest.raises(NotFound) as info:
        write(store)
    assert (info.value.kind, info.value.key) == ("environment", "nope")
    assert snapshot(store) == before


# the SDK's view


def test_config_document_is_designs_document_and_parses_cleanly(store: Store) -> None:
    populate(store)
    for env in ("production", "staging"):
        document = store.config_document(env)
        assert set(document) == {"environment", "version", "segments", "flags"}
        assert document["environment"] == env
        assert document["version"] == store.config_version(env)
        config = Config.from_dict(document)
        assert config.invalid_flags == {} and config.invalid_segments == {}
        assert set(config.flags) == {"new-checkout", "checkout-layout"}
    document = store.config_document("production")
    assert set(document["segments"]) == {"internal", "beta-testers"}
    assert document["segments"]["beta-testers"] == {"included": ["user-1", "user-2"]}
    assert document["flags"]["new-checkout"] == {
        "enabled": True,
        "salt": "new-checkout",
        "bucket_by": "key",
        "variants": ["off", "on"],
        "rules": CHECKOUT["rules"],
        "rollout": 25,
        "hash_version": 1,
        "version": 1,
    }
    assert set(store.config_document("staging")["segments"]) == {"internal"}


WRITES: list[tuple[str, Callable[[Store], object], set[str]]] = [
    ("create_environment", lambda s: s.create_environment("qa", "QA", actor="x"), set()),
    ("create_flag", lambda s: s.create_flag("staging", {"key": "f"}, actor="x"), {"production", "staging"}),
    (
        "update_flag (environment fields)",
        lambda s: s.update_flag("staging", "new-checkout", {"enabled": True}, expected_version=1, actor="x"),
        {"staging"},
    ),
    (
        "update_flag (global field)",
        lambda s: s.update_flag("staging", "new-checkout", {"owner": "y"}, expected_version=1, actor="x"),
        {"production", "staging"},
    ),
    (
        "delete_flag",
        lambda s: s.delete_flag("staging", "new-checkout", expected_version=None, actor="x"),
        {"production", "staging"},
    ),
    ("create_segment", lambda s: s.create_segment("staging", {"key": "s"}, actor="x"), {"staging"}),
    (
        "update_segment",
        lambda s: s.update_segment("production", "internal", {"percentage": 5}, expected_version=1, actor="x"),
        {"production"},
    ),
    (
        "delete_segment",
        lambda s: s.delete_segment("staging", "internal", expected_version=1, actor="x"),
        {"staging"},
    ),
    (
        "create_token",
        lambda s: s.create_token({"id": "t2", "name": "t", "kind": "sdk", "environment": "staging"}, "h", actor="x"),
        set(),
    ),
    ("delete_token", lambda s: s.delete_token("tok1", actor="x"), set()),
]


@pytest.mark.parametrize(("write", "bumped"), [w[1:] for w in WRITES], ids=[w[0] for w in WRITES])
def test_config_version_grows_exactly_where_the_document_changes(
    store: Store, write: Callable[[Store], object], bumped: set[str]
) -> None:
    populate(store)
    versions = config_versions(store)
    documents = {env: store.config_document(env) for env in versions}
    write(store)
    for env, version in versions.items():
        document = store.config_document(env)
        if env in bumped:
            assert store.config_version(env) > version, env
            assert document["version"] == store.config_version(env)
            assert {**document, "version": 0} != {**documents[env], "version": 0}, env
        else:
            assert store.config_version(env) == version, env
            assert document == documents[env], env


def test_reads_do_not_change_config_versions(store: Store) -> None:
    populate(store)
    versions = config_versions(store)
    snapshot(store)
    store.list_audit(environment="production")
    assert config_versions(store) == versions


# tokens


def test_tokens_are_stored_with_their_hash_only(store: Store) -> None:
    environments(store, "production")
    t0 = time.time()
    sdk = store.create_token(
        {"id": "abc", "name": "web", "kind": "sdk", "environment": "production"}, "hash-1", actor="alice"
    )
    admin = store.create_token(
        {"id": "def", "name": "ops", "kind": "admin", "environment": None}, "hash-2", actor="alice"
    )
    assert set(sdk) == TOKEN_KEYS and set(admin) == TOKEN_KEYS
    assert (sdk["id"], sdk["name"], sdk["kind"], sdk["environment"]) == ("abc", "web", "sdk", "production")
    assert (admin["kind"], admin["environment"]) == ("admin", None)
    assert t0 <= sdk["created_at"] <= admin["created_at"] <= time.time()
    assert store.find_token("abc") == (sdk, "hash-1")
    assert store.find_token("def") == (admin, "hash-2")
    assert store.find_token("nope") is None
    assert store.list_tokens() == [sdk, admin]
    assert "hash-1" not in repr(store.list_audit()) and "hash-2" not in repr(store.list_audit())


def test_tokens_are_listed_by_id(store: Store) -> None:
    for token_id in ("zz", "aa", "mm"):
        store.create_token({"id": token_id, "name": token_id, "kind": "admin", "environment": None}, "h", actor="a")
    assert [t["id"] for t in store.list_tokens()] == ["aa", "mm", "zz"]


def test_token_errors(store: Store) -> None:
    store.create_token({"id": "abc", "name": "ops", "kind": "admin", "environment": None}, "hash-1", actor="alice")
    with pytest.raises(AlreadyExists) as info:
        store.create_token({"id": "abc", "name": "other", "kind": "admin", "environment": None}, "hash-2", actor="a")
    assert (info.value.kind, info.value.key) == ("token", "abc")
    assert store.find_token("abc")[1] == "hash-1"  # type: ignore[index]
    store.delete_token("abc", actor="alice")
    assert store.find_token("abc") is None and store.list_tokens() == []
    with pytest.raises(NotFound) as not_found:
        store.delete_token("abc", actor="alice")
    assert (not_found.value.kind, not_found.value.key) == ("token", "abc")


# audit


def test_every_write_appends_one_audit_entry_with_before_and_after(store: Store) -> None:
    def check(action: str, env: str | None, target: tuple[str, str], before: Any, after: Any, actor: str) -> Record:
        entry = newest_audit(store)
        assert set(entry) == AUDIT_KEYS
        assert entry["action"] == action
        assert (entry["environment"], entry["target_type"], entry["target_key"]) == (env, *target)
        assert (entry["before"], entry["after"], entry["actor"]) == (before, after, actor)
        assert t0 <= entry["at"] <= time.time()
        return entry

    t0 = time.time()
    ids = []
    env = store.create_environment("production", "Production", actor="a1")
    ids.append(check("create", "production", ("environment", "production"), None, env, "a1")["id"])
    seg = store.create_segment("production", INTERNAL, actor="a2")
    ids.append(check("create", "production", ("segment", "internal"), None, seg, "a2")["id"])
    seg2 = store.update_segment("production", "internal", {"percentage": 5}, expected_version=1, actor="a3")
    ids.append(check("update", "production", ("segment", "internal"), seg, seg2, "a3")["id"])
    flag_rules = {"key": "f", "rules": [{"id": "r", "segments": ["internal"], "serve": "on"}]}
    flag = store.create_flag("production", flag_rules, actor="a4")
    ids.append(check("create", "production", ("flag", "f"), None, flag, "a4")["id"])
    flag2 = store.update_flag("production", "f", {"rules": [], "tags": ["t"]}, expected_version=1, actor="a5")
    ids.append(check("update", "production", ("flag", "f"), flag, flag2, "a5")["id"])
    store.delete_flag("production", "f", expected_version=2, actor="a6")
    ids.append(check("delete", "production", ("flag", "f"), flag2, None, "a6")["id"])
    store.delete_segment("production", "internal", expected_version=2, actor="a7")
    ids.append(check("delete", "production", ("segment", "internal"), seg2, None, "a7")["id"])
    token = store.create_token({"id": "t", "name": "n", "kind": "sdk", "environment": "production"}, "h", actor="a8")
    ids.append(check("create", "production", ("token", "t"), None, token, "a8")["id"])
    store.delete_token("t", actor="a9")
    ids.append(check("delete", "production", ("token", "t"), token, None, "a9")["id"])
    admin = store.create_token({"id": "u", "name": "n", "kind": "admin", "environment": None}, "h", actor="a10")
    ids.append(check("create", None, ("token", "u"), None, admin, "a10")["id"])
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["id"] for e in store.list_audit()] == ids[::-1]


def test_list_audit_filters_by_environment_and_target_key(store: Store) -> None:
    populate(store)
    store.update_flag("staging", "new-checkout", {"enabled": True}, expected_version=1, actor="bob")
    everything = store.list_audit(limit=1000)
    staging = store.list_audit(environment="staging", limit=1000)
    assert staging == [e for e in everything if e["environment"] == "staging"] and len(staging) == 3
    checkout = store.list_audit(target_key="new-checkout", limit=1000)
    assert checkout == [e for e in everything if e["target_key"] == "new-checkout"] and len(checkout) == 2
    both = store.list_audit(environment="staging", target_key="new-checkout")
    assert [e["action"] for e in both] == ["update"]
    assert store.list_audit(environment="nope") == [] and store.list_audit(target_key="nope") == []


def test_list_audit_pages_with_limit_and_before_id(store: Store) -> None:
    environments(store, "production")
    for i in range(12):
        store.create_segment("production", {"key": f"s{i:02d}"}, actor="alice")
    everything = store.list_audit(limit=1000)
    assert len(everything) == 13
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)
    pages, before_id = [], None
    while True:
        page = store.list_audit(limit=5, before_id=before_id)
        if not page:
            break
        assert len(page) <= 5
        pages.append(page)
        before_id = page[-1]["id"]
    assert [len(p) for p in pages] == [5, 5, 3]
    assert [e for p in pages for e in p] == everything
    filtered = store.list_audit(environment="production", limit=2, before_id=ids[3])
    assert [e["id"] for e in filtered] == ids[4:6]
    assert store.list_audit(target_key="s05", before_id=ids[0]) == [e for e in everything if e["target_key"] == "s05"]
    assert store.list_audit(limit=100, before_id=min(ids)) == []


# atomicity: a refused write changes nothing, config versions and audit included

FAILING: list[tuple[str, Callable[[Store], object], type[Exception], dict[str, Any]]] = [
    (
        "update_flag stale",
        lambda s: s.update_flag("production", "new-checkout", {"rollout": 5}, expected_version=7, actor="x"),
        VersionConflict,
        {"current_version": 1},
    ),
    (
        "update_flag stale global",
        lambda s: s.update_flag("production", "new-checkout", {"owner": "y"}, expected_version=7, actor="x"),
        VersionConflict,
        {"current_version": 1},
    ),
    (
        "delete_flag stale",
        lambda s: s.delete_flag("production", "new-checkout", expected_version=7, actor="x"),
        VersionConflict,
        {"current_version": 1},
    ),
    (
        "update_segment stale",
        lambda s: s.update_segment("production", "internal", {"percentage": 1}, expected_version=7, actor="x"),
        VersionConflict,
        {"current_version": 1},
    ),
    (
        "delete_segment stale",
        lambda s: s.delete_segment("staging", "internal", expected_version=7, actor="x"),
        VersionConflict,
        {"current_version": 1},
    ),
    (
        "create_flag missing segment",
        lambda s: s.create_flag("staging", {**CHECKOUT, "key": "other"}, actor="x"),
        InvalidReference,
        {"field": "rules[1].segments"},
    ),
    (
        "update_flag missing segment with a global change",
        lambda s: s.update_flag(
            "staging",
            "new-checkout",
            {"description": "changed", "rules": [{"id": "a", "segments": ["internal", "beta-testers"], "serve": "on"}]},
            expected_version=1,
            actor="x",
        ),
        InvalidReference,
        {"field": "rules[0].segments"},
    ),
    (
        "update_flag removing a used variant",
        lambda s: s.update_flag(
            "staging", "checkout-layout", {"variants": ["control", "blue"]}, expected_version=1, actor="x"
        ),
        InvalidReference,
        {"field": "variants"},
    ),
    (
        "delete_segment in use",
        lambda s: s.delete_segment("production", "internal", expected_version=1, actor="x"),
        InvalidReference,
        {"field": "key"},
    ),
    (
        "create_environment existing",
        lambda s: s.create_environment("staging", "Again", actor="x"),
        AlreadyExists,
        {"kind": "environment"},
    ),
    ("create_flag existing", lambda s: s.create_flag("staging", {"key": "new-checkout"}, actor="x"), AlreadyExists, {}),
    ("create_segment existing", lambda s: s.create_segment("production", BETA, actor="x"), AlreadyExists, {}),
    (
        "create_token existing",
        lambda s: s.create_token({"id": "tok1", "name": "n", "kind": "admin", "environment": None}, "h2", actor="x"),
        AlreadyExists,
        {"kind": "token"},
    ),
    ("delete_token unknown", lambda s: s.delete_token("nope", actor="x"), NotFound, {"kind": "token"}),
]


@pytest.mark.parametrize(("write", "error", "attributes"), [f[1:] for f in FAILING], ids=[f[0] for f in FAILING])
def test_a_refused_write_changes_nothing(
    store: Store, write: Callable[[Store], object], error: type[Exception], attributes: dict[str, Any]
) -> None:
    populate(store)
    before = snapshot(store)
    with pytest.raises(error) as info:
        write(store)
    for name, value in attributes.items():
        assert getattr(info.value, name) == value
    assert snapshot(store) == before


# concurrency


def test_racing_updates_with_the_same_expected_version_exactly_one_wins(store: Store) -> None:
    populate(store)
    for round_ in range(5):
        version = store.get_flag("production", "new-checkout")["version"]  # type: ignore[index]
        audit_before = audit_count(store)

        def update(i: int, version: int = version) -> Record:
            return store.update_flag(
                "production", "new-checkout", {"rollout": 10 * i + 1}, expected_version=version, actor=f"t{i}"
            )

        results = race(2, update)
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, VersionConflict)]
        assert len(winners) == 1 and len(losers) == 1, f"round {round_}: {results!r}"
        assert losers[0].current_version == version + 1
        stored = store.get_flag("production", "new-checkout")
        assert stored == winners[0] and stored["version"] == version + 1  # type: ignore[index]
        assert audit_count(store) == audit_before + 1


def test_racing_creates_of_one_key_exactly_one_wins(store: Store) -> None:
    environments(store, "production", "staging")
    for round_ in range(5):
        key = f"flag-{round_}"

        def create(i: int, key: str = key) -> Record:
            return store.create_flag("production", {"key": key, "owner": f"t{i}"}, actor="x")

        results = race(2, create)
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, AlreadyExists)]
        assert len(winners) == 1 and len(losers) == 1, f"round {round_}: {results!r}"
        assert store.get_flag("staging", key)["owner"] == winners[0]["owner"]  # type: ignore[index]


def test_concurrent_writes_to_different_flags_all_land(store: Store) -> None:
    environments(store, "production", "staging")
    for i in range(4):
        store.create_flag("production", {"key": f"f{i}"}, actor="setup")
    versions = config_versions(store)
    audit_before = audit_count(store)

    def work(i: int) -> int:
        for n in range(5):
            store.update_flag("production", f"f{i}", {"rollout": n + 1}, expected_version=n + 1, actor=f"t{i}")
        return i

    assert race(4, work) == [0, 1, 2, 3]
    assert [(f["version"], f["rollout"]) for f in store.list_flags("production")] == [(6, 5)] * 4
    assert config_versions(store)["production"] >= versions["production"] + 20
    assert config_versions(store)["staging"] == versions["staging"]
    assert audit_count(store) == audit_before + 20


# round trip of arbitrary wire data

_names = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=10)
_values = st.one_of(
    st.text(max_size=8), st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
_conditions = st.fixed_dictionaries(
    {
        "attribute": _names,
        "op": st.sampled_from(["in", "not_in", "starts_with", "contains", "lt", "gte", "semver_lt", "before"]),
        "values": st.lists(_values, max_size=4),
    },
    optional={"ignore_case": st.booleans(), "negate": st.booleans()},
)
_percentages = st.integers(0, 10_000).map(lambda n: n / 100 if n % 100 else n // 100)


@st.composite
def _weights(draw: st.DrawFn, variants: list[str]) -> dict[str, int]:
    order = draw(st.permutations(variants))
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=len(order) - 1, max_size=len(order) - 1)))
    bounds = [0, *cuts, 10_000]
    return {v: bounds[i + 1] - bounds[i] for i, v in enumerate(order)}


@st.composite
def _flags(draw: st.DrawFn) -> Record:
    variants = draw(st.lists(_names, min_size=2, max_size=4, unique=True))
    rollouts = st.one_of(_percentages, _weights(variants))
    rules = []
    for i in range(draw(st.integers(0, 3))):
        rule: Record = {"id": f"r{i}-{draw(_names)}"}
        segments = draw(st.lists(st.sampled_from(["internal", "beta-testers"]), max_size=2, unique=True))
        if segments:
            rule["segments"] = segments
        conditions = draw(st.lists(_conditions, max_size=2))
        if conditions:
            rule["conditions"] = conditions
        if draw(st.booleans()):
            rule["serve"] = draw(st.sampled_from(variants))
        else:
            rule["rollout"] = draw(rollouts)
        rules.append(rule)
    return {
        "description": draw(st.text(max_size=20)),
        "tags": draw(st.lists(_names, max_size=3)),
        "variants": variants,
        "enabled": draw(st.booleans()),
        "rules": rules,
        "rollout": draw(rollouts),
    }


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flag=_flags())
def test_any_wire_flag_round_trips_and_every_document_parses(store: Store, flag: Record) -> None:
    if store.get_environment("production") is None:
        environments(store, "production", "staging")
        for segment in (INTERNAL, BETA):
            store.create_segment("production", segment, actor="setup")
    key = f"flag-{uuid4().hex[:8]}"
    created = store.create_flag("production", {**flag, "key": key}, actor="prop")
    assert {k: created[k] for k in flag} == flag
    assert store.get_flag("production", key) == created
    for env in ("production", "staging"):
        config = Config.from_dict(store.config_document(env))
        assert config.invalid_flags == {} and config.invalid_segments == {}
    wire = store.config_document("production")["flags"][key]
    assert (wire["rules"], wire["rollout"], wire["variants"]) == (flag["rules"], flag["rollout"], flag["variants"])
    if isinstance(flag["rollout"], dict):
        assert list(wire["rollout"]) == list(flag["rollout"])  # declared order kept
