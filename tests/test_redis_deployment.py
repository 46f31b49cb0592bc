"""The Redis backend as it is deployed: real `flagserver serve` processes (gunicorn, two
workers each, no rollout controller) on loopback ports, on a real Redis.

- Two servers on the shared Redis (database 13 of REDIS_URL's server, a prefix of their own
  per test): a write through one is served by every worker of the other within a second;
  two writers racing with one If-Match through different servers: one wins, once; an SDK
  client on one server sees a percentage written through the other within two polls.
- One server on a Redis of our own (`redis-server` on a free port, AOF on) that crashes and
  starts again under it: refused writes, stale config, readiness, and recovery without
  restarting the server, with every acknowledged write kept; an SDK client rides it out.

Gunicorn gives each new connection to whichever worker accepts it first, and "hit it a few
times" does not reach every worker (20 sequential connections may all land on one). So
these tests pin a keep-alive connection to each worker: the worker that owns the server's
end of a connection is found in /proc (Linux). A pinned connection is replaced before
gunicorn's keep-alive (5 s) would close it.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flagsdk import FlagClient

from tests.conftest import REDIS_URL, clear_redis_prefix, require_redis
from tests.support import missing, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
SHARED_DB = 13
CONFIG = "/api/v1/sdk/config"
FLAG = "/api/v1/envs/production/flags/checkout"
FLAGS = "/api/v1/envs/{env}/flags"
# Accepted without storage (FLAGSERVER_ADMIN_TOKEN): during an outage a write's 503 then
# comes from the write itself, not from looking up the caller's token.
BOOTSTRAP = f"deployment-test-{secrets.token_hex(8)}"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
USERS = [{"key": f"user-{i:04d}"} for i in range(1000)]
POLL_INTERVAL = 1.0  # the SDK's, in seconds (its minimum)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_redis_server() -> str:
    """The path of `redis-server`: fail in CI, skip with a reason elsewhere, when missing."""
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server is not on PATH (the outage tests start and crash a Redis of their own)")
    return path


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() when the answer was in

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self, status: int) -> dict[str, Any]:
        """The house error body (`{"error": {"status", "code", "message"}}`) with `status`."""
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        error = self.json()["error"]
        assert error["status"] == status and error["code"] and error["message"], error
        return error  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def send(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request on `conn` (kept open), the body sent as JSON."""
    all_headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    content = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, content, time.monotonic())


def expect(reply: Reply, status: int) -> Reply:
    assert reply.status == status, reply
    return reply


def sdk(key: str, etag: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if etag is not None:
        headers["If-None-Match"] = etag
    return headers


def is_stale(reply: Reply) -> bool:
    return reply.headers.get("x-flagserver-stale") == "1"


# --- processes ---------------------------------------------------------------------------------


class Server:
    """`flagserver serve --workers 2 --no-controller` in a subprocess on a free loopback port."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"serve-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flagserver", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(WORKERS), "--no-controller"],
                cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz says ready and both workers are up (each owns a connection)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
            try:
                last = self.call("GET", "/readyz", timeout=2).status
            except OSError as exc:
                last = exc
            if last == 200 and len(self.worker_pids()) == WORKERS:
                Pinned(self, deadline - time.monotonic()).close()  # every worker answers
                return
            time.sleep(0.05)  # a poll interval; the deadline decides
        raise AssertionError(f"{self.name} not ready after {timeout}s ({last!r}):\n{self.log_tail()}")

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 10.0) -> Reply:
        """One request on a fresh connection (any worker)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            return send(conn, method, path, body, headers)
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                return sorted(int(p) for p in f.read().split())
        except OSError:
            return []

    def owner(self, conn: http.client.HTTPConnection) -> int | None:
        """The worker holding the server's end of `conn` (after a request on it)."""
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        inode = None
        with open("/proc/net/tcp", encoding="ascii") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.split(":")[1], 16) == self.port and int(remote.split(":")[1], 16) == client_port:
                    inode = fields[9]
        if inode is None:
            return None
        for pid in self.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None

    def stop(self) -> None:
        """SIGTERM to the gunicorn master (its workers stop with it); SIGKILL after 15 s."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Pinned:
    """One keep-alive connection to each worker of `server`, pinned with `GET /healthz`
    (harmless, and answered during an outage too)."""

    IDLE_LIMIT = 3.0  # gunicorn closes idle keep-alive connections after 5 s: replace ours before

    def __init__(self, server: Server, timeout: float = 10.0) -> None:
        self.server = server
        self.conns: dict[int, http.client.HTTPConnection] = {}
        self.used: dict[int, float] = {}
        pids = server.worker_pids()
        assert len(pids) == WORKERS, pids
        try:
            self._pin(set(pids), timeout)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return sorted(self.conns)

    def _pin(self, wanted: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while wanted - set(self.conns):
            assert time.monotonic() < deadline, f"no connection reached workers {wanted - set(self.conns)}"
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            try:
                expect(send(conn, "GET", "/healthz"), 200)
                pid = self.server.owner(conn)
            except BaseException:
                conn.close()
                raise
            if pid in wanted and pid not in self.conns:
                self.conns[pid] = conn
                self.used[pid] = time.monotonic()
            else:
                conn.close()

    def send(self, pid: int, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Reply:
        if time.monotonic() - self.used[pid] > self.IDLE_LIMIT:
            self.conns.pop(pid).close()
            self._pin({pid}, 10.0)
        reply = send(self.conns[pid], method, path, body, headers)
        self.used[pid] = time.monotonic()
        return reply

    def each(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[int, Reply]:
        return {pid: self.send(pid, method, path, body, headers) for pid in self.pids}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


class RedisProcess:
    """`redis-server` of our own on a free port, append-only file on, no RDB snapshots.

    appendfsync everysec, the default that docs/redis.md recommends: Redis write()s each
    write to the AOF before it replies, and fsyncs once a second. What the tests do to it is
    a crash of Redis alone (SIGKILL; the machine stays up, so the page cache survives), for
    which docs/redis.md promises that everysec loses nothing acknowledged. `always` would
    pass too, but would test a setting deployments rarely run rather than the default."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisProcess:
        """Start (again, on the same port and dir) and wait until it answers PING."""
        assert self.process is None
        self.process = subprocess.Popen(
            [require_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_tail()
            if self._ping():
                return self
            time.sleep(0.02)  # a poll interval; the deadline decides
        raise AssertionError(f"redis-server not answering after {timeout}s:\n{self.log_tail()}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final save or flush."""
        process, self.process = self.process, None
        assert process is not None
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def linux_only() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("finding which gunicorn worker owns a connection reads /proc (Linux)")


@pytest.fixture
def prefix() -> str:
    return f"flagtest:deploy:{uuid.uuid4().hex}:"


@pytest.fixture
def shared_redis(prefix: str) -> Iterator[str]:
    """Database 13 of the test Redis (REDIS_URL's server); the test's keys are deleted after."""
    require_redis()
    url = urlsplit(REDIS_URL)._replace(path=f"/{SHARED_DB}", query="").geturl()
    yield url
    clear_redis_prefix(url, prefix)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    require_redis_server()
    redis_process = RedisProcess(tmp_path).start()
    yield redis_process
    redis_process.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., list[Server]]]:
    """`launch(count, url, prefix, **FLAGSERVER_variables)`: that many servers, started
    together, each ready with both workers up; all stopped after the test."""
    started: list[Server] = []

    def launch(count: int, url: str, prefix: str, **settings: str) -> list[Server]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGSERVER_")}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "FLAGSERVER_DATABASE_URL": url,
            "FLAGSERVER_REDIS_PREFIX": prefix,
            "FLAGSERVER_ADMIN_TOKEN": BOOTSTRAP,
            "FLAGSERVER_SECRET_KEY": "deployment-test",
            "FLAGSERVER_INSTANCE_PATH": str(tmp_path / "instance"),
            **{f"FLAGSERVER_{k}": v for k, v in settings.items()},
        })
        servers = [Server(f"{len(started) + i}", env, tmp_path) for i in range(count)]
        for server in servers:
            started.append(server.start())
        for server in servers:
            server.wait_ready()
        return servers

    yield launch
    for server in started:
        server.stop()


def provision(server: Server) -> dict[str, str]:
    """Environments production and staging; flag `checkout` on at 20% in production;
    an SDK key of each environment (returned by environment)."""
    for env in ("production", "staging"):
        expect(server.call("POST", "/api/v1/envs", {"key": env}, ADMIN), 201)
    expect(server.call("POST", FLAGS.format(env="production"),
                       {"key": "checkout", "enabled": True, "rollout": 20}, ADMIN), 201)
    return {env: expect(server.call("POST", "/api/v1/tokens", {"kind": "sdk", "environment": env,
                                                                "name": f"sdk-{env}"}, ADMIN), 201).json()["token"]
            for env in ("production", "staging")}


def patch_rollout(server: Server, rollout: float, version: int | None = None,
                  headers: dict[str, str] = ADMIN) -> Reply:
    extra = {} if version is None else {"If-Match": f'"{version}"'}
    return server.call("PATCH", FLAG, {"rollout": rollout}, {**headers, **extra})


def audit(server: Server, **query: str) -> list[dict[str, Any]]:
    path = "/api/v1/audit?limit=1000" + "".join(f"&{k}={v}" for k, v in query.items())
    return expect(server.call("GET", path, headers=ADMIN), 200).json()["entries"]  # type: ignore[no-any-return]


def report(record_property: Callable[[str, Any], None], name: str, value: Any) -> None:
    """A measurement: in the JUnit XML, and printed (`pytest -s` shows it)."""
    record_property(name, value)
    print(f"\n{name}: {value}")


# --- SDK watcher ------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    config_version: int
    enabled: frozenset[str]
    reasons: frozenset[str]


@dataclass
class Evaluator:
    """Evaluates `checkout` for USERS on an SDK client in a thread, as an application would,
    recording each pass and any exception (there must be none: the SDK never raises)."""

    client: FlagClient
    samples: list[Sample] = field(default_factory=list)
    exceptions: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Evaluator:
        self._thread = threading.Thread(target=self._run, name="test.evaluator", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self.client.snapshot.config.version
                results = [(user, self.client.evaluate("checkout", user)) for user in USERS]
                assert all(self.client.is_enabled("checkout", user) == r.enabled for user, r in results)
                self.samples.append(Sample(time.monotonic(), version,
                                           frozenset(user["key"] for user, r in results if r.enabled),
                                           frozenset(r.reason for _, r in results)))
            except BaseException as exc:  # recorded for the test to fail on
                self.exceptions.append(exc)
            self._stop.wait(0.02)  # pacing of the application's work, not synchronisation

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def wait_for_pass_after(self, moment: float, timeout: float = 5.0) -> None:
        """Until a pass that began after `moment` is recorded."""
        wait_for(lambda: self.between(moment + 0.1, float("inf")), timeout,
                 what=lambda: f"an evaluation after {moment} (exceptions: {self.exceptions})")


class ChangeLog:
    """`on_change` of a FlagClient: when each config version was swapped in."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, int, float | None]] = []

    def __call__(self, snapshot: Any) -> None:
        flag = snapshot.config.flags.get("checkout")
        self.changes.append((time.monotonic(), snapshot.config.version,
                             None if flag is None else flag.rollout.percentage))

    def first_at(self, rollout: float, after: float) -> float | None:
        return next((at for at, _, pct in self.changes if pct == rollout and at >= after), None)


def wait_for_change(changes: ChangeLog, rollout: float, after: float, timeout: float) -> float:
    """Seconds from `after` until the client swapped in a config with `rollout`."""
    at: float = wait_for(lambda: changes.first_at(rollout, after), after + timeout - time.monotonic(),
                         what=lambda: f"the SDK to see rollout {rollout} ({changes.changes[-5:]})")
    return at - after


# --- two servers on one Redis -----------------------------------------------------------------------


def test_a_write_through_one_server_is_served_by_every_worker_of_the_other_within_a_second(
        shared_redis, prefix, launch, record_property):
    # Given two servers on one Redis, each worker of each having built production's document
    a, b = launch(2, shared_redis, prefix)
    keys = provision(a)
    delays: dict[str, float] = {}
    for rollout, (writer, reader) in ((35, (a, b)), (65, (b, a))):
        pinned = Pinned(reader)
        workers = pinned.pids
        try:
            before = pinned.each("GET", CONFIG, headers=sdk(keys["production"]))
            assert {r.status for r in before.values()} == {200}, before
            (old_etag,) = {r.headers["etag"] for r in before.values()}
            version = int(expect(writer.call("GET", FLAG, headers=ADMIN), 200).headers["etag"].strip('"'))

            # When the rollout is changed through the writer (acknowledged at `acked`)
            written = expect(patch_rollout(writer, rollout, version), 200)
            acked = written.at

            # Then every worker of the reader serves the new document, with the new rollout, within 1 s
            served: dict[int, Reply] = {}
            while len(served) < WORKERS and time.monotonic() < acked + 3:  # measure past the limit, then judge
                for pid in set(pinned.pids) - set(served):
                    reply = pinned.send(pid, "GET", CONFIG, headers=sdk(keys["production"], old_etag))
                    if reply.status == 200:
                        served[pid] = reply
                    else:
                        assert reply.status == 304 and reply.headers["etag"] == old_etag, reply
        finally:
            pinned.close()
        assert set(served) == set(workers), f"workers still on {old_etag} 3 s after the write"
        for pid, reply in served.items():
            assert reply.headers["etag"] != old_etag and not is_stale(reply)
            assert reply.json()["flags"]["checkout"]["rollout"] == rollout
            assert reply.json()["flags"]["checkout"]["version"] == version + 1
            delays[f"{writer.name}->{reader.name} worker {pid}"] = round(reply.at - acked, 4)
        assert len({r.headers["etag"] for r in served.values()}) == 1
        assert max(reply.at - acked for reply in served.values()) < 1.0, delays
    report(record_property, "propagation_delay_s", delays)


def race(writers: list[tuple[str, Server, dict[str, str], dict[str, Any]]]) -> dict[str, Reply | BaseException]:
    """`PATCH FLAG` by each writer `(name, server, headers, body)`, in threads released together
    by a barrier, each on a connection opened beforehand; each one's reply (or exception)."""
    barrier = threading.Barrier(len(writers))
    replies: dict[str, Reply | BaseException] = {}

    def write(name: str, server: Server, headers: dict[str, str], body: dict[str, Any]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.connect()  # connected before the start, so the requests leave together
            barrier.wait(timeout=10)
            replies[name] = send(conn, "PATCH", FLAG, body, headers)
        except BaseException as exc:  # reported by the caller's assertions
            replies[name] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=w, name=f"test.{w[0]}") for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    return replies


def test_two_writers_racing_with_one_if_match_through_two_servers_one_wins_once(
        shared_redis, prefix, launch, record_property):
    # Given two servers on one Redis and an admin token for each writer (the audit log's actor says who)
    a, b = launch(2, shared_redis, prefix)
    provision(a)
    writers = []
    for name, server in (("writer-a", a), ("writer-b", b)):
        token = expect(a.call("POST", "/api/v1/tokens", {"kind": "admin", "name": name}, ADMIN), 201).json()["token"]
        writers.append((name, server, {"Authorization": f"Bearer {token}"}))
    wins = {"writer-a": 0, "writer-b": 0}
    for round_ in range(10):
        current = expect(a.call("GET", FLAG, headers=ADMIN), 200).json()
        version = current["version"]
        newest_audit = audit(a, key="checkout")[0]["id"]
        wanted = {"writer-a": 10 + round_, "writer-b": 60 + round_}

        # When both send the same If-Match at once, each through its own server
        replies = race([(name, server, {**headers, "If-Match": f'"{version}"'}, {"rollout": wanted[name]})
                        for name, server, headers in writers])

        # Then exactly one gets 200 and the other 412 naming the winner's version
        assert all(isinstance(r, Reply) for r in replies.values()), replies
        statuses = {name: r.status for name, r in replies.items()}  # type: ignore[union-attr]
        assert sorted(statuses.values()) == [200, 412], (round_, replies)
        winner = next(name for name, status in statuses.items() if status == 200)
        loser = next(name for name in statuses if name != winner)
        wins[winner] += 1
        lost = replies[loser]
        assert isinstance(lost, Reply)
        error = lost.error(412)
        assert error["code"] == "version_mismatch" and error["current_version"] == version + 1
        # And both servers show the winner's write
        for server in (a, b):
            stored = expect(server.call("GET", FLAG, headers=ADMIN), 200).json()
            assert (stored["rollout"], stored["version"]) == (wanted[winner], version + 1), (round_, winner, stored)
        # And the audit log has exactly one new entry: the winner's
        new = [e for e in audit(b, key="checkout") if e["id"] > newest_audit]
        assert len(new) == 1, new
        assert new[0]["actor"] == f"admin:{winner}" and new[0]["action"] == "update"
        assert new[0]["before"]["version"] == version and new[0]["before"]["rollout"] == current["rollout"]
        assert (new[0]["after"]["version"], new[0]["after"]["rollout"]) == (version + 1, wanted[winner])
    report(record_property, "race_wins", wins)


def test_an_sdk_client_on_one_server_sees_a_percentage_written_through_the_other_within_two_polls(
        shared_redis, prefix, launch, record_property):
    # Given an SDK client on server B, polling every second, evaluating all the time
    a, b = launch(2, shared_redis, prefix)
    keys = provision(a)
    changes = ChangeLog()
    client = FlagClient(f"http://127.0.0.1:{b.port}", keys["production"], poll_interval=POLL_INTERVAL,
                        events=False, init_timeout=10, on_change=changes)
    try:
        assert client.is_ready()
        with Evaluator(client) as evaluator:
            before = client.snapshot.config.flags["checkout"]
            assert before.rollout.percentage == 20
            evaluator.wait_for_pass_after(time.monotonic() - 0.1)

            # When the percentage goes from 20 to 70 through server A
            acked = expect(patch_rollout(a, 70), 200).at

            # Then the client has it within two poll intervals
            delay = wait_for_change(changes, 70, acked, timeout=2 * POLL_INTERVAL + 3)
            seen = acked + delay
            # and evaluated throughout, without an exception and without an error result
            evaluator.wait_for_pass_after(seen)
        assert not evaluator.exceptions, evaluator.exceptions
        assert delay < 2 * POLL_INTERVAL, delay
        old = evaluator.between(0, acked)
        new = evaluator.between(seen + 0.1, float("inf"))  # a pass begun after the swap
        assert old and new
        assert {r for s in evaluator.samples for r in s.reasons} == {"SPLIT"}
        # the share of users moved from about 20% to about 70%, keeping everyone who had it
        assert 0.15 < len(old[-1].enabled) / len(USERS) < 0.25
        assert 0.65 < len(new[-1].enabled) / len(USERS) < 0.75
        assert old[-1].enabled < new[-1].enabled
    finally:
        client.close()
    report(record_property, "sdk_propagation_delay_s", round(delay, 4))


# --- a Redis crash under a running server -------------------------------------------------------------


OUTAGE_SECONDS = 2.5  # at least two SDK polls during the outage


def test_a_redis_crash_and_restart_under_a_running_server(own_redis, prefix, launch, record_property):
    """Every worker is made to build production's document before the crash (one pinned
    connection each), so every worker must serve it stale. A worker that never built a
    document cannot serve it, and must say so cleanly: staging's SDK key, which no worker
    has seen (neither its token nor its document), gets a JSON 503 with Retry-After. With
    gunicorn's balancing that is what an SDK would get from a worker that has not served
    its environment yet; the SDK then keeps its last config and retries.

    FLAGSERVER_TOKEN_CACHE_SECONDS=60 keeps this test about the stale document alone; the
    next test shows that a key verified before the outage stays trusted past its cache
    time while storage is down."""
    (server,) = launch(1, own_redis.url, prefix, TOKEN_CACHE_SECONDS="60")
    keys = provision(server)
    workers = server.worker_pids()

    # Given a few acknowledged writes of several kinds
    acked: list[Reply] = [expect(patch_rollout(server, rollout), 200) for rollout in (25, 30, 40)]
    acked.append(expect(server.call("POST", FLAGS.format(env="staging"),
                                    {"key": "banner", "enabled": True, "rollout": 50}, ADMIN), 201))
    acked.append(expect(server.call("POST", "/api/v1/envs/production/segments",
                                    {"key": "beta", "included": ["user-0001"]}, ADMIN), 201))
    acked.append(expect(patch_rollout(server, 45), 200))
    flags_before = {env: expect(server.call("GET", FLAGS.format(env=env), headers=ADMIN), 200).json()
                    for env in ("production", "staging")}
    segments_before = expect(server.call("GET", "/api/v1/envs/production/segments", headers=ADMIN), 200).json()
    audit_before = audit(server)
    assert len(audit_before) == 2 + 1 + 2 + len(acked)  # envs, flag, SDK keys, the writes above

    # And an SDK client on the server, evaluating all the time
    changes = ChangeLog()
    client = FlagClient(f"http://127.0.0.1:{server.port}", keys["production"], poll_interval=POLL_INTERVAL,
                        events=False, init_timeout=10, on_change=changes)
    pinned: Pinned | None = None
    try:
        assert client.snapshot.config.flags["checkout"].rollout.percentage == 45
        with Evaluator(client) as evaluator:
            # And every worker has built production's document
            pinned = Pinned(server)
            built = pinned.each("GET", CONFIG, headers=sdk(keys["production"]))
            assert {r.status for r in built.values()} == {200}, built
            (etag,) = {r.headers["etag"] for r in built.values()}
            (body,) = {r.body for r in built.values()}

            # When Redis crashes
            own_redis.crash()
            crashed = time.monotonic()

            # Then, for as long as it is down, on every worker:
            rounds = 0
            while time.monotonic() < crashed + OUTAGE_SECONDS or rounds < 2:
                rounds += 1
                for pid in pinned.pids:
                    # writes get a JSON 503 with Retry-After, never a 500
                    for method, path, payload in (
                            ("PATCH", FLAG, {"rollout": 77}),
                            ("POST", FLAGS.format(env="production"), {"key": "during-outage", "rollout": 5}),
                            ("DELETE", "/api/v1/envs/staging/flags/banner", None),
                            ("POST", "/api/v1/tokens", {"kind": "sdk", "environment": "production", "name": "x"})):
                        refused = pinned.send(pid, method, path, payload, ADMIN)
                        assert refused.error(503)["code"] == "storage_unavailable", (pid, method, path, refused)
                        assert refused.headers.get("retry-after") == "1"
                    # the document the worker built is served from memory, marked stale
                    not_modified = pinned.send(pid, "GET", CONFIG, headers=sdk(keys["production"], etag))
                    assert (not_modified.status, not_modified.body) == (304, b""), (pid, not_modified)
                    assert is_stale(not_modified) and not_modified.headers["etag"] == etag
                    full = pinned.send(pid, "GET", CONFIG, headers=sdk(keys["production"]))
                    assert (full.status, full.body, full.headers["etag"]) == (200, body, etag), (pid, full)
                    assert is_stale(full)
                    # a document the worker never built cannot be served: a clean 503
                    unbuilt = pinned.send(pid, "GET", CONFIG, headers=sdk(keys["staging"]))
                    assert unbuilt.error(503)["code"] == "storage_unavailable", (pid, unbuilt)
                    # not ready, but alive
                    not_ready = pinned.send(pid, "GET", "/readyz")
                    assert not_ready.status == 503 and not_ready.json()["status"] == "unavailable"
                    assert expect(pinned.send(pid, "GET", "/healthz"), 200).json() == {"status": "ok"}
            outage_checked = time.monotonic()

            # When Redis starts again on the same port and directory
            own_redis.start()
            restarted = time.monotonic()

            # Then every worker is ready again within 10 s, without a restart of the server
            ready_at: dict[int, float] = {}
            while len(ready_at) < WORKERS and time.monotonic() < restarted + 10:
                for pid in set(pinned.pids) - set(ready_at):
                    if pinned.send(pid, "GET", "/readyz").status == 200:
                        ready_at[pid] = time.monotonic() - restarted
            assert len(ready_at) == WORKERS, f"not ready 10 s after Redis came back: {ready_at}"
            assert server.process is not None and server.process.poll() is None
            assert server.worker_pids() == workers, "the workers were restarted"
            # and the stale mark is gone: the same document (no refused write landed), fresh
            for pid, reply in pinned.each("GET", CONFIG, headers=sdk(keys["production"], etag)).items():
                assert reply.status == 304 and reply.headers["etag"] == etag and not is_stale(reply), (pid, reply)
            # and every write acknowledged before the crash is there, and nothing else
            for env in ("production", "staging"):
                assert expect(server.call("GET", FLAGS.format(env=env), headers=ADMIN), 200).json() \
                    == flags_before[env]
            assert expect(server.call("GET", "/api/v1/envs/production/segments", headers=ADMIN), 200).json() \
                == segments_before
            assert audit(server) == audit_before
            assert audit(server, key="during-outage") == []
            assert audit_before[0]["after"]["rollout"] == 45  # the last acknowledged write is the newest entry
            for reply in acked:
                record = reply.json()
                assert any(e["target_key"] == record["key"] and e["after"] == record for e in audit_before), record

            # And writes work again, on every worker, and reach the SDK client within two polls
            for pid, rollout in zip(pinned.pids, (55, 60), strict=True):
                written = expect(pinned.send(pid, "PATCH", FLAG, {"rollout": rollout}, ADMIN), 200)
            sdk_delay = wait_for_change(changes, 60, written.at, timeout=2 * POLL_INTERVAL + 3)
            for pid, reply in pinned.each("GET", CONFIG, headers=sdk(keys["production"], etag)).items():
                assert reply.status == 200 and not is_stale(reply), (pid, reply)
                assert reply.json()["flags"]["checkout"]["rollout"] == 60
            seen = written.at + sdk_delay
            evaluator.wait_for_pass_after(seen)
        # And the SDK client evaluated throughout without exceptions, keeping its config through the outage
        assert not evaluator.exceptions, evaluator.exceptions
        assert {r for s in evaluator.samples for r in s.reasons} == {"SPLIT"}
        during = evaluator.between(crashed, restarted)
        assert len(during) >= 10, len(during)
        version_before = built[pinned.pids[0]].json()["version"]
        assert {s.config_version for s in during} == {version_before}
        assert len({s.enabled for s in during}) == 1
        assert [pct for at, _, pct in changes.changes if crashed <= at <= restarted] == []
        assert sdk_delay < 2 * POLL_INTERVAL, sdk_delay
        assert {s.config_version for s in evaluator.between(seen + 0.1, float("inf"))} == {version_before + 2}
    finally:
        if pinned is not None:
            pinned.close()
        client.close()
    report(record_property, "outage", {
        "outage_s": round(restarted - crashed, 3), "outage_rounds": rounds,
        "checks_s": round(outage_checked - crashed, 3),
        "ready_after_restart_s": {pid: round(t, 3) for pid, t in ready_at.items()},
        "sdk_delay_after_recovery_s": round(sdk_delay, 4)})


def test_stale_config_outlives_the_token_cache_during_an_outage(own_redis, prefix, launch):
    # Given every worker built production's document and verified the SDK key, with a token cache of 1 s
    (server,) = launch(1, own_redis.url, prefix, TOKEN_CACHE_SECONDS="1")
    keys = provision(server)
    pinned = Pinned(server)
    try:
        built = pinned.each("GET", CONFIG, headers=sdk(keys["production"]))
        assert {r.status for r in built.values()} == {200}
        (etag,) = {r.headers["etag"] for r in built.values()}

        # When Redis is down for longer than the token cache lasts
        own_redis.crash()
        crashed = time.monotonic()
        answers: list[tuple[float, int, Reply]] = []
        while time.monotonic() < crashed + 3:
            for pid, reply in pinned.each("GET", CONFIG, headers=sdk(keys["production"], etag)).items():
                answers.append((round(reply.at - crashed, 2), pid, reply))
            time.sleep(0.1)  # the SDK's polling, compressed; not synchronisation
    finally:
        pinned.close()

    # Then every worker keeps answering the key it knows with the document it built, marked stale
    wrong = [(at, pid, reply) for at, pid, reply in answers if reply.status != 304 or not is_stale(reply)]
    assert not wrong, wrong[:4]
