"""How many events per second does `POST /api/v1/sdk/events` take in?

A real deployment in miniature: `flagserver init` and `flagserver tokens create
--kind sdk` set up a fresh database, `flagserver serve --workers 2` (gunicorn,
threaded workers) serves it on a free loopback port in a subprocess, and a flag
is created through the admin API with the admin token `init` printed. Load
comes from separate processes (multiprocessing), each with one keep-alive
`http.client` connection, sending batches of 500 events gzipped as the SDK sends
them (`sdk/flagsdk/_events.py`).

Each batch holds 400 exposures of new users (half `on`, half `off`, from the
flag's own split, so every exposure makes a new per-user row: the expensive
case; keys like `user-3f9c...`, 21 characters, in random order) and 100
`track` events of users exposed in earlier batches of the same sender (values,
so both the distinct-user and the sum paths work). The bodies
are built and compressed before the clock starts; the clock runs from the
moment all senders are released until the last answer. Afterwards the stats API
must show every exposed user exactly once, so nothing was dropped.

    python benchmarks/bench_events.py                    # SQLite; refreshes RESULTS.md
    python benchmarks/bench_events.py --backend redis    # Redis at --redis-url, own key prefix
    python benchmarks/bench_events.py --quick            # short; prints only

With `--backend redis` the server gets FLAGSERVER_DATABASE_URL=<--redis-url>
and FLAGSERVER_REDIS_PREFIX=bench-events:<random>:, and every key under that
prefix is deleted afterwards (SCAN + DEL; never FLUSHALL or KEYS).

Target (the issue): >= 50,000 events/s on Redis. SQLite: what it does is
recorded; one file has one writer at a time, however many workers serve it.
Targets are checked here, never by tests.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (  # noqa: E402 (the sibling module, found through the line above)
    REPO_ROOT,
    RESULTS_PATH,
    common_machine_info,
    delete_redis_prefix,
    free_port,
    git_commit,
    load_average,
    section_markers,
    write_section,
)

FLAG = "bench-checkout"
BATCH_SIZE = 500
EXPOSURES_PER_BATCH = 400
TARGET_REDIS = 50_000

START_MARKER, END_MARKER = section_markers("bench_events")


# the events


def user_key(sender: int, n: int) -> str:
    """A user key in no particular order (as real traffic sends them; keys in
    order would fill the store's B-tree pages one by one and flatter SQLite)."""
    return "user-" + hashlib.blake2b(f"{sender}:{n}".encode(), digest_size=8).hexdigest()


def make_bodies(sender: int, n_batches: int, now: float) -> list[bytes]:
    """Gzipped batches of sender `sender`: 400 exposures of new users and 100 tracks
    of users it exposed in earlier batches (in its first batch, of the same batch)."""
    bodies = []
    exposed: list[str] = []
    for b in range(n_batches):
        events: list[dict[str, Any]] = []
        for i in range(EXPOSURES_PER_BATCH):
            user = user_key(sender, b * EXPOSURES_PER_BATCH + i)
            events.append({"kind": "exposure", "flag": FLAG, "variant": ("off", "on")[i % 2], "rule_id": None,
                           "reason": "SPLIT", "randomized": True, "flag_version": 1, "user": user,
                           "at": now - 60 + i * 0.001})
            exposed.append(user)
        for i in range(BATCH_SIZE - EXPOSURES_PER_BATCH):
            user = exposed[(b * 7919 + i * 104729) % len(exposed)]
            events.append({"kind": "track", "event": "checkout", "user": user, "value": 49.9, "at": now - 30})
        body = json.dumps({"batch_id": f"bench-{sender}-{b}-{uuid.uuid4().hex}", "events": events},
                          separators=(",", ":"))
        bodies.append(gzip.compress(body.encode(), compresslevel=6, mtime=0))
    return bodies


def _sender(sender: int, port: int, sdk_key: str, n_batches: int, ready: Any, go: Any, out: Any) -> None:
    """One load process: build its bodies, say ready, wait for go, send them all."""
    bodies = make_bodies(sender, n_batches, time.time())
    headers = {"Authorization": f"Bearer {sdk_key}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ready.set()
    go.wait()
    started = time.perf_counter()
    try:
        for body in bodies:
            t = time.perf_counter()
            for attempt in range(3):
                try:
                    conn.request("POST", "/api/v1/sdk/events", body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:  # a dropped keep-alive: reconnect once more
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    if attempt == 2:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if response.status != 202:
                    errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                break
            latencies.append(time.perf_counter() - t)
        finished = time.perf_counter()
    finally:
        conn.close()
    out.put({"sender": sender, "started": started, "finished": finished, "latencies": latencies,
             "errors": errors})


# the server


def flagserver_command() -> list[str]:
    """The `flagserver` command of this interpreter's environment (its console
    script), or the same entry point through `python -c` when it is not installed."""
    script = Path(sys.executable).with_name("flagserver")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from flagserver.cli import main; main()"]


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*flagserver_command(), *args], env=env, capture_output=True,
                            text=True, timeout=120, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"flagserver {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _request(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def _wait_ready(port: int, server: subprocess.Popen[bytes], deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"flagserver serve exited with status {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        time.sleep(0.1)  # waiting for a subprocess to listen: nothing to wait on but the clock
    raise RuntimeError(f"flagserver serve did not answer on port {port} within {deadline_seconds:.0f} s")


@dataclass
class Report:
    backend: str
    workers: int
    threads: int
    senders: int
    batches: int  # sent, all senders
    events: int
    seconds: float
    latencies: list[float]
    errors: dict[str, int]
    exposed_counted: int
    exposed_sent: int
    server_cpu: float | None = None  # CPU seconds of gunicorn's processes during the load (Linux)
    redis_cpu: float | None = None  # CPU seconds of redis-server during the load (INFO cpu; shared with others)
    notes: list[str] = field(default_factory=list)

    @property
    def server_cpu_us_per_event(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.events * 1e6

    @property
    def redis_cpu_us_per_event(self) -> float | None:
        return None if self.redis_cpu is None else self.redis_cpu / self.events * 1e6

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(backend: str = "sqlite", *, senders: int = 4, batches_per_sender: int = 40, workers: int = 2,
            threads: int = 4, redis_url: str = "redis://127.0.0.1:6379/15") -> Report:
    """Set up a server, send the load, check the counts, tear everything down."""
    with tempfile.TemporaryDirectory(prefix="bench-events-") as folder:
        env = {**os.environ, "FLAGSERVER_INSTANCE_PATH": folder, "PYTHONPATH": str(REPO_ROOT)}
        prefix = None
        if backend == "sqlite":
            env["FLAGSERVER_DATABASE_URL"] = f"sqlite:///{folder}/bench.db"
        else:
            prefix = f"bench-events:{uuid.uuid4().hex}:"
            env["FLAGSERVER_DATABASE_URL"] = redis_url
            env["FLAGSERVER_REDIS_PREFIX"] = prefix
        try:
            admin = _cli(env, "init").strip().splitlines()[-1]
            sdk_key = _cli(env, "tokens", "create", "--kind", "sdk", "--env", "production", "--name", "bench")
            sdk_key = sdk_key.strip().splitlines()[-1]
            port = free_port()
            server = subprocess.Popen(
                [*flagserver_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(workers), "--threads", str(threads)],
                env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                _wait_ready(port, server)
                status, body = _request(port, "POST", "/api/v1/envs/production/flags", admin,
                                        {"key": FLAG, "enabled": True, "rollout": 50})
                if status != 201:
                    raise RuntimeError(f"creating the flag answered {status}: {body}")
                cpu_before = tree_cpu_seconds(server.pid)
                redis_before = redis_cpu_seconds(redis_url) if prefix is not None else None
                report = _load(port, sdk_key, backend, senders, batches_per_sender, workers, threads)
                cpu_after = tree_cpu_seconds(server.pid)
                if cpu_before is not None and cpu_after is not None:
                    report.server_cpu = cpu_after - cpu_before
                if redis_before is not None:
                    report.redis_cpu = redis_cpu_seconds(redis_url) - redis_before
                status, stats = _request(port, "GET", f"/api/v1/envs/production/flags/{FLAG}/stats", admin)
                if status != 200:
                    raise RuntimeError(f"the stats API answered {status}: {stats}")
                report.exposed_counted = sum(arm["exposed"] for arm in stats["stages"][-1]["arms"].values())
            finally:
                _stop(server)
        finally:
            if prefix is not None:
                delete_redis_prefix(redis_url, prefix)
    return report


def _load(port: int, sdk_key: str, backend: str, senders: int, batches_per_sender: int, workers: int,
          threads: int) -> Report:
    ctx = mp.get_context("spawn")  # a clean process: no inherited sockets or threads
    go = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(senders)]
    procs = [ctx.Process(target=_sender, args=(i, port, sdk_key, batches_per_sender, readies[i], go, out),
                         name=f"bench-sender-{i}") for i in range(senders)]
    for proc in procs:
        proc.start()
    try:
        deadline = time.monotonic() + 120
        for proc, ready in zip(procs, readies, strict=True):
            while not ready.wait(timeout=0.2):
                _check_alive(proc, deadline, "get ready")
        go.set()
        results = []
        deadline = time.monotonic() + 900
        while len(results) < senders:
            try:
                results.append(out.get(timeout=0.5))
            except queue.Empty:
                for proc in procs:
                    _check_alive(proc, deadline, "finish")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        out.close()
        out.join_thread()
    start = min(r["started"] for r in results)  # perf_counter is system-wide (CLOCK_MONOTONIC) on Linux
    end = max(r["finished"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for name, count in r["errors"].items():
            errors[name] = errors.get(name, 0) + count
    n_batches = senders * batches_per_sender
    return Report(backend=backend, workers=workers, threads=threads, senders=senders, batches=n_batches,
                  events=n_batches * BATCH_SIZE, seconds=end - start,
                  latencies=[x for r in results for x in r["latencies"]], errors=errors, exposed_counted=0,
                  exposed_sent=n_batches * EXPOSURES_PER_BATCH)


def redis_cpu_seconds(url: str) -> float:
    """redis-server's user + system CPU seconds so far (INFO cpu)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` and its descendants, from /proc
    (None where there is no /proc). A process that exited takes its share along."""
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    except OSError:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, (ppid, _) in stats.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def _check_alive(proc: Any, deadline: float, doing: str) -> None:
    """Raise when a sender died (with no result to give) or the deadline passed."""
    if proc.exitcode not in (None, 0):
        raise RuntimeError(f"{proc.name} exited with status {proc.exitcode} before it could {doing}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{proc.name} did not {doing} in time")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to gunicorn's master (it stops its workers gracefully), then wait."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


# recording


def machine_info() -> dict[str, str]:
    """The machine and the code measured: `cpu`, `nproc`, `python`, `date`, `sqlite`, `commit`, `load`."""
    return {**common_machine_info(), "sqlite": sqlite3.sqlite_version, "commit": git_commit(REPO_ROOT) or "unknown",
            "load": load_average()}


def format_row(report: Report) -> str:
    cpu = "-" if report.server_cpu_us_per_event is None else f"{report.server_cpu_us_per_event:,.0f}"
    if report.redis_cpu_us_per_event is not None:
        cpu += f" + Redis {report.redis_cpu_us_per_event:,.0f}"
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(report.errors.items())) or "none"
    return (f"| {report.backend} | {report.workers} x {report.threads} | {report.senders} | {report.batches:,} "
            f"| {report.events:,} | {report.seconds:.2f} | **{report.events_per_second:,.0f}** "
            f"| {report.latency(0.5) * 1e3:,.0f} | {report.latency(0.99) * 1e3:,.0f} "
            f"| {cpu} | {report.exposed_counted:,} of {report.exposed_sent:,} | {errors} |")


TABLE_HEAD = ("| backend | workers x threads | senders | batches | events | seconds | events/s | p50 ms | p99 ms "
              "| server CPU us/event | exposed users counted | errors |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")


def render_section(reports: Sequence[Report], machine: dict[str, str], runs: int) -> str:
    lines = [
        START_MARKER,
        "## bench_events: `POST /api/v1/sdk/events`, batches of 500",
        "",
        f"`python benchmarks/bench_events.py`, {machine['date']}. Machine: {machine['cpu']}, nproc "
        f"{machine['nproc']}, {machine['python']}, SQLite {machine['sqlite']}, at commit {machine['commit']}; "
        f"load average when done {machine['load']} (the machine was shared: other work ran alongside).",
        "",
        "`flagserver serve` (gunicorn, threaded workers) on loopback; senders are separate processes, one "
        "keep-alive connection each, posting gzipped batches of 400 exposures of new users (21-character keys "
        "in random order) and 100 tracks "
        "(of users exposed before), to a fresh database each run. Bodies are built before the clock starts. "
        "The stats API afterwards must count every exposed user once. Each row is the median of "
        f"{runs} runs; every run is listed below the table. p50/p99: one request's time as its sender saw it. "
        "Server CPU: user + system time of gunicorn's processes during the load, per event (the load's "
        "cost independent of what else the machine runs; 1,000,000 / it is events/s per fully used core), "
        "plus redis-server's own (INFO cpu) for Redis.",
        "",
        TABLE_HEAD,
        *[format_row(r) for r in reports],
        "",
    ]
    redis_rows = [r for r in reports if r.backend == "redis"]
    if redis_rows:
        best = max(r.events_per_second for r in redis_rows)
        verdict = "**met**" if best >= TARGET_REDIS else "**not met**"
        lines.append(f"Target: >= {TARGET_REDIS:,} events/s on Redis: {verdict} ({best:,.0f}, the best row's "
                     "median run).")
    else:
        lines.append(f"Target: >= {TARGET_REDIS:,} events/s on Redis: not measured here yet (`--backend redis` "
                     "needs the Redis event methods).")
    lines.append("")
    for r in reports:
        lines.extend(r.notes)
    lines.append(END_MARKER)
    return "\n".join(lines)


def median_of(runs: list[Report]) -> Report:
    """The run with the median rate (the lower middle of an even number), noting every run's rate."""
    ordered = sorted(runs, key=lambda r: r.events_per_second)
    middle = ordered[(len(ordered) - 1) // 2]
    middle.notes.append(f"- {middle.backend}, {middle.senders} senders: runs "
                        + ", ".join(f"{r.events_per_second:,.0f}" for r in runs)
                        + f" events/s (best {ordered[-1].events_per_second:,.0f}).")
    return middle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "redis"), action="append",
                        help="sqlite (default) or redis; repeat for both")
    parser.add_argument("--redis-url", default=os.environ.get("FLAGSERVER_BENCH_REDIS_URL",
                                                              "redis://127.0.0.1:6379/15"))
    parser.add_argument("--senders", type=int, action="append", help="load processes (default 2 and 4)")
    parser.add_argument("--batches", type=int, default=100, help="batches per sender (default 100)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the median run is recorded")
    parser.add_argument("--quick", action="store_true", help="one short run per row; records nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    backends = args.backend or ["sqlite"]
    senders = args.senders or [2, 4]
    runs = 1 if args.quick else args.runs
    batches = 10 if args.quick else args.batches
    print(TABLE_HEAD)
    reports = []
    for backend in backends:
        for n in senders:
            done = []
            for _ in range(runs):
                report = measure(backend, senders=n, batches_per_sender=batches, workers=args.workers,
                                 threads=args.threads, redis_url=args.redis_url)
                print(format_row(report), flush=True)
                if report.exposed_counted != report.exposed_sent or report.errors:
                    print("the server lost or refused events: not recorded", file=sys.stderr)
                    return 1
                done.append(report)
            reports.append(median_of(done))
    if not (args.quick or args.no_record):
        write_section(args.results, render_section(reports, machine_info(), runs))
        print(f"recorded in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
