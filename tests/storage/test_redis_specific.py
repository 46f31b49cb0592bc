"""What only the Redis backend promises, beyond the shared contract suite: no KEYS
or SCAN, one GET per config_version and one round trip per listing, a pub/sub
message per config change, exactly one winner when two processes race, and a
store that survives its Redis going away and coming back."""

from __future__ import annotations

import inspect
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.connection import Connection

from flagserver.storage import (
    AlreadyExists,
    InvalidReference,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from flagserver.storage import redis_store as redis_store_module
from flagserver.storage.redis_store import RedisStore
from tests.conftest import REDIS_URL
from tests.support import missing, wait_for

pytestmark = pytest.mark.redis

STORAGE_DIR = Path(redis_store_module.__file__).parent
FLAG = {"key": "new-checkout", "enabled": True, "rollout": 25}


class Recorder:
    """A connection class that remembers every command and every round trip."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []
        self.round_trips = 0
        recorder = self

        class RecordingConnection(Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                recorder.commands.append(tuple(_text(a) for a in args))
                super().send_command(*args, **kwargs)

            def pack_commands(self, commands: Any) -> Any:
                recorder.commands.extend(tuple(_text(a) for a in args) for args in commands)
                return super().pack_commands(commands)

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                recorder.round_trips += 1
                super().send_packed_command(command, check_health)

        self.connection_class = RecordingConnection

    def names(self) -> set[str]:
        return {c[0].upper() for c in self.commands}

    def reset(self) -> None:
        self.commands.clear()
        self.round_trips = 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def store(make_store: Callable[..., RedisStore]) -> RedisStore:
    store = make_store()
    store.initialize()
    for env in ("production", "staging"):
        store.create_environment(env, env.capitalize(), actor="setup")
    return store


def rendezvous_clock(barrier: threading.Barrier) -> Callable[[], float]:
    """A clock whose first reading waits for the other racer: the store reads the
    clock after it has read and checked the data, so both writers have planned
    on the same state before either commits."""
    first = [True]

    def clock() -> float:
        if first[0]:
            first[0] = False
            barrier.wait()
        return time.time()

    return clock


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` in threads at once; each result is a return value or the exception raised."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a racing write hung"
    return results


# KEYS, round trips, commands


def test_the_source_never_names_keys_or_scan() -> None:
    sources = [p for p in STORAGE_DIR.glob("*.py") if "redis" in p.name]
    assert {p.name for p in sources} >= {"redis_store.py", "_redis_keys.py", "_redis_scripts.py"}
    for path in sources:
        text = path.read_text()
        assert not re.search(r"""['"](KEYS|SCAN)\b""", text, re.IGNORECASE), path.name
        assert not re.search(r"\.(keys|scan|scan_iter)\(", text), path.name


def test_no_keys_or_scan_command_is_ever_sent(make_store: Callable[..., RedisStore]) -> None:
    recorder = Recorder()
    store = make_store(connection_class=recorder.connection_class)
    store.initialize()
    store.create_environment("production", "Production", actor="a")
    store.create_segment("production", {"key": "beta", "included": ["u1"]}, actor="a")
    store.create_flag("production", {**FLAG, "rules": [{"id": "r", "segments": ["beta"], "serve": "on"}]}, actor="a")
    store.create_environment("staging", "Staging", actor="a")
    store.update_flag("production", "new-checkout", {"description": "d"}, expected_version=1, actor="a")
    store.update_segment("production", "beta", {"included": ["u2"]}, expected_version=1, actor="a")
    with pytest.raises(InvalidReference):
        store.delete_segment("production", "beta", expected_version=None, actor="a")
    store.create_token({"id": "t1", "name": "n", "kind": "sdk", "environment": "production"}, "h", actor="a")
    for read in (store.list_environments, store.list_tokens, store.list_audit, store.ping):
        read()
    for env in ("production", "staging"):
        store.list_flags(env)
        store.list_segments(env)
        store.config_version(env)
        store.config_document(env)
        store.get_flag(env, "new-checkout")
        store.get_segment(env, "beta")
    store.list_audit(environment="production", target_key="beta", limit=1)
    store.find_token("t1")
    store.delete_token("t1", actor="a")
    store.delete_flag("production", "new-checkout", expected_version=2, actor="a")
    store.delete_segment("production", "beta", expected_version=2, actor="a")

    names = recorder.names()
    assert {"WATCH", "MULTI", "EXEC", "EVAL", "PUBLISH", "HGETALL"} <= names  # the recorder sees everything
    assert not names & {"KEYS", "SCAN", "HSCAN", "SSCAN", "ZSCAN"}


def test_config_version_is_one_get(make_store: Callable[..., RedisStore], prefix: str) -> None:
    recorder = Recorder()
    store = make_store(connection_class=recorder.connection_class)
    store.create_environment("production", "Production", actor="a")
    store.ping()  # the connection is made and handshaken before we count
    recorder.reset()

    assert store.config_version("production") == 1

    assert recorder.commands == [("GET", f"{prefix}cfgver:production")]
    assert recorder.round_trips == 1


def test_listings_take_one_round_trip_however_many_objects(make_store: Callable[..., RedisStore]) -> None:
    recorder = Recorder()
    store = make_store(connection_class=recorder.connection_class)
    store.create_environment("production", "Production", actor="a")
    for i in range(30):
        store.create_flag("production", {"key": f"flag-{i:02d}"}, actor="a")
        store.create_segment("production", {"key": f"segment-{i:02d}"}, actor="a")
    store.ping()

    for listing in (store.list_flags, store.list_segments, store.config_document):
        recorder.reset()
        listing("production")
        assert recorder.round_trips == 1, listing.__name__
    assert [f["key"] for f in store.list_flags("production")] == [f"flag-{i:02d}" for i in range(30)]


# transactions: the audit entry and the version bump go with the write, or nothing does


def test_refused_writes_change_nothing_and_leave_no_audit(store: RedisStore) -> None:
    store.create_flag("production", FLAG, actor="a")
    entries = len(store.list_audit(limit=1000))
    versions = {env: store.config_version(env) for env in ("production", "staging")}

    with pytest.raises(VersionConflict):
        store.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=7, actor="a")
    with pytest.raises(InvalidReference):
        store.update_flag(
            "production",
            "new-checkout",
            {"rules": [{"id": "r", "segments": ["nope"], "serve": "on"}]},
            expected_version=1,
            actor="a",
        )
    with pytest.raises(AlreadyExists):
        store.create_flag("staging", FLAG, actor="a")
    with pytest.raises(NotFound):
        store.create_segment("nowhere", {"key": "s"}, actor="a")

    assert len(store.list_audit(limit=1000)) == entries
    assert {env: store.config_version(env) for env in ("production", "staging")} == versions
    assert store.get_flag("production", "new-checkout")["rollout"] == 25  # type: ignore[index]


def test_audit_ids_have_no_gaps_under_concurrent_writers(make_store: Callable[..., RedisStore]) -> None:
    # Given two "processes" each writing to its own flag, many times over
    setup = make_store()
    setup.create_environment("production", "Production", actor="a")
    for key in ("a", "b"):
        setup.create_flag("production", {"key": key}, actor="a")

    def writer(key: str) -> Callable[[], None]:
        own = make_store()

        def run() -> None:
            for version in range(1, 21):
                own.update_flag("production", key, {"rollout": version}, expected_version=version, actor=key)

        return run

    # When they run at once
    assert race(writer("a"), writer("b")) == [None, None]

    # Then every write has exactly one audit entry, ids 1..n in commit order without gaps
    entries = setup.list_audit(limit=1000)
    assert [e["id"] for e in entries] == list(range(len(entries), 0, -1)) and len(entries) == 1 + 2 + 40
    assert setup.config_version("production") == 1 + 2 + 40


def test_audit_paging_with_both_filters_walks_past_other_environments(store: RedisStore) -> None:
    store.create_flag("production", FLAG, actor="a")
    for version in range(1, 301):  # many entries of the same key in the other environment
        store.update_flag("staging", "new-checkout", {"rollout": version % 100}, expected_version=version, actor="a")
    store.update_flag("production", "new-checkout", {"rollout": 30}, expected_version=1, actor="a")

    page = store.list_audit(environment="production", target_key="new-checkout", limit=2)

    assert [(e["action"], e["environment"]) for e in page] == [("update", "production"), ("create", "production")]
    assert store.list_audit(environment="production", target_key="new-checkout", before_id=page[1]["id"]) == []


# pub/sub


def test_every_config_change_publishes_the_environment(store: RedisStore) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(store.config_channel)
        received: list[str] = []

        def poll(count: int) -> list[str]:
            def enough() -> bool:
                message = pubsub.get_message(timeout=0.05)
                if message is not None and message["type"] == "message":
                    received.append(message["data"])
                return len(received) >= count

            wait_for(enough, 10, what=f"{count} messages on {store.config_channel}")
            out = received[:count]
            del received[:count]
            return out

        wait_for(
            lambda: (m := pubsub.get_message(timeout=0.05)) is not None and m["type"] == "subscribe", 10,
            what="the subscription",
        )

        store.create_flag("production", FLAG, actor="a")  # a new flag changes every environment
        assert sorted(poll(2)) == ["production", "staging"]
        store.update_flag("production", "new-checkout", {"enabled": False}, expected_version=1, actor="a")
        assert poll(1) == ["production"]
        # Writes that change no config document publish nothing: the next message is the segment's.
        store.create_token({"id": "t", "name": "n", "kind": "admin"}, "h", actor="a")
        with pytest.raises(VersionConflict):
            store.update_flag("staging", "new-checkout", {"enabled": True}, expected_version=9, actor="a")
        store.create_segment("staging", {"key": "beta"}, actor="a")
        assert poll(1) == ["staging"]
        store.create_environment("dev", "Dev", actor="a")
        assert poll(1) == ["dev"]
    finally:
        pubsub.close()
        client.close()


# races between processes (each store has its own connection pool)


def test_racing_updates_with_the_same_expected_version_exactly_one_wins(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    store.create_flag("production", FLAG, actor="setup")
    barrier = threading.Barrier(2, timeout=10)
    racers = [make_store(clock=rendezvous_clock(barrier)) for _ in range(2)]

    results = race(
        *[
            (
                lambda s=s, n=n: s.update_flag(
                    "production", "new-checkout", {"rollout": n}, expected_version=1, actor=f"racer-{n}"
                )
            )
            for s, n in zip(racers, (40, 60), strict=True)
        ]
    )

    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, VersionConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].current_version == 2
    assert store.get_flag("production", "new-checkout") == winners[0]
    updates = [e for e in store.list_audit(target_key="new-checkout") if e["action"] == "update"]
    assert [e["actor"] for e in updates] == [f"racer-{winners[0]['rollout']}"]


def test_racing_creates_of_the_same_flag_exactly_one_wins(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    barrier = threading.Barrier(2, timeout=10)
    racers = [make_store(clock=rendezvous_clock(barrier)) for _ in range(2)]

    results = race(
        *[
            (lambda s=s, e=e: s.create_flag(e, FLAG, actor=e))
            for s, e in zip(racers, ("production", "staging"), strict=True)
        ]
    )

    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "dict"], results
    winner = next(r for r in results if isinstance(r, dict))
    creates = store.list_audit(target_key="new-checkout")
    assert len(creates) == 1 and creates[0]["after"] == winner
    assert store.config_version("production") == store.config_version("staging") == 2


def test_a_segment_deleted_while_a_rule_starts_using_it_never_dangles(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    store.create_flag("production", FLAG, actor="setup")
    store.create_segment("production", {"key": "beta", "included": ["u1"]}, actor="setup")
    barrier = threading.Barrier(2, timeout=10)
    flag_writer, segment_deleter = (make_store(clock=rendezvous_clock(barrier)) for _ in range(2))
    rules = [{"id": "beta", "segments": ["beta"], "serve": "on"}]

    results = race(
        lambda: flag_writer.update_flag("production", "new-checkout", {"rules": rules}, expected_version=1, actor="a"),
        lambda: segment_deleter.delete_segment("production", "beta", expected_version=1, actor="b"),
    )

    refused = [r for r in results if isinstance(r, InvalidReference)]
    assert len(refused) == 1, results
    flag = store.get_flag("production", "new-checkout")
    segment = store.get_segment("production", "beta")
    assert flag is not None
    if segment is None:  # the delete won: the rule was refused
        assert flag["rules"] == [] and refused[0].field == "rules[0].segments"
    else:  # the rule won: the delete was refused
        assert flag["rules"] == rules and refused[0].field == "key"


# outages


def test_sockets_time_out_by_default_and_the_url_can_say_otherwise() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    tuned = RedisStore.from_url("redis://127.0.0.1:1/0?socket_timeout=5")
    try:
        options = store._redis.connection_pool.connection_kwargs
        assert (options["socket_connect_timeout"], options["socket_timeout"]) == (1.5, 2.0)
        assert tuned._redis.connection_pool.connection_kwargs["socket_timeout"] == 5.0
    finally:
        store.close()
        tuned.close()


def test_a_redis_that_never_answers_fails_the_call_quickly() -> None:
    # A listening socket nobody accepts from: connects succeed, replies never come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = RedisStore.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", socket_timeout=0.2)
        try:
            for name, call in {
                "config_version": lambda: store.config_version("production"),
                "list_flags": lambda: store.list_flags("production"),
                "update_flag": lambda: store.update_flag("production", "f", {}, expected_version=1, actor="a"),
            }.items():
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    call()
                # two attempts (one retry) of 0.2 s each, and slack for a busy machine
                assert time.monotonic() - started < 3, name
        finally:
            store.close()


def reply_lost_after_exec() -> type[Connection]:
    """A connection class that loses the reply to the first EXEC it sends, after
    Redis has applied it (a fresh class, so a fresh "first", per call)."""

    class ReplyLostAfterExec(Connection):
        armed = True
        sent_exec = False

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            packed = b"".join(command) if isinstance(command, list) else command
            if type(self).armed and b"EXEC\r\n" in packed:
                self.sent_exec = True
            super().send_packed_command(command, check_health)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            response = super().read_response(*args, **kwargs)
            if self.sent_exec and isinstance(response, list):  # EXEC's reply: the only array
                type(self).armed = self.sent_exec = False
                self.disconnect()
                raise redis.ConnectionError("connection lost reading the reply to EXEC")
            return response

    return ReplyLostAfterExec


def test_a_write_whose_exec_reply_is_lost_is_unavailable_not_a_conflict(
    store: RedisStore, make_store: Callable[..., RedisStore]
) -> None:
    store.create_flag("production", FLAG, actor="setup")
    flaky = make_store(connection_class=reply_lost_after_exec())

    # The write landed, but its writer cannot know: it must not claim a conflict with itself.
    with pytest.raises(StoreUnavailable, match="EXEC"):
        flaky.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=1, actor="a")

    flag = store.get_flag("production", "new-checkout")
    assert flag is not None and (flag["version"], flag["rollout"]) == (2, 50)
    assert [e["action"] for e in store.list_audit(target_key="new-checkout")] == ["update", "create"]
    # and the same object goes on working
    again = flaky.update_flag("production", "new-checkout", {"rollout": 60}, expected_version=2, actor="a")
    assert again["version"] == 3


class RedisServer:
    """A redis-server of the test's own, on a free port, with an append-only file in `directory`."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.options = options
        executable = shutil.which("redis-server")
        if executable is None:
            missing("redis-server is not on PATH (apt-get install redis-server)")
        self.executable = executable
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.directory),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, 10, what=f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"redis-server on port {self.port} exited with {self.process.returncode}")
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly, flushing its append-only file."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def every_call(store: RedisStore) -> dict[str, Callable[[], Any]]:
    """One call of each method of the Store protocol (close aside), events and rollouts included."""
    return {
        "initialize": store.initialize,
        "ping": store.ping,
        "list_environments": store.list_environments,
        "get_environment": lambda: store.get_environment("production"),
        "create_environment": lambda: store.create_environment("dev", "Dev", actor="a"),
        "list_flags": lambda: store.list_flags("production"),
        "get_flag": lambda: store.get_flag("production", "new-checkout"),
        "create_flag": lambda: store.create_flag("production", {"key": "other"}, actor="a"),
        "update_flag": lambda: store.update_flag("production", "new-checkout", {}, expected_version=2, actor="a"),
        "delete_flag": lambda: store.delete_flag("production", "new-checkout", expected_version=2, actor="a"),
        "list_segments": lambda: store.list_segments("production"),
        "get_segment": lambda: store.get_segment("production", "beta"),
        "create_segment": lambda: store.create_segment("production", {"key": "gamma"}, actor="a"),
        "update_segment": lambda: store.update_segment("production", "beta", {}, expected_version=1, actor="a"),
        "delete_segment": lambda: store.delete_segment("production", "beta", expected_version=1, actor="a"),
        "config_version": lambda: store.config_version("production"),
        "config_document": lambda: store.config_document("production"),
        "create_token": lambda: store.create_token({"id": "t2", "name": "n", "kind": "admin"}, "h", actor="a"),
        "find_token": lambda: store.find_token("t1"),
        "list_tokens": store.list_tokens,
        "delete_token": lambda: store.delete_token("t1", actor="a"),
        "list_audit": store.list_audit,
        # events and rollouts (EventStore, RolloutStore)
        "record_events": lambda: store.record_events("production", "batch-0001", [], []),
        "list_stages": lambda: store.list_stages("production", "new-checkout"),
        "stage_counts": lambda: store.stage_counts("production", "new-checkout", 1),
        "get_rollout": lambda: store.get_rollout("production", "new-checkout"),
        "put_rollout": lambda: store.put_rollout("production", "new-checkout", {"stages": []}, {},
                                                 expected_version=None, actor="a", action="rollout.start"),
        "list_rollouts": store.list_rollouts,
        "record_decision": lambda: store.record_decision("production", "new-checkout", {"action": "hold"},
                                                         replace_last=False),
        "list_decisions": lambda: store.list_decisions("production", "new-checkout"),
        "acquire_lease": lambda: store.acquire_lease("controller", "a", 30),
        "release_lease": lambda: store.release_lease("controller", "a"),
    }


def seed(store: RedisStore) -> None:
    store.initialize()
    store.create_environment("production", "Production", actor="a")
    store.create_segment("production", {"key": "beta"}, actor="a")
    store.create_flag("production", FLAG, actor="a")
    store.create_token({"id": "t1", "name": "n", "kind": "admin"}, "h", actor="a")
    store.update_flag("production", "new-checkout", {"rollout": 50}, expected_version=1, actor="a")


def test_while_redis_is_down_every_method_raises_store_unavailable_and_then_recovers(
    own_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(own_redis.url, prefix="outage:")
    try:
        seed(store)
        calls = every_call(store)
        protocol = {n for n, _ in inspect.getmembers(Store, inspect.isfunction) if not n.startswith("_")} - {"close"}
        assert set(calls) == protocol

        own_redis.stop()
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 5, f"{name} hung on a dead Redis"

        own_redis.start()
        # The same object, no polling: the first call after the restart succeeds,
        # and the write acknowledged before the outage survived it (append-only file).
        flag = store.get_flag("production", "new-checkout")
        assert flag is not None and (flag["version"], flag["rollout"]) == (2, 50)
        for name, call in every_call(store).items():
            try:
                call()
            except StoreUnavailable as exc:  # pragma: no cover - the failure message
                pytest.fail(f"{name} after the restart: {exc}")
            except StoreError:
                pass  # e.g. AlreadyExists from the second create: Redis answered
        assert store.get_flag("production", "other") is not None
    finally:
        store.close()


def test_pooled_connections_cut_by_a_restart_are_replaced_on_their_next_use(own_redis: RedisServer) -> None:
    store = RedisStore.from_url(own_redis.url, prefix="restart:")
    try:
        seed(store)
        # Given idle pooled connections that the restart will cut, nobody calling in between
        own_redis.stop()
        own_redis.start()
        # Then the next calls just work
        assert store.config_version("production") == 4
        store.update_flag("production", "new-checkout", {"rollout": 75}, expected_version=2, actor="a")
        assert store.config_document("production")["flags"]["new-checkout"]["rollout"] == 75
    finally:
        store.close()


def test_initialize_refuses_a_prefix_written_by_a_newer_layout(store: RedisStore, prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(f"{prefix}schema", 99)
    finally:
        client.close()
    with pytest.raises(StoreError, match="layout 99"):
        store.initialize()


@pytest.mark.parametrize(("policy", "warned"), [("allkeys-lru", True), ("noeviction", False)])
def test_initialize_warns_when_redis_may_evict_our_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, warned: bool
) -> None:
    server = RedisServer(tmp_path, "--maxmemory-policy", policy).start()
    store = RedisStore.from_url(server.url, prefix="policy:")
    try:
        with caplog.at_level(logging.WARNING, logger="flagserver.storage.redis_store"):
            store.initialize()
    finally:
        store.close()
        server.stop()
    assert ("maxmemory-policy is allkeys-lru" in caplog.text) is warned
