"""Rollouts end to end with real processes: `flagserver serve --workers 2` (gunicorn, with
its own controller subprocess, or `--no-controller` beside a `flagserver controller`),
simulated users through the real SDK (`FlagClient`: `is_enabled`, then `track`), a plan
that looks every second, and webhook receivers on loopback ports.

The plans use small soaks and small user minimums so that each test takes seconds. A
healthy release is taken to 100% here with loose margins (30% at every stage); with the
default margins (10% at 50%) the promotion gate needs about 5,000 users per arm at 50%,
which is what tests/test_rollout_controller.py runs in-process with injected time.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flagsdk import FlagClient, bucket

from flagserver.rollout.webhooks import verify
from tests.api_helpers import wait_for
from tests.conftest import REDIS_URL, clear_redis_prefix, require_redis
from tests.webhook_receiver import Receiver, independent_signature

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SECRET = "webhook-secret"
ADMIN_TOKEN = "e2e-admin-token"  # the bootstrap token (FLAGSERVER_ADMIN_TOKEN)
CHECKOUT = {"event": "checkout", "kind": "conversion"}
FAST_PLAN = {
    "guardrails": [CHECKOUT],
    "interval_seconds": 1,
    "stages": [{"percentage": 20, "min_duration_seconds": 2, "min_users_per_arm": 100},
               {"percentage": 50, "min_duration_seconds": 2, "min_users_per_arm": 100},
               {"percentage": 100}],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Processes:
    """The server (and a lone controller) as subprocesses sharing one environment."""

    def __init__(self, tmp_path: Path, database_url: str, webhook_urls: list[str], redis_prefix: str = "") -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "FLAGSERVER_DATABASE_URL": database_url,
            "FLAGSERVER_INSTANCE_PATH": str(tmp_path / "instance"),
            "FLAGSERVER_SECRET_KEY": "e2e",
            "FLAGSERVER_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLAGSERVER_WEBHOOK_URLS": ",".join(webhook_urls),
            "FLAGSERVER_WEBHOOK_SECRET": SECRET,
        }
        if redis_prefix:
            self.env["FLAGSERVER_REDIS_PREFIX"] = redis_prefix
        self.running: list[tuple[str, subprocess.Popen[bytes], Any]] = []
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"

    def flagserver(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-c", "from flagserver.cli import main; main(prog_name='flagserver')", *args],
            cwd=self.tmp_path, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((name, process, log))
        return process

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A one-off `flagserver ...` command, as a person runs it."""
        return subprocess.run(
            [sys.executable, "-c", "from flagserver.cli import main; main(prog_name='flagserver')", *args],
            cwd=self.tmp_path, env=self.env, capture_output=True, text=True, timeout=60)

    def serve(self, *extra: str) -> None:
        server = self.flagserver("serve", "serve", "--port", str(self.port), "--workers", "2", *extra)
        wait_for(lambda: server.poll() is None and self.http.get(f"{self.url}/healthz", timeout=2).ok,
                 timeout=30)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop every process (gracefully, then by force); safe to call twice."""
        for _, process, _ in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # gunicorn's graceful stop; it stops its controller
        for _, process, log in reversed(self.running):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()
        self.http.close()

    # -- the admin API ------------------------------------------------------------------------------

    def api(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        response = self.http.request(method, f"{self.url}/api/v1{path}", json=json, timeout=10)
        assert response.status_code == expect, (method, path, response.status_code, response.text[:500])
        return response.json() if response.content else None

    def setup(self, plan: dict[str, Any]) -> str:
        """Environment production, flag f (off, 0%) with `plan`; returns an SDK key."""
        self.api("POST", "/envs", {"key": "production", "name": "Production"}, expect=201)
        key = self.api("POST", "/tokens", {"kind": "sdk", "name": "web", "environment": "production"},
                       expect=201)["token"]
        self.api("POST", "/envs/production/flags", {"key": "f"}, expect=201)
        self.api("PUT", "/envs/production/flags/f/rollout-plan", plan, expect=201)
        return str(key)

    def rollout(self) -> dict[str, Any]:
        return self.api("GET", "/envs/production/flags/f/rollout-plan")  # type: ignore[no-any-return]

    def flag(self) -> dict[str, Any]:
        return self.api("GET", "/envs/production/flags/f")  # type: ignore[no-any-return]


@pytest.fixture
def make_processes(tmp_path: Path) -> Iterator[Any]:
    made: list[Processes] = []

    def make(database_url: str | None = None, webhook_urls: list[str] | None = None,
             redis_prefix: str = "") -> Processes:
        processes = Processes(tmp_path, database_url or f"sqlite:///{tmp_path / 'flags.db'}", webhook_urls or [],
                              redis_prefix)
        made.append(processes)
        return processes

    yield make
    for processes in made:
        processes.stop()


class Users:
    """Simulated users through the real SDK: each new user is asked about f, then
    converts on `checkout` with the probability of the arm they got (seeded)."""

    def __init__(self, client: FlagClient, p_control: float, p_canary: float, seed: int) -> None:
        self.client = client
        self.p = {False: p_control, True: p_canary}
        self.rng = random.Random(seed)
        self.count = 0
        self.canary: list[dict[str, str]] = []

    def visit(self, count: int) -> None:
        for _ in range(count):
            self.count += 1
            user = {"key": f"user-{self.count}"}
            on = self.client.is_enabled("f", user)
            if on:
                self.canary.append(user)
            if self.rng.random() < self.p[on]:
                self.client.track("checkout", user)
        assert self.client.flush(timeout=10)

    def until(self, processes: Processes, done: Any, timeout: float, per_look: int = 300) -> None:
        """`per_look` users between two looks of the controller, until `done()`; fails at
        the deadline. (Users arrive at a pace the controller sees, as in production.)"""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"not done after {self.count} users"
            self.visit(per_look)
            sent = time.time()
            wait_for(lambda sent=sent: done() or processes.rollout()["state"]["last_tick_at"] >= sent, timeout=10)


def serving(client: FlagClient, version: int) -> bool:
    return client.evaluate("f", {"key": "probe"}).flag_version == version


def check_signed(request: Any) -> None:
    header = request.headers["x-flagserver-signature"]
    assert verify(SECRET, header, request.body, now=time.time())
    assert independent_signature(SECRET, header, request.body)
    assert not verify("not-the-secret", header, request.body, now=time.time())


# --- a harmful release ------------------------------------------------------------------------------

def test_a_harmful_release_is_rolled_back_and_the_sdk_stops_serving_it(make_processes):
    with Receiver() as receiver:
        processes = make_processes(webhook_urls=[receiver.url])
        processes.serve()
        sdk_key = processes.setup(FAST_PLAN)
        started = processes.api("POST", "/envs/production/flags/f/rollout-plan/start")
        assert started["status"] == "running" and processes.flag()["rollout"] == 20
        with FlagClient(processes.url, sdk_key, poll_interval=1, flush_interval=0.2) as client:
            wait_for(lambda: serving(client, processes.flag()["version"]), timeout=10)
            users = Users(client, p_control=0.5, p_canary=0.2, seed=1)

            users.until(processes, lambda: processes.rollout()["status"] != "running", timeout=40)
            rolled_back_at = time.monotonic()

            body = processes.rollout()
            assert body["status"] == "rolled_back", body["decisions"][:2]
            assert (processes.flag()["rollout"], processes.flag()["enabled"]) == (0, True)
            decision = body["decisions"][0]
            assert (decision["action"], decision["actor"]) == ("rollback", "controller")
            assert decision["reason"].startswith("rolled back to 0%: checkout conversion")
            assert decision["numbers"]["guardrails"]["checkout"]["harm"]["harmful"] is True
            assert "promote" not in [d["action"] for d in body["decisions"]]
            assert len(users.canary) < 500  # caught within a few looks of the first 200 canary users
            # The SDK stops serving the canary within its poll interval (1 s, and a margin).
            wait_for(lambda: not any(client.is_enabled("f", u) for u in users.canary), timeout=5, interval=0.02)
            assert time.monotonic() - rolled_back_at < 2.5
            assert client.stats()["failed"] == 0

        wait_for(lambda: receiver.received("rollout.rolled_back"), timeout=10)
    [notice] = receiver.received("rollout.rolled_back")
    check_signed(notice)
    payload = notice.json()
    assert (payload["environment"], payload["flag"], payload["status"], payload["percentage"]) == (
        "production", "f", "rolled_back", 0)
    assert payload["reason"] == decision["reason"]
    assert payload["numbers"]["guardrails"]["checkout"]["harm"]["harmful"] is True
    assert receiver.received()[0].event == "rollout.started"  # from a web worker
    for request in receiver.received():
        check_signed(request)
    # `serve` ran the controller in a process of its own, and stops it with gunicorn.
    found = re.search(r"rollout controller (\S+): looking every 1s", processes.log("serve"))
    assert found, processes.log("serve")[-2000:]
    controller_pid = int(found.group(1).split(":")[-2])
    processes.stop()
    assert processes.running[0][1].returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(controller_pid, 0)


# --- manual approval --------------------------------------------------------------------------------

def test_manual_mode_waits_for_approval_then_promotes(make_processes):
    with Receiver() as receiver:
        processes = make_processes(webhook_urls=[receiver.url])
        processes.serve()
        sdk_key = processes.setup({**FAST_PLAN, "mode": "manual"})
        processes.api("POST", "/envs/production/flags/f/rollout-plan/start")
        with FlagClient(processes.url, sdk_key, poll_interval=1, flush_interval=0.2) as client:
            wait_for(lambda: serving(client, processes.flag()["version"]), timeout=10)
            users = Users(client, p_control=0.5, p_canary=0.5, seed=2)

            users.until(processes, lambda: processes.rollout()["status"] != "running", timeout=40)

            waiting = processes.rollout()
            assert waiting["status"] == "waiting_for_approval", waiting["decisions"][:2]
            assert waiting["decisions"][0]["reason"].startswith("waiting for approval to go to 50%")
            # It keeps looking, and keeps waiting: more users, more looks, the flag stays at 20%.
            since = waiting["state"]["status_since"]
            users.until(processes, lambda: processes.rollout()["state"]["last_tick_at"] >= since + 2, timeout=15)
            assert processes.rollout()["status"] == "waiting_for_approval"
            assert processes.flag()["rollout"] == 20

            approved = processes.cli("rollout", "approve", "f", "--env", "production")

            assert approved.returncode == 0, approved.stderr
            assert approved.stdout.strip() == "f in production: running at 50%"
            body = processes.rollout()
            assert (body["status"], body["stage_index"]) == ("running", 1)
            assert body["decisions"][0]["action"] == "promote"
            assert body["decisions"][0]["actor"].startswith("cli:")
            flag = processes.flag()
            assert flag["rollout"] == 50
            # The SDK serves the 50% stage: exactly the users whose bucket is under 5000.
            wait_for(lambda: serving(client, flag["version"]), timeout=5)
            keys = [f"probe-{i}" for i in range(2000)]
            assert [client.is_enabled("f", {"key": k}) for k in keys] == [bucket("f", k) < 5000 for k in keys]

        wait_for(lambda: receiver.received("rollout.promoted"), timeout=10)
    events = [r.event for r in receiver.received()]
    assert events == ["rollout.started", "rollout.waiting_for_approval", "rollout.promoted"]
    for request in receiver.received():
        check_signed(request)
    promoted = receiver.received("rollout.promoted")[0].json()
    assert (promoted["percentage"], promoted["stage_index"], promoted["status"]) == (50, 1, "running")


# --- a healthy release to 100% -------------------------------------------------------------------

def test_a_healthy_release_reaches_100_percent(make_processes):
    processes = make_processes()
    processes.serve()
    loose = {**FAST_PLAN, "stages": [{**stage, "margin": 0.3} for stage in FAST_PLAN["stages"][:2]]
             + [{"percentage": 100}]}
    sdk_key = processes.setup(loose)
    processes.api("POST", "/envs/production/flags/f/rollout-plan/start")
    with FlagClient(processes.url, sdk_key, poll_interval=1, flush_interval=0.2) as client:
        wait_for(lambda: serving(client, processes.flag()["version"]), timeout=10)
        users = Users(client, p_control=0.5, p_canary=0.5, seed=3)

        users.until(processes, lambda: processes.rollout()["status"] != "running", timeout=45)

        body = processes.rollout()
        assert body["status"] == "completed", body["decisions"][:2]
        promotions = [d for d in reversed(body["decisions"]) if d["action"] == "promote"]
        assert [d["numbers"]["target_percentage"] for d in promotions] == [50, 100]
        assert processes.flag()["rollout"] == 100
        wait_for(lambda: serving(client, processes.flag()["version"]), timeout=5)
        assert all(client.is_enabled("f", {"key": f"probe-{i}"}) for i in range(500))


# --- Redis, a lone controller, and a receiver that keeps failing ----------------------------------------

def test_on_redis_a_failing_webhook_receiver_never_delays_the_rollback(make_processes):
    require_redis()
    prefix = f"flagtest:e2e:{uuid.uuid4().hex}:"
    flag_at_each_attempt: list[Any] = []

    def look_at_the_flag(request: Any) -> None:
        if request.event == "rollout.rolled_back":
            with requests.get(f"{processes.url}/api/v1/envs/production/flags/f", timeout=5,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
                flag_at_each_attempt.append(response.json()["rollout"])

    processes: Processes | None = None
    try:
        with Receiver(default=500, on_request=look_at_the_flag) as failing:
            processes = make_processes(REDIS_URL, webhook_urls=[failing.url], redis_prefix=prefix)
            processes.serve("--no-controller")
            controller = processes.flagserver("controller", "controller", "--poll", "0.5")
            sdk_key = processes.setup(FAST_PLAN)
            processes.api("POST", "/envs/production/flags/f/rollout-plan/start")
            with FlagClient(processes.url, sdk_key, poll_interval=1, flush_interval=0.2) as client:
                wait_for(lambda: serving(client, processes.flag()["version"]), timeout=10)
                users = Users(client, p_control=0.5, p_canary=0.2, seed=4)

                users.until(processes, lambda: processes.rollout()["status"] != "running", timeout=40)
                observed_at = time.time()

                assert processes.rollout()["status"] == "rolled_back"
                assert processes.flag()["rollout"] == 0
                # The controller's webhook is still being retried (4 attempts, 0.5 s, 1 s, 2 s apart).
                wait_for(lambda: len(failing.received("rollout.rolled_back")) == 4, timeout=15)
            assert controller.poll() is None  # the lone controller did the work, and is still up
    finally:
        if processes is not None:
            processes.stop()  # before the keys go, or the processes would write some back
        clear_redis_prefix(REDIS_URL, prefix)

    attempts = failing.received("rollout.rolled_back")
    assert len({a.body for a in attempts}) == 1
    assert attempts[-1].at > observed_at  # retried after the flag was seen at 0
    gaps = [b.monotonic - a.monotonic for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[2] >= 1.95
    assert flag_at_each_attempt == [0, 0, 0, 0]  # every attempt found the rollback done
    for attempt in attempts:
        check_signed(attempt)
    assert "looking every 0.5s" in processes.log("controller")
    assert "rollout controller" not in processes.log("serve")  # --no-controller
