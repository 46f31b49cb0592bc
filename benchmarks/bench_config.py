"""How many SDK config polls per second does `flagserver serve` answer, 200s and 304s?

For each storage backend (SQLite, Redis) the benchmark:

1. builds a realistic store through the admin API (the environments `flagserver
   init` makes, 10 segments and 50 flags with rules, conditions, rollouts and
   some multivariate weights) and an SDK key of `production`;
2. starts `flagserver serve --workers 2` (gunicorn, its default 4 threads per
   worker) as a real subprocess on a free loopback port, and waits for `/readyz`
   with a deadline;
3. checks, before any timing, that `GET /api/v1/sdk/config` answers 200 with the
   expected strong ETag and the whole document, and 304 with no body when
   `If-None-Match` names that ETag;
4. drives load from a separate process: `wrk` (Debian package `wrk`) with a Lua
   script that counts every response's status, or, without wrk, a Python load
   generator (several processes, keep-alive `http.client` connections). Each path
   gets a short warm-up, then ~10 s of load (3 s with --quick); a run in which any
   response had another status than the one expected is refused, not reported.

    python benchmarks/bench_config.py                    # both backends; refreshes RESULTS.md
    python benchmarks/bench_config.py --quick            # 3 s per path; prints only
    python benchmarks/bench_config.py --backend sqlite   # one backend
    apt-get install -y wrk                               # the preferred load generator

Redis: `--redis-url` (default redis://127.0.0.1:6379/14); every key lives under a
prefix of this run's own (`bench_config:<random>:`) and is deleted afterwards with
SCAN + DEL. The machine the figures were taken on has 2 cores, shared by the server
and the load generator, so the figures are what the server gets with half the
machine taken by the client; they are not a ceiling of the server alone.

Target (the issue): >= 5,000 304s per second on that 2-core machine. Targets are
checked here, never by tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (  # noqa: E402 (the sibling module, found through the line above)
    RESULTS_PATH,
    common_machine_info,
    delete_redis_prefix,
    dist_version,
    free_port,
    git_commit,
    git_has_changes,
    read_section,
    section_markers,
    write_section,
)

CONFIG_PATH = "/api/v1/sdk/config"
ENVIRONMENT = "production"
ENVIRONMENTS = ("production", "staging")  # what `flagserver init` creates
N_FLAGS = 50
N_SEGMENTS = 10

TARGET_304_RPS = 5_000
WORKERS = 2
WORKER_THREADS = 4  # `flagserver serve`'s default
LOAD_THREADS = 2
CONNECTIONS = 32
DURATION_S = 10.0
QUICK_DURATION_S = 3.0
WARMUP_S = 1.0
REPEATS = 3
READY_TIMEOUT_S = 30.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
BACKENDS = ("sqlite", "redis")

START_MARKER, END_MARKER = section_markers("bench_config")
# What follows this marker in the section is written by hand and kept by every re-run.
FINDINGS_MARKER = "<!-- bench_config:findings -->"
WRK_INSTALL_HINT = "install wrk for the preferred load generator: apt-get install -y wrk (Debian package `wrk`)"


# -- the config: 10 segments and 50 flags ------------------------------------------


_EU = ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU",
       "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]


def make_segments() -> list[dict[str, Any]]:
    """Ten segments of the kinds a product team keeps: emails, listed keys, plans,
    countries, app versions, a random bucket, numbers, dates, a regex."""
    return [
        {"key": "internal", "description": "staff",
         "conditions": [{"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True}]},
        {"key": "beta-testers", "description": "signed up for betas",
         "included": [f"user-{i}" for i in range(1, 41)], "excluded": ["user-13"]},
        {"key": "free-tier", "conditions": [{"attribute": "plan", "op": "in", "values": ["free-tier"]}]},
        {"key": "enterprise",
         "conditions": [{"attribute": "plan", "op": "in", "values": ["enterprise", "enterprise-plus"]}]},
        {"key": "eu", "description": "GDPR countries",
         "conditions": [{"attribute": "country", "op": "in", "values": _EU}]},
        {"key": "ios-recent", "conditions": [
            {"attribute": "platform", "op": "in", "values": ["ios"]},
            {"attribute": "app_version", "op": "semver_gte", "values": ["5.2.0"]}]},
        {"key": "random-10", "description": "a stable random 10%", "percentage": 10},
        {"key": "high-value", "conditions": [{"attribute": "lifetime_value", "op": "gte", "values": [1000]}]},
        {"key": "new-signups", "conditions": [{"attribute": "signed_up_at", "op": "after",
                                               "values": ["2026-01-01T00:00:00Z"]}]},
        {"key": "test-accounts",
         "conditions": [{"attribute": "email", "op": "starts_with", "values": ["qa+", "test+"]}]},
    ]


_AREAS = ("checkout", "search", "onboarding", "billing", "profile", "feed", "chat", "reports", "export", "mobile")
_FEATURES = ("redesign", "fast-path", "v2-api", "dark-mode", "recommendations")


def make_flags(segment_keys: Sequence[str], n: int = N_FLAGS, seed: int = 7) -> list[dict[str, Any]]:
    """`n` flags (deterministic): ~80% on, 1-3 rules each (segments, conditions or both,
    some with a percentage), a rollout, and every fifth flag multivariate with weights."""
    rng = random.Random(seed)
    flags = []
    for i in range(n):
        key = f"{_AREAS[i % len(_AREAS)]}-{_FEATURES[(i // len(_AREAS)) % len(_FEATURES)]}"
        multivariate = i % 5 == 4
        variants = ["control", "treatment-a", "treatment-b"] if multivariate else ["off", "on"]
        rules = []
        for r in range(rng.randint(1, 3)):
            rule: dict[str, Any] = {"id": f"rule-{r + 1}"}
            if rng.random() < 0.7:
                rule["segments"] = rng.sample(list(segment_keys), rng.randint(1, 2))
            if rng.random() < 0.5 or "segments" not in rule:
                rule["conditions"] = [{"attribute": "country", "op": "in", "values": rng.sample(_EU, 3)},
                                      {"attribute": "app_version", "op": "semver_gte",
                                       "values": [f"{rng.randint(3, 6)}.{rng.randint(0, 9)}.0"]}][: rng.randint(1, 2)]
            if rng.random() < 0.4:
                rule["rollout"] = rng.choice([10, 25, 50])
            else:
                rule["serve"] = variants[-1]
            rules.append(rule)
        rollout: Any = {"control": 5000, "treatment-a": 2500, "treatment-b": 2500} if multivariate \
            else rng.choice([0, 5, 10, 25, 50, 100])
        flags.append({
            "key": key,
            "description": f"{key.replace('-', ' ')}: benchmark flag {i}",
            "tags": [_AREAS[i % len(_AREAS)], "bench"],
            "owner": f"team-{_AREAS[i % len(_AREAS)]}",
            "variants": variants,
            "enabled": rng.random() < 0.8,
            "rules": rules,
            "rollout": rollout,
        })
    return flags


# -- setting a backend up ---------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A store ready to serve: the environment `flagserver serve` needs, an SDK key, and
    what the config endpoint must answer (its ETag and its document's size)."""

    backend: str
    env: dict[str, str]
    sdk_key: str
    etag: str
    body_bytes: int
    n_flags: int
    n_segments: int
    redis_url: str | None = None
    redis_prefix: str | None = None


def prepare(backend: str, workdir: Path, redis_url: str = DEFAULT_REDIS_URL, n_flags: int = N_FLAGS) -> Setup:
    """Create the store of `backend` under `workdir` (or under a fresh Redis prefix), fill
    it through the admin API and mint an SDK key. Raises AssertionError if any write is
    refused, and redis.RedisError if Redis does not answer. Call `cleanup` afterwards."""
    from flagserver import create_app
    from flagserver.auth import create_token

    instance = workdir / f"instance-{backend}"
    instance.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        db = workdir / "bench-config.db"
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)  # a kept --workdir starts from an empty store too
        url, prefix = f"sqlite:///{db}", "flagserver:"
    elif backend == "redis":
        url, prefix = redis_url, f"bench_config:{uuid.uuid4().hex}:"
    else:
        raise ValueError(f"unknown backend {backend!r}")
    env = {"FLAGSERVER_DATABASE_URL": url, "FLAGSERVER_REDIS_PREFIX": prefix,
           "FLAGSERVER_INSTANCE_PATH": str(instance), "FLAGSERVER_SECRET_KEY": "bench-config"}
    setup = Setup(backend, env, "", "", 0, 0, 0, redis_url=url if backend == "redis" else None,
                  redis_prefix=prefix if backend == "redis" else None)
    app = create_app({"DATABASE_URL": url, "REDIS_PREFIX": prefix, "SECRET_KEY": "bench-config"})
    store = app.extensions["flagserver.store"]
    try:
        for key in ENVIRONMENTS:
            store.create_environment(key, key.capitalize(), actor="bench")
        admin = create_token(store, "admin", "bench-admin", None, "bench")["token"]
        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        client = app.test_client()
        segments = make_segments()
        for segment in segments:
            response = client.post(f"/api/v1/envs/{ENVIRONMENT}/segments", data=json.dumps(segment), headers=headers)
            assert response.status_code == 201, (segment["key"], response.get_data(as_text=True))
        for flag in make_flags([s["key"] for s in segments], n_flags):
            # json.dumps keeps the declared order of variant weights (the test client's json= sorts keys)
            response = client.post(f"/api/v1/envs/{ENVIRONMENT}/flags", data=json.dumps(flag), headers=headers)
            assert response.status_code == 201, (flag["key"], response.get_data(as_text=True))
        sdk_key = create_token(store, "sdk", "bench", ENVIRONMENT, "bench")["token"]
        response = client.get(CONFIG_PATH, headers={"Authorization": f"Bearer {sdk_key}"})
        assert response.status_code == 200, response.get_data(as_text=True)
        document = response.get_json()
        etag = response.headers["ETag"]
    except BaseException:
        store.close()
        cleanup(setup)
        raise
    store.close()
    return Setup(backend, env, sdk_key, etag, len(response.get_data()), len(document["flags"]),
                 len(document["segments"]), setup.redis_url, setup.redis_prefix)


def cleanup(setup: Setup) -> int:
    """Delete this run's Redis keys (SCAN + DEL under its own prefix; never FLUSH*).
    Returns how many were deleted; SQLite files go with the work folder."""
    if setup.redis_url is None or not setup.redis_prefix:
        return 0
    return delete_redis_prefix(setup.redis_url, setup.redis_prefix)


# -- the server -------------------------------------------------------------------


def serve_command(port: int, workers: int = WORKERS, threads: int = WORKER_THREADS) -> list[str]:
    """`flagserver serve ...`, run by this interpreter through the command's entry point
    (so that the server is the flagserver installed next to this Python)."""
    return [sys.executable, "-c", "from flagserver.cli import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--threads", str(threads)]


class Server:
    """`flagserver serve` in a subprocess; `start()` returns once `/readyz` says ready."""

    def __init__(self, setup: Setup, log_path: Path, workers: int = WORKERS, threads: int = WORKER_THREADS) -> None:
        self.setup = setup
        self.log_path = log_path
        self.workers = workers
        self.threads = threads
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = READY_TIMEOUT_S) -> Server:
        """Raises RuntimeError (with the server's log) if it exits or is not ready in time."""
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(serve_command(self.port, self.workers, self.threads),
                                            env={**os.environ, **self.setup.env}, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flagserver serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = request_once(self.port, "/readyz", {}, timeout=2)
            except OSError as exc:
                last = exc
            else:
                if status == 200:
                    return self
                last = f"status {status}"
            time.sleep(0.1)  # a poll interval; the deadline decides
        self.stop()
        raise RuntimeError(f"flagserver serve not ready after {timeout:.0f}s ({last!r}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the gunicorn master (it stops its workers); SIGKILL after 15 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def pids(self) -> list[int]:
        """The gunicorn master and its workers (the master's children), for CPU accounting
        or a profiler (`py-spy record --pid`)."""
        if self.process is None:
            return []
        master = self.process.pid
        children: list[int] = []
        try:
            with open(f"/proc/{master}/task/{master}/children", encoding="ascii") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            pass
        return [master, *children]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_once(port: int, path: str, headers: dict[str, str],
                 timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def config_headers(setup: Setup, conditional: bool) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {setup.sdk_key}"}
    if conditional:
        headers["If-None-Match"] = setup.etag
    return headers


def verify(port: int, setup: Setup) -> None:
    """The live server answers as the benchmark assumes; AssertionError otherwise:
    200 with the expected ETag and the whole document; 304 with the same ETag and no
    body for a matching If-None-Match; 200 again for a stale one; 401 without a key."""
    status, headers, body = request_once(port, CONFIG_PATH, config_headers(setup, False))
    assert status == 200, (status, body[:300])
    assert headers.get("etag") == setup.etag, (headers.get("etag"), setup.etag)
    document = json.loads(body)
    assert len(document["flags"]) == setup.n_flags and len(document["segments"]) == setup.n_segments, document.keys()
    assert len(body) == setup.body_bytes, (len(body), setup.body_bytes)
    status, headers, body = request_once(port, CONFIG_PATH, config_headers(setup, True))
    assert status == 304 and body == b"", (status, body[:300])
    assert headers.get("etag") == setup.etag, (headers.get("etag"), setup.etag)
    status, _, _ = request_once(port, CONFIG_PATH, {**config_headers(setup, False), "If-None-Match": '"stale-0"'})
    assert status == 200, status
    status, _, _ = request_once(port, CONFIG_PATH, {})
    assert status == 401, status


# -- CPU accounting ---------------------------------------------------------------


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all but idle and iowait), Linux /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """This process and its reaped children (wrk, the load processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class CpuUse:
    """Where the CPU went during one timed run: the server (gunicorn master and workers),
    the load generator, and everything else on the machine (other people's work: noise)."""

    server_s: float
    generator_s: float
    other_s: float


@contextmanager
def cpu_meter(server_pids: Sequence[int]) -> Iterator[list[CpuUse]]:
    """Measure the CPU of a block; the result is appended to the yielded list."""
    box: list[CpuUse] = []
    server0, own0, busy0 = sum(_process_cpu_s(p) for p in server_pids), _own_cpu_s(), _machine_busy_s()
    yield box
    server = sum(_process_cpu_s(p) for p in server_pids) - server0
    own = _own_cpu_s() - own0
    busy = _machine_busy_s() - busy0
    box.append(CpuUse(server, own, max(0.0, busy - server - own)))


# -- load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    generator: str
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    errors: int
    connections: int
    threads: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def check(self, expected: int) -> LoadResult:
        """Raise AssertionError unless every response had the `expected` status and
        no connection failed: a run that measured something else is not reported."""
        others = {s: n for s, n in self.statuses.items() if s != expected}
        assert self.requests > 0 and not others and self.errors == 0, (
            f"expected only {expected}s: statuses {self.statuses}, {self.errors} socket errors")
        return self


# wrk: headers come from -H; `response` counts statuses per thread (and, with a number
# after `--`, stops each thread after that many responses); `done` sums them and prints
# one JSON line. Latencies are in microseconds.
WRK_SCRIPT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  limit = tonumber(args[1] or "0")
  seen = 0
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  seen = seen + 1
  if limit > 0 and seen >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do counts[code] = (counts[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%d":%d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ",")))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(port: int, headers: dict[str, str], duration_s: float, workdir: Path, threads: int = LOAD_THREADS,
            connections: int = CONNECTIONS, max_per_thread: int = 0) -> LoadResult:
    """Load with wrk (a separate process). Raises RuntimeError when wrk fails."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError(f"wrk is not installed; {WRK_INSTALL_HINT}")
    script = workdir / "bench_config.lua"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s",
               "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command += [f"http://127.0.0.1:{port}{CONFIG_PATH}", "--", str(max_per_thread)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk_output(out.stdout, threads=threads, connections=connections)


def parse_wrk_output(stdout: str, *, threads: int, connections: int) -> LoadResult:
    """The result of our Lua `done` line. Raises ValueError if the line is missing."""
    match = re.search(r"^BENCH_JSON (\{.*\})$", stdout, re.MULTILINE)
    if match is None:
        raise ValueError(f"no BENCH_JSON line in wrk's output:\n{stdout}")
    data = json.loads(match.group(1))
    return LoadResult("wrk", int(data["requests"]), data["duration_us"] / 1e6, data["p50_us"] / 1000,
                      data["p99_us"] / 1000, {int(k): int(v) for k, v in data["statuses"].items()},
                      int(data["errors"]), connections, threads)


@dataclass
class _Tally:
    latencies_us: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0


def _drive(port: int, headers: dict[str, str], stop_at: float, max_requests: int, tally: _Tally,
           lock: threading.Lock) -> None:
    """One keep-alive connection: request after request until `stop_at` (or `max_requests`)."""
    latencies: list[int] = []
    statuses: dict[int, int] = {}
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    clock = time.perf_counter_ns
    sent = 0
    try:
        while time.monotonic() < stop_at and (max_requests <= 0 or sent < max_requests):
            start = clock()
            try:
                conn.request("GET", CONFIG_PATH, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            finally:
                sent += 1
            latencies.append((clock() - start) // 1000)
            statuses[response.status] = statuses.get(response.status, 0) + 1
    finally:
        conn.close()
    with lock:
        tally.latencies_us.extend(latencies)
        tally.errors += errors
        for status, n in statuses.items():
            tally.statuses[status] = tally.statuses.get(status, 0) + n


def _python_process(args: tuple[int, dict[str, str], float, int, int]) -> tuple[list[int], dict[int, int], int, float]:
    """One load process: `connections` threads, each with its own connection."""
    port, headers, duration_s, connections, max_requests = args
    tally, lock = _Tally(), threading.Lock()
    started = time.monotonic()
    stop_at = started + duration_s
    workers = [threading.Thread(target=_drive, args=(port, headers, stop_at, max_requests, tally, lock),
                                name=f"bench-load-{i}", daemon=True) for i in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return tally.latencies_us, tally.statuses, tally.errors, time.monotonic() - started


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def run_python_load(port: int, headers: dict[str, str], duration_s: float, processes: int = LOAD_THREADS,
                    connections: int = CONNECTIONS, max_requests_per_connection: int = 0) -> LoadResult:
    """Load from `processes` forked processes (one process: a thread of this one's
    children is not needed, so it runs here), `connections` keep-alive connections in
    all. Slower than wrk per request: its figures are a floor of the server's, and
    only comparable with other runs of the same generator."""
    per_process = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    jobs = [(port, headers, duration_s, n, max_requests_per_connection) for n in per_process if n > 0]
    if len(jobs) == 1:
        results = [_python_process(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            results = pool.map(_python_process, jobs)
    latencies = sorted(v for r in results for v in r[0])
    statuses: dict[int, int] = {}
    for r in results:
        for status, n in r[1].items():
            statuses[status] = statuses.get(status, 0) + n
    duration = max(r[3] for r in results)
    return LoadResult("python", len(latencies), duration, percentile(latencies, 50) / 1000,
                      percentile(latencies, 99) / 1000, statuses, sum(r[2] for r in results), connections,
                      len(jobs))


def load(generator: str, port: int, headers: dict[str, str], duration_s: float, workdir: Path,
         threads: int = LOAD_THREADS, connections: int = CONNECTIONS) -> LoadResult:
    if generator == "wrk":
        return run_wrk(port, headers, duration_s, workdir, threads, connections)
    return run_python_load(port, headers, duration_s, threads, connections)


# -- one backend, both paths ---------------------------------------------------------


@dataclass(frozen=True)
class TimedRun:
    """One timed run of one path and where the CPU went meanwhile."""

    load: LoadResult
    cpu: CpuUse

    @property
    def server_us(self) -> float:
        """Server CPU (master and workers) per request, in microseconds."""
        return self.cpu.server_s / self.load.requests * 1e6 if self.load.requests else 0.0

    @property
    def generator_us(self) -> float:
        return self.cpu.generator_s / self.load.requests * 1e6 if self.load.requests else 0.0

    @property
    def ceiling_rps(self) -> float:
        """Requests per second the measured CPU costs allow if server and generator had
        every core of the machine to themselves (an upper bound, not a measurement)."""
        per_request = self.server_us + self.generator_us
        return (os.cpu_count() or 1) * 1e6 / per_request if per_request > 0 else 0.0


@dataclass(frozen=True)
class BackendResult:
    """Every timed run of both paths; a path's figures are those of its fastest run."""

    setup: Setup
    runs: dict[int, tuple[TimedRun, ...]]  # 200: no If-None-Match; 304: If-None-Match names the ETag

    def best(self, status: int) -> TimedRun:
        """The run with the most requests per second: other processes on a shared machine
        only ever slow a run down, so the fastest is the closest to the server's own figure."""
        return max(self.runs[status], key=lambda run: run.load.rps)

    def spread(self, status: int) -> str:
        return ", ".join(f"{run.load.rps:,.0f}" for run in self.runs[status])


def measure_backend(backend: str, workdir: Path, *, generator: str, duration_s: float, repeats: int = 1,
                    redis_url: str = DEFAULT_REDIS_URL, threads: int = LOAD_THREADS,
                    connections: int = CONNECTIONS, warmup_s: float = WARMUP_S) -> BackendResult:
    """Set `backend` up, serve it, verify, warm up, then time both paths `repeats` times
    (taking turns); clean up always. Raises AssertionError when the server answers
    other than expected, before or during timing."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    paths = ((False, 200), (True, 304))
    setup = prepare(backend, workdir, redis_url)
    try:
        with Server(setup, workdir / f"server-{backend}.log") as server:
            verify(server.port, setup)
            pids = server.pids()
            if warmup_s > 0:  # every worker builds its app, cache entry and token cache first
                for conditional, status in paths:
                    load(generator, server.port, config_headers(setup, conditional), warmup_s, workdir, threads,
                         connections).check(status)
            runs: dict[int, list[TimedRun]] = {status: [] for _, status in paths}
            for _ in range(repeats):
                for conditional, status in paths:
                    with cpu_meter(pids) as cpu:
                        result = load(generator, server.port, config_headers(setup, conditional), duration_s,
                                      workdir, threads, connections)
                    runs[status].append(TimedRun(result.check(status), cpu[0]))
            verify(server.port, setup)  # still the same document: nothing changed under load
    finally:
        cleanup(setup)
    return BackendResult(setup, {status: tuple(r) for status, r in runs.items()})


# -- reporting ------------------------------------------------------------------------


def _revision() -> str:
    """The commit of the flagserver being measured (the one this Python imports, which
    the server subprocess imports too), and whether its code had changes on top."""
    import flagserver

    root = Path(flagserver.__file__).resolve().parent.parent
    head, changed = git_commit(root), git_has_changes(("flagserver", "sdk/flagsdk"), root)
    if head is None or changed is None:
        return f"unknown (flagserver imported from {root}, not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes to flagserver/ or sdk/" if changed else "")


def _wrk_version() -> str:
    wrk = wrk_path()
    if wrk is None:
        return "not installed"
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _redis_version(url: str) -> str:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception:
        return "not reachable"


def machine_info(redis_url: str = DEFAULT_REDIS_URL) -> dict[str, str]:
    """The machine and the code measured: `cpu`, `nproc`, `python`, `date`, `packages`, `wrk`,
    `redis_server`, `revision`."""
    return {
        **common_machine_info(),
        "packages": ", ".join(f"{n} {dist_version(n)}" for n in ("flask", "werkzeug", "gunicorn", "redis")),
        "wrk": _wrk_version(),
        "redis_server": _redis_version(redis_url),
        "revision": _revision(),
    }


def _cell(results: dict[str, BackendResult], backend: str, pick: Any) -> str:
    return pick(results[backend]) if backend in results else "not run"


def format_table(results: dict[str, BackendResult]) -> str:
    """Markdown: one row per figure, one column per backend; the fastest run of each path."""
    def both(pick: Any) -> Any:
        return lambda r: f"{pick(r.best(200))} / {pick(r.best(304))}"

    rows = [
        ("200 req/s", lambda r: f"{r.best(200).load.rps:,.0f}"),
        ("200 p50 / p99 ms", lambda r: f"{r.best(200).load.p50_ms:.2f} / {r.best(200).load.p99_ms:.2f}"),
        ("304 req/s", lambda r: f"{r.best(304).load.rps:,.0f}"),
        ("304 p50 / p99 ms", lambda r: f"{r.best(304).load.p50_ms:.2f} / {r.best(304).load.p99_ms:.2f}"),
        ("req/s of every run, 200; 304", lambda r: f"{r.spread(200)}; {r.spread(304)}"),
        ("server CPU per request, 200 / 304 (us)", both(lambda t: f"{t.server_us:,.0f}")),
        ("load generator CPU per request, 200 / 304 (us)", both(lambda t: f"{t.generator_us:,.0f}")),
        ("CPU of other processes meanwhile, 200 / 304 (s)", both(lambda t: f"{t.cpu.other_s:.1f}")),
        ("ceiling on free cores, 200 / 304 (req/s)", both(lambda t: f"{t.ceiling_rps:,.0f}")),
        ("requests timed, 200 / 304", both(lambda t: f"{t.load.requests:,}")),
        ("config body", lambda r: f"{r.setup.body_bytes:,} B, {r.setup.n_flags} flags, {r.setup.n_segments} segments"),
    ]
    lines = ["| | SQLite | Redis |", "| --- | ---: | ---: |"]
    for name, pick in rows:
        lines.append(f"| {name} | {_cell(results, 'sqlite', pick)} | {_cell(results, 'redis', pick)} |")
    return "\n".join(lines)


def format_target(results: dict[str, BackendResult]) -> str:
    lines = []
    for backend, result in results.items():
        rps = result.best(304).load.rps
        verdict = "**met**" if rps >= TARGET_304_RPS else "**not met**"
        lines.append(f"- {backend}: >= {TARGET_304_RPS:,} 304s per second: {verdict} ({rps:,.0f}/s, "
                     f"{rps / TARGET_304_RPS:.0%} of the target)")
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/bench_config.py"]
    if args.backend != "both":
        parts.append(f"--backend {args.backend}")
    if args.generator != "auto":
        parts.append(f"--generator {args.generator}")
    for name in ("duration", "repeats", "threads", "connections"):
        default = {"threads": LOAD_THREADS, "connections": CONNECTIONS}.get(name)
        value = getattr(args, name)
        if value is not None and value != default:
            parts.append(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}")
    return " ".join(parts)


def render_section(results: dict[str, BackendResult], machine: dict[str, str], *, command: str, generator: str,
                   duration_s: float, repeats: int, threads: int, connections: int, findings: str = "") -> str:
    """This benchmark's section of RESULTS.md, markers included."""
    first = next(iter(results.values()))
    load_text = (f"`wrk {machine['wrk']} -t{threads} -c{connections} -d{duration_s:g}s` with a Lua script "
                 "counting every status" if generator == "wrk" else
                 f"the Python load generator ({threads} processes, {connections} keep-alive connections, "
                 f"{duration_s:g} s): slower than wrk per request, so these figures are a floor")
    body = [
        START_MARKER,
        "## bench_config: `GET /api/v1/sdk/config` under `flagserver serve`",
        "",
        f"`{command}`, {machine['date']}. Server at {machine['revision']}. Machine: {machine['cpu']}, "
        f"**nproc {machine['nproc']}, shared by the server and the load generator**; {machine['python']}; "
        f"{machine['packages']}; Redis server {machine['redis_server']} on loopback.",
        "",
        f"`flagserver serve --workers {WORKERS} --threads {WORKER_THREADS}` (gunicorn gthread) in its own process "
        f"on a loopback port; the store holds {first.setup.n_flags} flags (1-3 rules each, segments, conditions, "
        f"percentages, every fifth multivariate) and {first.setup.n_segments} segments, built through the admin API. "
        f"Load: {load_text}, one SDK key. 200 = no `If-None-Match` (the whole document); 304 = `If-None-Match` "
        "naming the current strong ETag. Before timing, the live server was checked to answer 200 with the "
        "expected ETag and the whole document, 304 with no body, 200 for a stale ETag and 401 without a key; every "
        f"timed response had the expected status. After a {WARMUP_S:g} s warm-up per path, each path was timed "
        f"{repeats} {'time' if repeats == 1 else 'times'}, the paths taking turns; the table shows each path's "
        "fastest run (other processes on a shared machine only slow a run down) and, below it, every run's req/s. "
        "Server CPU is that of the gunicorn master and workers from /proc; \"other processes\" is the rest of the "
        "machine's busy CPU during the run (someone else's work: noise).",
        "",
        format_table(results),
        "",
        "Target (the issue), on this 2-core machine:",
        "",
        format_target(results),
        "",
        "The server and the load generator share the 2 cores (the generator's CPU per request is in the table). "
        "The \"ceiling\" row is what the CPU figures allow if nothing else ran: cores / (server + generator CPU "
        "per request).",
    ]
    if findings:
        body += ["", findings.strip()]
    body.append(END_MARKER)
    return "\n".join(body)


def existing_findings(path: Path) -> str:
    """The hand-written findings kept in this section (after FINDINGS_MARKER), so that a
    re-run refreshes the figures without dropping the profile and the suggestions."""
    section = read_section(path, "bench_config")
    if section is None or FINDINGS_MARKER not in section:
        return ""
    return FINDINGS_MARKER + section.split(FINDINGS_MARKER, 1)[1].rstrip()


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench_config-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:g} s per path; records nothing")
    parser.add_argument("--backend", choices=("sqlite", "redis", "both"), default="both")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="auto: wrk when installed, else the Python load generator")
    parser.add_argument("--duration", type=float, default=None, help=f"seconds per path (default {DURATION_S:g})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per path, the fastest reported (default {REPEATS}; quick 1)")
    parser.add_argument("--threads", type=int, default=LOAD_THREADS, help="load threads (wrk) or processes (python)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="keep-alive connections in all")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="the RESULTS.md to refresh")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store and server logs here")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (QUICK_DURATION_S if args.quick else DURATION_S)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else REPEATS)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_path() else "python"
        if generator == "python":
            print(f"wrk not found, using the Python load generator; {WRK_INSTALL_HINT}", file=sys.stderr)
    elif generator == "wrk" and wrk_path() is None:
        parser.error(f"wrk is not installed; {WRK_INSTALL_HINT}")
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    record = not (args.quick or args.no_record)

    machine = machine_info(args.redis_url)
    print(f"{machine['cpu']}, nproc {machine['nproc']} (shared by server and load generator), {machine['python']}, "
          f"server at {machine['revision']}")
    print(f"load: {generator}, {args.threads} threads, {args.connections} connections, {duration:g} s per path, "
          f"{repeats} run(s) each\n")
    results: dict[str, BackendResult] = {}
    with _workdir(args.workdir) as workdir:
        for backend in backends:
            result = measure_backend(backend, workdir / backend, generator=generator, duration_s=duration,
                                     repeats=repeats, redis_url=args.redis_url, threads=args.threads,
                                     connections=args.connections)
            results[backend] = result
            for status in (200, 304):
                for run in result.runs[status]:
                    print(f"{backend} {status}: {run.load.rps:,.0f}/s, p50 {run.load.p50_ms:.2f} ms, "
                          f"p99 {run.load.p99_ms:.2f} ms; server {run.server_us:,.0f} us CPU/request; "
                          f"other processes took {run.cpu.other_s:.1f} CPU-s")
    print()
    print(format_table(results))
    print()
    print(format_target(results))
    if record:
        section = render_section(results, machine, command=command_line(args), generator=generator,
                                 duration_s=duration, repeats=repeats, threads=args.threads,
                                 connections=args.connections,
                                 findings=existing_findings(args.results))
        write_section(args.results, section)
        print(f"\nrecorded in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
