"""`flagserver demo`: a rollout that runs itself, told in under two minutes.

A real server on a temporary SQLite file, a real rollout controller, and
simulated application traffic through the real SDK over HTTP. First a healthy
release of `new-checkout` climbs 5 → 25 → 50 → 100%; then `checkout-redesign`,
whose canary secretly converts 30% worse, is rolled back on its own, with the
reason in words. Time runs at `seconds_per_interval` per controller interval.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from flagsdk import FlagClient, bucket
from werkzeug.serving import make_server

from . import create_app
from .auth import create_token
from .rollout import RolloutPlanSchema
from .rollout.actions import act, put_plan
from .rollout.controller import Controller, RolloutService
from .storage import Store

BASE_RATE = 0.12
ACTOR = "admin:demo"


class _Traffic:
    """Application users arriving through the real SDK: each is evaluated, and
    converts with the rate of the arm they got."""

    def __init__(self, client: FlagClient, flag: str, canary_rate: float, users_per_second: int) -> None:
        self.client = client
        self.flag = flag
        self.canary_rate = canary_rate
        self.users_per_second = users_per_second
        self.seen = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"demo-traffic-{flag}", daemon=True)

    def _run(self) -> None:
        batch = max(1, self.users_per_second // 20)
        while not self.stop.wait(0.05):
            for _ in range(batch):
                self.seen += 1
                user = {"key": f"{self.flag}-user-{self.seen}", "plan": "pro"}
                rate = self.canary_rate if self.client.is_enabled(self.flag, user) else BASE_RATE
                # Whether a user would buy is theirs (a hash of the key, independent of the flag's
                # split), so the story is the same at every run: only the canary's rate differs.
                if bucket("demo-conversion", user["key"]) < rate * 10_000:
                    self.client.track("checkout", user)

    def __enter__(self) -> _Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _plan(seconds_per_interval: float) -> Any:
    soak = 6 * seconds_per_interval
    return RolloutPlanSchema().load({
        "stages": [{"percentage": p, "min_duration_seconds": soak} for p in (5, 25, 50, 100)],
        "guardrails": [{"event": "checkout", "kind": "conversion"}],
        "mode": "auto",
        "interval_seconds": seconds_per_interval,
    })


def _arms_line(store: Store, env: str, flag: str) -> str:
    stages = store.list_stages(env, flag)
    counts = store.stage_counts(env, flag, stages[-1]["stage"])
    parts = []
    for arm, label in (("on", "canary"), ("off", "control")):
        randomized = counts.get(arm, {}).get("randomized", {"exposed": 0, "events": {}})
        n = randomized["exposed"]
        x = randomized["events"].get("checkout", {}).get("users", 0)
        rate = f"{x / n:6.1%}" if n else "    - "
        parts.append(f"{label} {n:>6,} users, conversion {rate}")
    return " | ".join(parts)


def _run_release(service: RolloutService, controller: Controller, client: FlagClient, flag: str,
                 canary_rate: float, seconds_per_interval: float, users_per_second: int, deadline: float,
                 say: Callable[[str], None]) -> str:
    store, env = service.store, "production"
    put_plan(service, env, flag, _plan(seconds_per_interval), actor=ACTOR)
    act(service, env, flag, "start", actor=ACTOR, now=time.time())
    say(f"\n▶ {flag}: rollout started at 5% (plan 5 → 25 → 50 → 100%, guardrail: checkout conversion)")
    last_reason = ""
    with _Traffic(client, flag, canary_rate, users_per_second):
        while time.time() < deadline:
            time.sleep(seconds_per_interval / 2)
            client.flush(timeout=2)
            controller.run_once(time.time())
            rollout = service.load(env, flag)
            decisions = store.list_decisions(env, flag, limit=1)
            reason = decisions[0]["reason"] if decisions else ""
            stage = rollout.config.stages[rollout.plan_state.stage_index].percentage if rollout.plan_state else 0
            say(f"  [{stage:>3g}%] {_arms_line(store, env, flag)}")
            if reason and reason != last_reason and not reason.startswith("held"):
                say(f"  → {reason}")
            last_reason = reason
            if rollout.status not in ("running", "waiting_for_approval"):
                return rollout.status
    return "timed out"


def run_demo(*, seconds_per_interval: float = 1.0, users_per_second: int = 2000, port: int = 0,
             keep_serving: bool = False, out: TextIO = sys.stdout) -> dict[str, str]:
    """Tell the story; returns the final status of both releases. With `keep_serving`,
    the server stays up afterwards until interrupted."""
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    folder = tempfile.mkdtemp(prefix="flagserver-demo-")
    app = create_app({"DATABASE_URL": f"sqlite:///{folder}/demo.db", "SECRET_KEY": "demo"})
    store: Store = app.extensions["flagserver.store"]
    store.create_environment("production", "Production", actor=ACTOR)
    admin_token = create_token(store, "admin", "demo-admin", None, ACTOR)["token"]
    sdk_key = create_token(store, "sdk", "demo-app", "production", ACTOR)["token"]
    for key, description in (("new-checkout", "The new checkout flow"),
                             ("checkout-redesign", "A redesign that secretly hurts conversion")):
        store.create_flag("production", {"key": key, "description": description, "enabled": True, "rollout": 0,
                                         "rules": []}, actor=ACTOR)
    server = make_server("127.0.0.1", port, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, name="demo-server", daemon=True).start()
    service = RolloutService(store)
    controller = Controller(store)
    results: dict[str, str] = {}
    say(f"flagserver demo: a server at {url} on {folder}/demo.db, {users_per_second:,} simulated users a second")
    say(f"admin token: {admin_token}")
    client = FlagClient(url, sdk_key, poll_interval=1, flush_interval=0.25, init_timeout=5)
    try:
        started = time.time()
        results["new-checkout"] = _run_release(service, controller, client, "new-checkout", BASE_RATE,
                                               seconds_per_interval, users_per_second, started + 75, say)
        say(f"■ new-checkout: {results['new-checkout'].replace('_', ' ')}")
        results["checkout-redesign"] = _run_release(service, controller, client, "checkout-redesign",
                                                    BASE_RATE * 0.7, seconds_per_interval, users_per_second,
                                                    time.time() + 40, say)
        say(f"■ checkout-redesign: {results['checkout-redesign'].replace('_', ' ')}; the SDK now serves it to "
            f"{'nobody' if not client.is_enabled('checkout-redesign', {'key': 'anyone'}) else 'some users'}")
        say(f"done in {time.time() - started:.0f}s")
        if keep_serving:
            say(f"\nThe server keeps running: {url}/admin (token above), {url}/api/v1/openapi.json. Ctrl-C stops it.")
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return results
