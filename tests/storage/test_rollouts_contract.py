"""The rollouts contract (flagserver/storage/rollouts.py): plans and their state,
decisions, and the controller's lease, run against every backend.

Rules these tests pin (the protocol's docstring states them too):

- a rollout is created only when absent (`expected_version=None`, else
  AlreadyExists) and replaced only at its version (VersionConflict, or
  NotFound("rollout") when there is none); each write is audited (target_type
  "rollout", the action given, before and after) and bumps no config version;
- NotFound("environment") / NotFound("flag") for unknown ones, reads included;
- decisions: newest first, `replace_last` overwrites the newest (appends when
  there is none), at most DECISIONS_KEPT kept; NotFound("rollout") without one;
- deleting a flag deletes its rollout and decisions;
- a lease is held by one holder at a time until `expires_at` (exactly), renewed
  by its holder, taken over once expired, given up by `release_lease`.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Protocol

import pytest

from flagserver.storage import AlreadyExists, NotFound, Store, VersionConflict
from flagserver.storage.base import Record
from flagserver.storage.rollouts import DECISIONS_KEPT, RolloutStore

from .conftest import REDIS_URL

ROLLOUT_KEYS = {"environment", "flag", "plan", "state", "version", "updated_at"}
FLAG = "new-checkout"
PLAN: Record = {
    "stages": [{"percentage": 5, "min_soak_seconds": 3600, "min_exposures_per_arm": 500},
               {"percentage": 25, "min_soak_seconds": 3600, "min_exposures_per_arm": 500}],
    "guardrails": [{"event": "checkout", "kind": "conversion", "max_relative_drop": 0.05}],
    "mode": "automatic",
    "interval_seconds": 300,
}
STATE: Record = {"status": "running", "stage_index": 0, "stage_started_at": 1_700_000_000.0}


class Backend(Store, RolloutStore, Protocol):
    pass


def given_flags(store: Backend, *keys: str) -> None:
    for env in ("production", "staging"):
        store.create_environment(env, env.capitalize(), actor="setup")
    for key in keys or (FLAG,):
        store.create_flag("production", {"key": key, "enabled": True, "rollout": 5}, actor="setup")


def start(store: Backend, env: str = "production", flag: str = FLAG, **state: Any) -> Record:
    return store.put_rollout(env, flag, PLAN, {**STATE, **state}, expected_version=None, actor="controller",
                             action="rollout.start")


def decision(n: int, action: str = "hold") -> Record:
    return {"at": 1_700_000_000.0 + n, "action": action, "reason": f"decision {n}",
            "numbers": {"exposed": {"on": n, "off": 2 * n}}, "stage_index": 0, "key": f"d{n}"}


def twin(store: Backend) -> Any:
    """A second store object on the same data, as another process would open it."""
    from flagserver.storage.sqlite_store import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteStore(store.path)
    from flagserver.storage.redis_store import RedisStore

    assert isinstance(store, RedisStore)
    return RedisStore.from_url(REDIS_URL, prefix=store.prefix)


# rollouts


def test_a_rollout_is_created_once_and_read_back(store: Backend) -> None:
    given_flags(store)
    assert store.get_rollout("production", FLAG) is None

    t0 = time.time()
    created = start(store)
    t1 = time.time()

    assert set(created) == ROLLOUT_KEYS
    assert (created["environment"], created["flag"], created["version"]) == ("production", FLAG, 1)
    assert (created["plan"], created["state"]) == (PLAN, STATE)
    assert isinstance(created["updated_at"], float) and t0 <= created["updated_at"] <= t1
    assert store.get_rollout("production", FLAG) == created
    assert store.get_rollout("staging", FLAG) is None


def test_creating_an_existing_rollout_raises_already_exists_and_writes_nothing(store: Backend) -> None:
    given_flags(store)
    created = start(store)
    entries = len(store.list_audit(limit=1000))

    with pytest.raises(AlreadyExists) as info:
        start(store, stage_index=1)

    assert (info.value.kind, info.value.key) == ("rollout", FLAG)
    assert store.get_rollout("production", FLAG) == created
    assert len(store.list_audit(limit=1000)) == entries


def test_a_rollout_is_replaced_at_its_version_and_a_stale_version_conflicts(store: Backend) -> None:
    given_flags(store)
    start(store)
    promoted = store.put_rollout("production", FLAG, PLAN, {**STATE, "stage_index": 1}, expected_version=1,
                                 actor="controller", action="rollout.promote")
    assert (promoted["version"], promoted["state"]["stage_index"]) == (2, 1)
    assert store.get_rollout("production", FLAG) == promoted

    with pytest.raises(VersionConflict) as info:
        store.put_rollout("production", FLAG, PLAN, {**STATE, "status": "rolled_back"}, expected_version=1,
                          actor="someone", action="rollout.rollback")
    assert (info.value.kind, info.value.key, info.value.current_version) == ("rollout", FLAG, 2)
    assert store.get_rollout("production", FLAG) == promoted

    with pytest.raises(NotFound) as missing:
        store.put_rollout("staging", FLAG, PLAN, STATE, expected_version=1, actor="a", action="rollout.promote")
    assert (missing.value.kind, missing.value.key) == ("rollout", FLAG)
    assert store.get_rollout("staging", FLAG) is None


def test_every_rollout_write_is_audited_with_its_action_and_changes_no_config_version(store: Backend) -> None:
    given_flags(store)
    versions = {env: store.config_version(env) for env in ("production", "staging")}

    created = start(store)
    promoted = store.put_rollout("production", FLAG, PLAN, {**STATE, "stage_index": 1}, expected_version=1,
                                 actor="alice", action="rollout.approve")

    newest, older = store.list_audit(limit=2)
    assert (newest["actor"], newest["action"], newest["environment"], newest["target_type"],
            newest["target_key"]) == ("alice", "rollout.approve", "production", "rollout", FLAG)
    assert (newest["before"], newest["after"]) == (created, promoted)
    assert (older["actor"], older["action"], older["before"], older["after"]) == (
        "controller", "rollout.start", None, created)
    assert store.list_audit(target_key=FLAG, limit=1)[0]["id"] == newest["id"]
    assert {env: store.config_version(env) for env in versions} == versions


def test_rollout_records_are_copies(store: Backend) -> None:
    given_flags(store)
    plan, state = copy.deepcopy(PLAN), copy.deepcopy(STATE)
    created = store.put_rollout("production", FLAG, plan, state, expected_version=None, actor="a", action="x")

    plan["stages"].clear()
    state["status"] = "changed by the caller"
    created["plan"]["mode"] = "manual"
    store.get_rollout("production", FLAG)["state"]["stage_index"] = 9  # type: ignore[index]

    assert store.get_rollout("production", FLAG) == {**created, "plan": PLAN, "state": STATE}


def test_rollouts_raise_not_found_for_an_unknown_environment_or_flag(store: Backend) -> None:
    given_flags(store)
    calls = {
        "get_rollout": lambda env, flag: store.get_rollout(env, flag),
        "put_rollout": lambda env, flag: store.put_rollout(env, flag, PLAN, STATE, expected_version=None,
                                                           actor="a", action="rollout.start"),
        "record_decision": lambda env, flag: store.record_decision(env, flag, decision(1), replace_last=False),
        "list_decisions": lambda env, flag: store.list_decisions(env, flag),
    }
    for name, call in calls.items():
        with pytest.raises(NotFound) as info:
            call("nope", FLAG)
        assert info.value.kind == "environment", name
        with pytest.raises(NotFound) as info:
            call("production", "nope")
        assert info.value.kind == "flag", name
    with pytest.raises(NotFound) as info:
        store.list_rollouts("nope")
    assert info.value.kind == "environment"
    assert store.list_rollouts() == []


def test_rollouts_are_listed_by_environment_then_flag(store: Backend) -> None:
    given_flags(store, "b-flag", "a-flag", "c-flag")
    start(store, "staging", "a-flag")
    start(store, "production", "c-flag")
    start(store, "production", "a-flag")

    assert [(r["environment"], r["flag"]) for r in store.list_rollouts()] == [
        ("production", "a-flag"), ("production", "c-flag"), ("staging", "a-flag")]
    assert [r["flag"] for r in store.list_rollouts("production")] == ["a-flag", "c-flag"]
    assert store.list_rollouts("staging") == [store.get_rollout("staging", "a-flag")]


# decisions


def test_decisions_are_listed_newest_first_and_replace_last_overwrites_the_newest(store: Backend) -> None:
    given_flags(store)
    start(store)
    assert store.list_decisions("production", FLAG) == []

    store.record_decision("production", FLAG, decision(1), replace_last=True)  # none yet: appended
    store.record_decision("production", FLAG, decision(2, "promote"), replace_last=False)
    store.record_decision("production", FLAG, decision(3), replace_last=False)
    store.record_decision("production", FLAG, decision(4), replace_last=True)  # a hold updating its numbers

    assert store.list_decisions("production", FLAG) == [decision(4), decision(2, "promote"), decision(1)]
    assert store.list_decisions("production", FLAG, limit=2) == [decision(4), decision(2, "promote")]
    assert store.list_decisions("production", FLAG, limit=0) == []


def test_decisions_need_a_rollout_and_belong_to_theirs(store: Backend) -> None:
    given_flags(store, FLAG, "other")
    start(store)
    start(store, "production", "other")

    with pytest.raises(NotFound) as info:
        store.record_decision("staging", FLAG, decision(1), replace_last=False)
    assert (info.value.kind, info.value.key) == ("rollout", FLAG)
    store.record_decision("production", "other", decision(7), replace_last=False)
    store.record_decision("production", FLAG, decision(1), replace_last=True)  # not "other"'s newest

    assert store.list_decisions("production", FLAG) == [decision(1)]
    assert store.list_decisions("production", "other") == [decision(7)]
    assert store.list_decisions("staging", FLAG) == []


def test_decisions_keep_the_newest_thousand(store: Backend) -> None:
    given_flags(store)
    start(store)
    for n in range(1, DECISIONS_KEPT + 6):
        store.record_decision("production", FLAG, {"n": n}, replace_last=False)
    store.record_decision("production", FLAG, {"n": "last"}, replace_last=True)

    kept = store.list_decisions("production", FLAG, limit=5_000)

    assert DECISIONS_KEPT == 1_000 and len(kept) == DECISIONS_KEPT
    assert kept[0] == {"n": "last"}
    assert [d["n"] for d in kept[1:4]] == [DECISIONS_KEPT + 4, DECISIONS_KEPT + 3, DECISIONS_KEPT + 2]
    assert kept[-1] == {"n": 6}


def test_deleting_a_flag_deletes_its_rollout_and_decisions(store: Backend) -> None:
    given_flags(store)
    start(store)
    start(store, "staging")
    store.record_decision("production", FLAG, decision(1), replace_last=False)

    store.delete_flag("production", FLAG, expected_version=None, actor="setup")

    assert store.list_rollouts() == []
    store.create_flag("production", {"key": FLAG}, actor="setup")
    assert store.get_rollout("production", FLAG) is None
    assert store.list_decisions("production", FLAG) == []
    assert start(store)["version"] == 1


# the lease


def test_a_lease_has_one_holder_until_it_expires(store: Backend) -> None:
    now = 1_700_000_000.0
    assert store.acquire_lease("controller", "a", 10, now=now) is True
    assert store.acquire_lease("controller", "b", 10, now=now + 5) is False
    assert store.acquire_lease("controller", "a", 10, now=now + 5) is True  # renewed: until now + 15
    assert store.acquire_lease("controller", "b", 10, now=now + 14.9) is False
    assert store.acquire_lease("controller", "b", 10, now=now + 15) is True  # expired at exactly now + 15
    assert store.acquire_lease("controller", "a", 10, now=now + 16) is False
    assert store.acquire_lease("other-lease", "a", 10, now=now + 16) is True  # leases are independent


def test_releasing_frees_the_lease_only_for_its_holder(store: Backend) -> None:
    now = 1_700_000_000.0
    assert store.acquire_lease("controller", "a", 60, now=now)

    store.release_lease("controller", "b")  # not b's: nothing happens
    assert store.acquire_lease("controller", "b", 60, now=now + 1) is False

    store.release_lease("controller", "a")
    assert store.acquire_lease("controller", "b", 60, now=now + 1) is True
    store.release_lease("controller", "a")  # a holds it no more
    assert store.acquire_lease("controller", "a", 60, now=now + 2) is False
    store.release_lease("never-taken", "a")


def test_a_lease_refuses_a_ttl_that_is_not_positive(store: Backend) -> None:
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            store.acquire_lease("controller", "a", ttl, now=1_700_000_000.0)
    assert store.acquire_lease("controller", "b", 1, now=1_700_000_000.0) is True


def test_a_lease_is_exclusive_between_two_store_objects_on_the_same_data(store: Backend) -> None:
    other = twin(store)
    try:
        assert store.acquire_lease("controller", "process-1", 30) is True
        assert other.acquire_lease("controller", "process-2", 30) is False
        assert other.acquire_lease("controller", "process-1", 30) is True  # the same holder, anywhere
        store.release_lease("controller", "process-1")
        assert other.acquire_lease("controller", "process-2", 30) is True
        assert store.acquire_lease("controller", "process-1", 30) is False
    finally:
        other.close()


def race_for_lease(stores: list[Any], name: str) -> list[object]:
    """Each store's `acquire_lease(name, holder-i)`, in threads released together."""
    barrier = threading.Barrier(len(stores))
    results: list[object] = [None] * len(stores)

    def take(i: int) -> None:
        barrier.wait(timeout=10)
        results[i] = stores[i].acquire_lease(name, f"holder-{i}", 30)

    threads = [threading.Thread(target=take, args=(i,), name=f"lease-{i}") for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_two_holders_racing_for_a_free_lease_get_it_once(store: Backend) -> None:
    other = twin(store)
    try:
        for round_number in range(5):
            results = race_for_lease([store, other], f"lease-{round_number}")
            assert sorted(results, key=str) == [False, True], results
    finally:
        other.close()


def test_a_lease_expires_on_the_real_clock(store: Backend) -> None:
    assert store.acquire_lease("controller", "a", 0.05) is True
    assert store.acquire_lease("controller", "b", 30) is False
    deadline = time.monotonic() + 5
    while not store.acquire_lease("controller", "b", 30):  # polls until a's 50 ms run out
        assert time.monotonic() < deadline, "the lease never expired"
    assert store.acquire_lease("controller", "a", 30) is False
