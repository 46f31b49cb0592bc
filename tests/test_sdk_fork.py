"""The SDK across os.fork(), as gunicorn --preload and uwsgi use it: the child gets its
own sync thread, session and locks, keeps the snapshot it was born with, and sees
changes made after the fork. Against the real server on loopback."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from flagsdk import FlagClient
from flagsdk._sync import ConfigSync

from tests.live_server import LiveServer
from tests.support import wait_for
from tests.test_sdk_sync import USER, set_rollout, sync_threads

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def fork_and_report(child: Callable[[], dict[str, Any]], after_fork: Callable[[], None] = lambda: None,
                    timeout: float = 15.0) -> dict[str, Any]:
    """Run `child()` in a forked process and return what it reported (JSON through a
    pipe). The child always leaves with os._exit; `after_fork` runs in the parent."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            signal.alarm(int(timeout))  # a hung child dies rather than hanging the suite
            try:
                result = child()
                code = 0
            except BaseException:
                result = {"error": traceback.format_exc()}
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        after_fork()
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the forked child did not report in time")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in report, report.get("error")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return report


def test_a_forked_child_syncs_on_its_own(live_server: LiveServer, store: Any, sdk_key: str) -> None:
    set_rollout(store, "new-checkout", 100)
    with FlagClient(live_server.url, sdk_key, poll_interval=1, events=False) as client:
        assert client.is_enabled("new-checkout", USER)
        parent_thread = sync_threads()[0].ident

        def child() -> dict[str, Any]:
            born_with = client.is_enabled("new-checkout", USER)  # before any poll of its own
            threads = [t.ident for t in sync_threads()]
            # Not wait_for: the child reports what it saw (and still closes), the parent judges.
            deadline = time.monotonic() + 6
            while client.is_enabled("new-checkout", USER) and time.monotonic() < deadline:
                time.sleep(0.02)
            seen = not client.is_enabled("new-checkout", USER)
            client.close()
            return {"born_with": born_with, "ready": client.is_ready(), "threads": threads, "seen": seen,
                    "threads_after_close": len(sync_threads())}

        report = fork_and_report(child, after_fork=lambda: set_rollout(store, "new-checkout", 0))

        assert report["born_with"] is True  # the child kept the parent's snapshot
        assert report["ready"] is True
        assert len(report["threads"]) == 1  # a thread of its own (the parent's do not survive a fork)
        assert report["seen"] is True  # its own thread fetched the change made after the fork
        assert report["threads_after_close"] == 0
        # and the parent goes on as before
        wait_for(lambda: not client.is_enabled("new-checkout", USER), 3, what="the parent to see the change")
        assert [t.ident for t in sync_threads()] == [parent_thread]


def test_a_closed_client_starts_nothing_in_a_child(live_server: LiveServer, store: Any, sdk_key: str) -> None:
    set_rollout(store, "new-checkout", 100)
    client = FlagClient(live_server.url, sdk_key, poll_interval=1, events=False)
    client.close()

    report = fork_and_report(lambda: {"threads": len(sync_threads()),
                                      "enabled": client.is_enabled("new-checkout", USER)})

    assert report == {"threads": 0, "enabled": True}


def test_the_fork_hook_keeps_no_sync_alive() -> None:
    sync = ConfigSync("http://127.0.0.1:9", "key", apply_document=lambda document: True)
    ref = weakref.ref(sync)
    sync.close()
    del sync
    gc.collect()

    assert ref() is None
