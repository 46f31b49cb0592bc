"""Webhooks survive shutdown: a `flagserver controller` process stopped with SIGTERM
delivers what it queued before it exits (its sender's threads are daemons, so
without `close()` the queue would die with the process), and so does a web worker
that never closes its sender (the `atexit` backstop of `create_app`).

The processes are real subprocesses on an SQLite file, the receiver a real HTTP
server on loopback. The receiver holds its answer to the first webhook until the
controller has stopped looking (it has released its lease), so the second webhook
is still queued when SIGTERM arrives: only a sender closed at shutdown delivers it.
Also here: each receiver's thread has its own HTTP session.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
import requests as real_requests

import flagserver.rollout.webhooks as webhooks_module
from flagserver.rollout.controller import LEASE_NAME
from flagserver.rollout.webhooks import WebhookSender, close_at_exit
from tests.api_helpers import create_flag, wait_for
from tests.conftest import dispose_app, make_app
from tests.rollout_helpers import act, put_plan
from tests.webhook_receiver import Receiver, independent_signature

REPO = Path(__file__).resolve().parent.parent
SECRET = "shutdown-secret"
FLAGS = ("f1", "f2")


def paused_by_hand(client, admin, key: str) -> None:  # type: ignore[no-untyped-def]
    """A started rollout whose flag a person then moved off the plan: the controller's
    first look pauses it and sends `rollout.paused`."""
    create_flag(client, admin, key=key)
    put_plan(client, admin, key=key)
    act(client, admin, "start", key=key)
    moved = client.patch(f"/api/v1/envs/production/flags/{key}", json={"rollout": 40}, headers=admin)
    assert moved.status_code == 200, moved.get_data(as_text=True)


@pytest.mark.slow
def test_a_controller_stopped_with_sigterm_delivers_its_queued_webhooks(tmp_path):
    from flagserver.auth import create_token

    app = make_app(tmp_path)
    store = app.extensions["flagserver.store"]
    token = create_token(store, "admin", "test-admin", None, "test")["token"]
    admin = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    for key in FLAGS:
        paused_by_hand(client, admin, key)

    with Receiver(responses=[("slow", 30.0, 200)]) as receiver:
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "FLAGSERVER_DATABASE_URL": app.config["DATABASE_URL"],
               "FLAGSERVER_INSTANCE_PATH": str(tmp_path / "instance"),
               "FLAGSERVER_SECRET_KEY": "test",
               "FLAGSERVER_WEBHOOK_URLS": receiver.url,
               "FLAGSERVER_WEBHOOK_SECRET": SECRET}
        log = (tmp_path / "controller.log").open("wb")
        process = subprocess.Popen([sys.executable, "-m", "flagserver", "controller", "--poll", "0.1"],
                                   cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Given both rollouts paused by the controller, the first webhook held by the
            # receiver and the second queued behind it
            wait_for(lambda: all(store.get_rollout("production", key)["state"]["plan_state"]["status"] == "paused"
                                 for key in FLAGS), timeout=20)
            wait_for(lambda: len(receiver.received()) == 1, timeout=10)

            # When the controller is told to stop, and has stopped looking
            process.send_signal(signal.SIGTERM)
            wait_for(lambda: store.acquire_lease(LEASE_NAME, "test-probe", 60.0), timeout=10)
            receiver.stopping.set()  # the first webhook is answered only now

            # Then it delivers the queued webhook before it exits, and exits cleanly
            returncode = process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            log.close()
            requests = receiver.received()
    dispose_app(app)

    output = (tmp_path / "controller.log").read_text(errors="replace")
    assert returncode == 0, output[-2000:]
    assert [r.event for r in requests] == ["rollout.paused", "rollout.paused"], output[-2000:]
    assert sorted(r.json()["flag"] for r in requests) == sorted(FLAGS)
    assert all(independent_signature(SECRET, r.headers["x-flagserver-signature"], r.body) for r in requests)


def test_a_web_worker_that_never_closes_its_sender_delivers_at_exit(tmp_path):
    """The atexit backstop `create_app` registers: a process that queues webhooks and
    exits without closing anything still delivers them (the first answer is slow,
    so the second is still queued when the process reaches its exit)."""
    script = ("from flagserver import create_app\n"
              "app = create_app()\n"
              "for key in ('f1', 'f2'):\n"
              "    app.extensions['flagserver.rollouts'].webhooks.send('rollout.rolled_back', {'flag': key})\n")
    with Receiver(responses=[("slow", 0.5, 200)]) as receiver:
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "FLAGSERVER_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
               "FLAGSERVER_INSTANCE_PATH": str(tmp_path / "instance"),
               "FLAGSERVER_SECRET_KEY": "test",
               "FLAGSERVER_WEBHOOK_URLS": receiver.url,
               "FLAGSERVER_WEBHOOK_SECRET": SECRET}
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              timeout=30)
        requests = receiver.received()

    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert [r.json()["flag"] for r in requests] == ["f1", "f2"]


def test_the_exit_hook_holds_its_sender_weakly():
    sender = WebhookSender(["http://127.0.0.1:9/hook"], SECRET)
    close_at_exit(sender)
    ref = weakref.ref(sender)

    del sender
    gc.collect()

    assert ref() is None


def test_each_receiver_is_posted_to_on_its_own_session(monkeypatch):
    """A requests.Session is not thread-safe: each URL's thread has one of its own,
    and close() closes them all."""
    used: dict[int, set[int]] = {}
    closed: list[int] = []

    class RecordingSession(real_requests.Session):
        def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            used.setdefault(id(self), set()).add(threading.get_ident())
            return super().request(*args, **kwargs)

        def close(self) -> None:
            closed.append(id(self))
            super().close()

    monkeypatch.setattr(webhooks_module.requests, "Session", RecordingSession)
    with Receiver() as first, Receiver() as second:
        sender = WebhookSender([first.url, second.url], SECRET)
        for n in range(3):
            sender.send("rollout.notice", {"n": n})
        wait_for(lambda: sender.delivered == 6, timeout=10)
        sender.close(timeout=2)

    assert len(used) == 2  # one session per URL...
    assert all(len(threads) == 1 for threads in used.values())  # ...used by one thread
    assert len(set.union(*used.values())) == 2
    assert sorted(closed) == sorted(used)
