"""What only the Redis backend promises about events, stages and rollouts, beyond
the contract suites: a batch is one script that counts entirely or not at all
even when it fails half-way, no KEYS or SCAN, a fixed number of round trips
whatever the number of users, names that cannot be confused, exclusive leases
across connection pools, and StoreUnavailable from every method while Redis is
down."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flagserver.storage import NotFound, StoreUnavailable
from flagserver.storage import _redis_events as redis_events
from flagserver.storage.events import BATCH_ID_RETENTION, Conversion, EventStore, Exposure
from flagserver.storage.redis_store import RedisStore
from flagserver.storage.rollouts import RolloutStore
from tests.conftest import REDIS_URL

from .test_redis_specific import Recorder, RedisServer

pytestmark = pytest.mark.redis

T0 = 1_700_000_000.0
FLAG = "new-checkout"


def exposure(user: str, variant: str = "on", *, flag: str = FLAG, version: int = 1, at: float = T0,
             randomized: bool = True) -> Exposure:
    return Exposure(flag=flag, variant=variant, rule_id=None, reason="SPLIT" if randomized else "DEFAULT",
                    randomized=randomized, flag_version=version, user=user, at=at)


def conversion(user: str, event: str = "checkout", value: float | None = None, at: float = T0 + 1) -> Conversion:
    return Conversion(event=event, user=user, value=value, at=at)


def population(exposed: int, mixed: int = 0, **events: tuple[int, float]) -> dict[str, Any]:
    return {"exposed": exposed, "mixed": mixed,
            "events": {name: {"users": users, "value_sum": value_sum} for name, (users, value_sum) in events.items()}}


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client on the test database, to look at keys directly."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(make_store: Callable[..., RedisStore]) -> RedisStore:
    store = make_store()
    store.initialize()
    for env in ("production", "staging"):
        store.create_environment(env, env.capitalize(), actor="setup")
    store.create_flag("production", {"key": FLAG, "enabled": True, "rollout": 50}, actor="setup")
    return store


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under `prefix` with its whole content (the test's own prefix only)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}*", count=1000)):
        kind = client.type(key)
        out[key] = (client.hgetall(key) if kind == "hash" else client.lrange(key, 0, -1) if kind == "list"
                    else client.zrange(key, 0, -1, withscores=True) if kind == "zset" else client.get(key))
    return out


# all or nothing


def test_a_batch_whose_script_fails_half_way_leaves_no_trace(
        store: RedisStore, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given counts already there
    store.record_events("production", "batch-0001", [exposure("u1"), exposure("u2", "off")],
                        [conversion("u1", value=1.0)])
    before = snapshot(raw, prefix)
    # and a batch of 600 events whose 400th reaches Redis with a time Lua cannot read
    batch = [exposure(f"user-{i}", "on" if i % 2 else "off", at=T0 + i) for i in range(500)]
    conversions = [conversion(f"user-{i}", value=2.0, at=T0 + 600) for i in range(100)]
    real = redis_events.batch_events

    def corrupted(exposures: list[Exposure], conversions: list[Conversion]) -> list[list[Any]]:
        events = real(exposures, conversions)
        events[399][6] = "not-a-time"  # the exposure's `at`
        return events

    monkeypatch.setattr(redis_events, "batch_events", corrupted)

    # When it is recorded, Redis refuses it
    with pytest.raises(StoreUnavailable, match="bad exposure, event 400"):
        store.record_events("production", "batch-0002", batch, conversions)

    # Then not one key changed: no counter, no user, no name, no batch id
    assert snapshot(raw, prefix) == before
    monkeypatch.setattr(redis_events, "batch_events", real)
    assert store.record_events("production", "batch-0002", batch, conversions) is True
    assert store.stage_counts("production", FLAG, 1)["on"]["all"] == population(
        251, checkout=(51, 101.0))


def test_a_redis_error_raised_inside_the_script_leaves_no_trace(
        store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    # Given a names hash that is not a hash (damaged by hand): the script's first
    # lookup of a name fails inside Redis, after it has read users and stages
    store.record_events("production", "batch-0001", [exposure("u1")], [])
    names = f"{prefix}names:production"
    saved = raw.hgetall(names)
    raw.delete(names)
    raw.set(names, "damaged")
    before = snapshot(raw, prefix)

    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.record_events("production", "batch-0002", [exposure("u2", "off"), exposure("u3")],
                            [conversion("u1", value=4.0)])

    assert snapshot(raw, prefix) == before
    raw.delete(names)
    raw.hset(names, mapping=saved)
    assert store.record_events("production", "batch-0002", [exposure("u2", "off"), exposure("u3")],
                               [conversion("u1", value=4.0)]) is True
    assert store.stage_counts("production", FLAG, 1) == {
        "on": {"all": population(2, checkout=(1, 4.0)), "randomized": population(2, checkout=(1, 4.0))},
        "off": {"all": population(1), "randomized": population(1)},
    }


# commands and round trips


def every_new_call(store: RedisStore) -> dict[str, Callable[[], Any]]:
    """One call of each method of the EventStore and RolloutStore protocols."""
    plan = {"stages": [{"percentage": 5}]}
    return {
        "record_events": lambda: store.record_events(
            "production", "batch-0001", [exposure("u1"), exposure("u2", "off")], [conversion("u1", value=3.0)]),
        "list_stages": lambda: store.list_stages("production", FLAG),
        "stage_counts": lambda: store.stage_counts("production", FLAG, 1),
        "put_rollout": lambda: store.put_rollout("production", FLAG, plan, {"status": "running"},
                                                 expected_version=None, actor="a", action="rollout.start"),
        "get_rollout": lambda: store.get_rollout("production", FLAG),
        "list_rollouts": store.list_rollouts,
        "record_decision": lambda: store.record_decision("production", FLAG, {"action": "hold"}, replace_last=False),
        "list_decisions": lambda: store.list_decisions("production", FLAG),
        "acquire_lease": lambda: store.acquire_lease("controller", "me", 30),
        "release_lease": lambda: store.release_lease("controller", "me"),
    }


def protocol_methods() -> set[str]:
    return {name for protocol in (EventStore, RolloutStore)
            for name, _ in inspect.getmembers(protocol, inspect.isfunction) if not name.startswith("_")}


def test_no_keys_or_scan_command_is_ever_sent(make_store: Callable[..., RedisStore]) -> None:
    recorder = Recorder()
    store = make_store(connection_class=recorder.connection_class)
    store.initialize()
    store.create_environment("production", "Production", actor="a")
    store.create_flag("production", {"key": FLAG, "enabled": True, "rollout": 50}, actor="a")
    store.create_environment("staging", "Staging", actor="a")
    calls = every_new_call(store)
    assert set(calls) == protocol_methods()
    for call in calls.values():
        call()
    store.update_flag("production", FLAG, {"rollout": 75}, expected_version=1, actor="a")
    store.record_events("production", "batch-0002", [exposure("u1", version=2)], [conversion("u1", at=T0 + 9)])
    store.delete_flag("production", FLAG, expected_version=None, actor="a")
    store.record_events("production", "batch-0003", [], [conversion("u1", at=T0 + 10)])  # prunes u1's entries

    names = recorder.names()
    assert {"EVALSHA", "HGETALL", "UNLINK", "MULTI", "EXEC"} <= names  # the recorder sees everything
    assert not names & {"KEYS", "SCAN", "HSCAN", "SSCAN", "ZSCAN"}


def test_reads_and_batches_take_a_fixed_number_of_round_trips_however_many_users(
        make_store: Callable[..., RedisStore]) -> None:
    recorder = Recorder()
    store = make_store(connection_class=recorder.connection_class)
    store.create_environment("production", "Production", actor="a")
    store.create_flag("production", {"key": FLAG, "enabled": True, "rollout": 50}, actor="a")
    store.record_events("production", "warm-up-batch", [], [])  # loads the script once
    exposures = [exposure(f"user-{i:05d}", "on" if i % 3 else "off") for i in range(3_000)]
    conversions = [conversion(f"user-{i:05d}", "buy", value=1.5) for i in range(0, 3_000, 7)]

    recorder.reset()
    assert store.record_events("production", "big-batch", exposures, conversions) is True
    assert recorder.round_trips == 1 and [c[0] for c in recorder.commands] == ["EVALSHA"]

    recorder.reset()
    counts = store.stage_counts("production", FLAG, 1)
    assert recorder.round_trips == 2 and recorder.commands[-1][0] == "HGETALL"
    assert counts["on"]["all"]["exposed"] == 2_000 and counts["off"]["randomized"]["events"]["buy"]["users"] == 143

    recorder.reset()
    store.list_stages("production", FLAG)
    assert recorder.round_trips == 1


def test_each_exposed_user_is_one_field_not_one_key(store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    store.record_events("production", "batch-small", [exposure("u-0")], [])
    keys_before = len(list(raw.scan_iter(match=f"{prefix}*", count=1000)))

    store.record_events("production", "batch-large", [exposure(f"u-{i}") for i in range(1, 2_000)],
                        [conversion(f"u-{i}") for i in range(0, 2_000, 2)])

    # one new key: the second batch id
    assert len(list(raw.scan_iter(match=f"{prefix}*", count=1000))) == keys_before + 1
    assert raw.hlen(f"{prefix}exposed:production") == 2_000


def test_a_batch_id_is_kept_at_least_the_retention(store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    store.record_events("production", "batch-0001", [exposure("u1")], [])
    ttl = raw.ttl(f"{prefix}batch:10:production:batch-0001")
    assert BATCH_ID_RETENTION - 60 <= ttl <= BATCH_ID_RETENTION and BATCH_ID_RETENTION >= 7 * 24 * 3600


# names


def test_names_with_separators_and_unicode_are_counted_apart(store: RedisStore) -> None:
    # Variants, events and users holding the characters the layout uses (: ; ,),
    # NUL, and non-ASCII ones, whose byte length differs from their length in characters.
    store.create_flag("production", {"key": "odd", "variants": ["a", "a:1", "ä;b,c"], "enabled": True,
                                     "rollout": {"a": 3000, "a:1": 3000, "ä;b,c": 4000}}, actor="setup")
    users = ["u;1", "u,2", "ü:3\x00", "😀 4"]
    assert store.record_events("production", "batch-0001", [
        exposure(users[0], "a", flag="odd"), exposure(users[1], "a:1", flag="odd"),
        exposure(users[2], "ä;b,c", flag="odd"), exposure(users[3], "ä;b,c", flag="odd", randomized=False),
        exposure(users[3], "a", flag="odd", at=T0 + 0.5),
    ], [conversion(users[0], "1:a\x00😀"), conversion(users[1], "a", value=2.0),
        conversion(users[2], "ü;ß,", value=0.5), conversion(users[3], "ü;ß,", value=1.0),
        conversion(users[3], "ü;ß,", value=1.0)])

    odd = {"1:a\x00😀": (1, 0.0)}
    assert store.stage_counts("production", "odd", 1) == {
        "a": {"all": population(1, **odd), "randomized": population(1, **odd)},
        "a:1": {"all": population(1, a=(1, 2.0)), "randomized": population(1, a=(1, 2.0))},
        "ä;b,c": {"all": population(2, mixed=1, **{"ü;ß,": (2, 2.5)}),
                  "randomized": population(1, **{"ü;ß,": (1, 0.5)})},
    }


def test_environment_names_with_colons_keep_their_batch_ids_apart(store: RedisStore) -> None:
    # Without the length in batch keys, ("a", "b:batch-01") and ("a:b", "batch-01") would be one key.
    store.create_environment("a", "A", actor="setup")
    store.create_environment("a:b", "A:B", actor="setup")
    assert store.record_events("a", "b:batch-01", [exposure("u1")], []) is True
    assert store.record_events("a:b", "batch-01", [exposure("u2", "off")], []) is True
    assert store.record_events("a:b", "batch-01", [], []) is False
    assert store.stage_counts("a", FLAG, 1) == {"on": {"all": population(1), "randomized": population(1)}}
    assert store.stage_counts("a:b", FLAG, 1) == {"off": {"all": population(1), "randomized": population(1)}}


# deleted flags


def test_a_deleted_flags_entries_leave_the_user_when_the_user_is_next_counted(
        store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    store.create_flag("production", {"key": "other", "enabled": True, "rollout": 50}, actor="setup")
    store.record_events("production", "batch-0001", [exposure("u1"), exposure("u1", flag="other")], [])
    assert raw.hget(f"{prefix}exposed:production", "u1").count(";") == 1  # two stages

    store.delete_flag("production", FLAG, expected_version=None, actor="setup")
    store.delete_flag("production", "other", expected_version=None, actor="setup")
    # no counter of any stage survives the deletes
    assert not list(raw.scan_iter(match=f"{prefix}stage:[0-9]*", count=1000))
    store.record_events("production", "batch-0002", [], [conversion("u1", at=T0 + 5)])

    assert raw.hget(f"{prefix}exposed:production", "u1") is None


# migration


def test_initialize_gives_the_flags_of_a_layout_1_prefix_their_first_stage(
        store: RedisStore, raw: redis.Redis, prefix: str, make_store: Callable[..., RedisStore]) -> None:
    # Given a prefix as layout 1 left it: flags, no stages (one flag updated since)
    store.update_flag("production", FLAG, {"rollout": 80}, expected_version=1, actor="setup")
    updated_at = store.get_flag("production", FLAG)["updated_at"]  # type: ignore[index]
    for env in ("production", "staging"):
        raw.delete(f"{prefix}stages:{env}")
    raw.set(f"{prefix}schema", 1)

    # When two processes start at once
    stores = [make_store() for _ in range(2)]
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def start(s: RedisStore) -> None:
        barrier.wait()
        try:
            s.initialize()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then every flag has exactly its stage 1, from its current configuration
    assert errors == [] and raw.get(f"{prefix}schema") == "2"
    assert store.list_stages("production", FLAG) == [
        {"stage": 1, "start_version": 1, "started_at": updated_at, "rollout": 80, "enabled": True}]
    assert [(s["stage"], s["rollout"], s["enabled"]) for s in store.list_stages("staging", FLAG)] == [(1, 0, False)]
    assert store.record_events("production", "batch-0001", [exposure("u1", version=2)], []) is True
    assert store.stage_counts("production", FLAG, 1)["on"]["all"]["exposed"] == 1


# leases


def race_for_lease(stores: list[RedisStore], name: str) -> list[Any]:
    """Each store's `acquire_lease(name, holder-i)`, in threads released together."""
    barrier = threading.Barrier(len(stores), timeout=10)
    results: list[Any] = [None] * len(stores)

    def take(i: int) -> None:
        barrier.wait()
        results[i] = stores[i].acquire_lease(name, f"holder-{i}", 30)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a racer hung"
    return results


def test_many_stores_on_separate_pools_racing_for_a_lease_leave_exactly_one_holder(
        make_store: Callable[..., RedisStore], raw: redis.Redis, prefix: str) -> None:
    stores = [make_store() for _ in range(8)]
    for round_number in range(10):
        results = race_for_lease(stores, f"lease-{round_number}")
        assert results.count(True) == 1 and results.count(False) == len(stores) - 1, results
        winner = results.index(True)
        assert raw.get(f"{prefix}lease:lease-{round_number}").endswith(f" holder-{winner}")


def test_an_abandoned_lease_key_is_cleared_by_redis(store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    assert store.acquire_lease("controller", "a b", 30)  # a holder name with a space
    ttl_ms = raw.pttl(f"{prefix}lease:controller")
    assert 30_000 < ttl_ms <= 90_000
    assert store.acquire_lease("controller", "a", 30) is False
    store.release_lease("controller", "a b")
    assert raw.exists(f"{prefix}lease:controller") == 0


# outages


def test_every_new_method_raises_store_unavailable_while_redis_is_down() -> None:
    # Nothing listens on port 1: every connection is refused at once.
    store = RedisStore.from_url("redis://127.0.0.1:1/0", prefix="down:")
    try:
        calls = every_new_call(store)
        assert set(calls) == protocol_methods()
        for name, call in calls.items():
            try:
                call()
            except StoreUnavailable:
                continue
            pytest.fail(f"{name} did not raise StoreUnavailable")
    finally:
        store.close()


def test_after_a_restart_the_scripts_are_loaded_again_and_nothing_counted_was_lost(tmp_path: Path) -> None:
    # A restarted Redis has forgotten every script: EVALSHA answers NOSCRIPT, and
    # the store must load the script again rather than fail.
    server = RedisServer(tmp_path).start()
    store = RedisStore.from_url(server.url, prefix="restart:")
    try:
        store.initialize()
        store.create_environment("production", "Production", actor="a")
        store.create_flag("production", {"key": FLAG, "enabled": True, "rollout": 50}, actor="a")
        store.put_rollout("production", FLAG, {"stages": []}, {}, expected_version=None, actor="a", action="start")
        assert store.record_events("production", "batch-0001", [exposure("u1")], []) is True
        assert store.acquire_lease("controller", "a", 30) is True
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.record_events("production", "batch-0002", [exposure("u2")], [])
        server.start()

        assert store.record_events("production", "batch-0002", [exposure("u2", "off")], [conversion("u1")]) is True
        assert store.record_events("production", "batch-0001", [exposure("u3")], []) is False  # still remembered
        store.record_decision("production", FLAG, {"action": "hold"}, replace_last=True)
        assert store.acquire_lease("controller", "b", 30) is False  # a's lease survived the restart
        assert store.stage_counts("production", FLAG, 1) == {
            "on": {"all": population(1, checkout=(1, 0.0)), "randomized": population(1, checkout=(1, 0.0))},
            "off": {"all": population(1), "randomized": population(1)},
        }
    finally:
        store.close()
        server.stop()


def test_not_found_is_not_confused_with_unavailable(store: RedisStore) -> None:
    with pytest.raises(NotFound):
        store.record_events("nowhere", "batch-0001", [exposure("u1")], [])
    with pytest.raises(NotFound):
        store.record_decision("production", FLAG, {"a": 1}, replace_last=False)
