"""Config sync of the SDK against real HTTP on loopback.

Most tests run the real flag server (`live_server`, stopped and restarted for
outages) with a real SDK key; a tiny fake server stands in only for what the real
one cannot be made to do: 5xx, 429, garbage bodies, a 403, a server that hangs.
Nothing of ours is mocked; waiting is polling with a deadline.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flagsdk import FlagClient, __version__
from flagsdk._sync import CONFIG_PATH, backoff_delay
from flask import Flask

from tests.live_server import LiveServer
from tests.support import wait_for

USER = {"key": "user-1"}
CONFIG = "/api/v1/sdk/config"


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flagsdk.sync"]


def sdk_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("flagsdk") and r.levelno >= logging.ERROR]


# -- the real server ------------------------------------------------------------------


class Recorder:
    """WSGI middleware on the real app: remembers each SDK config request."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        seen = {
            "path": environ.get("PATH_INFO"),
            "if_none_match": environ.get("HTTP_IF_NONE_MATCH"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "authorization": environ.get("HTTP_AUTHORIZATION"),
        }

        def recording_start_response(status: str, headers: Any, *args: Any) -> Any:
            seen["status"] = int(status.split()[0])
            return start_response(status, headers, *args)

        result = self.wsgi_app(environ, recording_start_response)
        if seen["path"] == CONFIG:
            with self._lock:
                self.requests.append(seen)
        return result

    def count(self) -> int:
        with self._lock:
            return len(self.requests)


@pytest.fixture
def recorder(app: Flask) -> Recorder:
    recorder = Recorder(app.wsgi_app)
    app.wsgi_app = recorder  # type: ignore[method-assign]
    return recorder


def set_rollout(store: Any, key: str, rollout: float, env: str = "production") -> None:
    """Create the flag `key` (variants off/on) or change its rollout percentage."""
    current = store.get_flag(env, key)
    if current is None:
        store.create_flag(env, {"key": key, "variants": ["off", "on"], "enabled": True, "rules": [],
                                "rollout": rollout}, actor="test")
    else:
        store.update_flag(env, key, {"rollout": rollout}, expected_version=current["version"], actor="test")


@pytest.fixture
def make_client() -> Iterator[Callable[..., FlagClient]]:
    """Builds FlagClients and closes every one of them after the test."""
    clients: list[FlagClient] = []

    def make(*args: Any, **kwargs: Any) -> FlagClient:
        kwargs.setdefault("poll_interval", 1)
        kwargs.setdefault("events", False)  # event reporting has its own tests
        client = FlagClient(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    wait_for(lambda: not sync_threads(), 5, what="every flagsdk.sync thread to end")


def test_first_fetch_makes_the_client_ready(live_server: LiveServer, store: Any, sdk_key: str,
                                            recorder: Recorder, make_client: Callable[..., FlagClient]) -> None:
    set_rollout(store, "new-checkout", 100)

    client = make_client(live_server.url, sdk_key)

    assert client.is_ready()
    assert client.is_enabled("new-checkout", USER)
    age = client.config_age()
    assert age is not None and age < 1
    first = recorder.requests[0]
    assert first["user_agent"] == f"flagsdk/{__version__}"
    assert first["authorization"] == f"Bearer {sdk_key}"
    assert first["if_none_match"] is None
    [thread] = sync_threads()
    assert thread.daemon


def test_a_change_is_seen_within_one_poll_interval(live_server: LiveServer, store: Any, sdk_key: str,
                                                   make_client: Callable[..., FlagClient]) -> None:
    set_rollout(store, "new-checkout", 100)
    changes: list[Any] = []
    client = make_client(live_server.url, sdk_key, poll_interval=1, on_change=changes.append)
    assert client.is_enabled("new-checkout", USER)

    set_rollout(store, "new-checkout", 0)

    # 5 s: a client that ignored poll_interval would poll every 10 s (the default).
    wait_for(lambda: not client.is_enabled("new-checkout", USER), timeout=5, what="the change")
    assert len(changes) == 2


def test_an_unchanged_config_costs_a_304_and_no_parsing(live_server: LiveServer, store: Any, sdk_key: str,
                                                        recorder: Recorder,
                                                        make_client: Callable[..., FlagClient]) -> None:
    set_rollout(store, "new-checkout", 100)
    changes: list[Any] = []
    client = make_client(live_server.url, sdk_key, poll_interval=1, on_change=changes.append)

    wait_for(lambda: recorder.count() >= 2, timeout=3, what="two polls")

    first, *later = recorder.requests[:2]
    assert first["status"] == 200
    assert first["if_none_match"] is None
    for request in later:
        assert request["status"] == 304
        assert request["if_none_match"] == '"production-2"'  # environments, then the flag, bumped it
    assert len(changes) == 1  # the 304s were not parsed again
    age = client.config_age()
    assert age is not None and age < 1.2  # a 304 confirms the config


def test_an_outage_keeps_the_last_config_and_a_restart_brings_changes(
        live_server: LiveServer, store: Any, sdk_key: str, caplog: pytest.LogCaptureFixture,
        make_client: Callable[..., FlagClient]) -> None:
    set_rollout(store, "new-checkout", 100)
    client = make_client(live_server.url, sdk_key, poll_interval=1)
    assert client.is_enabled("new-checkout", USER)

    live_server.stop()
    wait_for(lambda: any("failed" in r.getMessage() for r in caplog.records if r.name == "flagsdk._sync"),
             timeout=3, what="a failed poll")

    for _ in range(100):
        assert client.is_enabled("new-checkout", USER)
        assert client.evaluate("new-checkout", USER).variant == "on"
    assert client.is_ready()
    age = client.config_age()
    assert age is not None and age >= 0.9  # not confirmed since the last poll that worked

    set_rollout(store, "new-checkout", 0)
    live_server.start()

    wait_for(lambda: not client.is_enabled("new-checkout", USER), timeout=6, what="the change after the restart")
    age = client.config_age()
    assert age is not None and age < 1
    assert not sdk_errors(caplog)


def test_a_cold_start_with_the_server_down_serves_the_cache(
        live_server: LiveServer, store: Any, sdk_key: str, tmp_path: Path,
        make_client: Callable[..., FlagClient]) -> None:
    (tmp_path / "cache").mkdir()
    cache = tmp_path / "cache" / "flags.json"
    set_rollout(store, "new-checkout", 100)
    first = make_client(live_server.url, sdk_key, cache_path=cache)
    assert first.is_enabled("new-checkout", USER)
    first.close()
    saved = json.loads(cache.read_text())
    assert saved["etag"] == '"production-2"'
    assert saved["document"]["flags"]["new-checkout"]["rollout"] == 100
    assert sdk_key not in cache.read_text()
    assert [p.name for p in cache.parent.iterdir()] == ["flags.json"]  # no temporary files left
    live_server.stop()
    written = time.time() - 120
    os.utime(cache, (written, written))

    began = time.monotonic()
    client = make_client(live_server.url, sdk_key, cache_path=cache, init_timeout=30)

    assert time.monotonic() - began < 5  # a refused connection does not make it wait init_timeout (30 s)
    assert client.is_ready()
    assert client.is_enabled("new-checkout", USER)
    age = client.config_age()
    assert age is not None and 119 < age < 125

    set_rollout(store, "new-checkout", 0)
    live_server.start()
    wait_for(lambda: not client.is_enabled("new-checkout", USER), timeout=5, what="the server's config")
    wait_for(lambda: json.loads(cache.read_text())["document"]["flags"]["new-checkout"]["rollout"] == 0,
             timeout=2, what="the cache to follow")  # written just after the new config is applied


def test_a_warm_cache_is_confirmed_with_its_etag(live_server: LiveServer, store: Any, sdk_key: str,
                                                 recorder: Recorder, tmp_path: Path,
                                                 make_client: Callable[..., FlagClient]) -> None:
    cache = tmp_path / "flags.json"
    set_rollout(store, "new-checkout", 100)
    make_client(live_server.url, sdk_key, cache_path=cache).close()
    old = time.time() - 300
    os.utime(cache, (old, old))

    changes: list[Any] = []
    client = make_client(live_server.url, sdk_key, cache_path=cache, on_change=changes.append)

    assert client.is_enabled("new-checkout", USER)
    assert [r["status"] for r in recorder.requests] == [200, 304]
    assert recorder.requests[1]["if_none_match"] == '"production-2"'
    assert len(changes) == 1
    age = client.config_age()
    assert age is not None and age < 1
    assert time.time() - cache.stat().st_mtime < 5  # the confirmation refreshed the file's age


def test_a_cache_of_another_key_is_not_served(live_server: LiveServer, app: Flask, store: Any, sdk_key: str,
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              make_client: Callable[..., FlagClient]) -> None:
    from flagserver.auth import create_token

    cache = tmp_path / "flags.json"
    set_rollout(store, "new-checkout", 100)
    make_client(live_server.url, sdk_key, cache_path=cache).close()
    staging_key = create_token(store, "sdk", "staging-sdk", "staging", "test")["token"]
    live_server.stop()

    client = make_client(live_server.url, staging_key, cache_path=cache, init_timeout=0.3)

    assert not client.is_ready()
    assert not client.is_enabled("new-checkout", USER)
    assert any("another SDK key" in r.getMessage() for r in caplog.records)


def test_a_cold_start_without_server_or_cache_serves_defaults(
        live_server: LiveServer, store: Any, sdk_key: str, make_client: Callable[..., FlagClient]) -> None:
    set_rollout(store, "new-checkout", 100)
    live_server.stop()

    began = time.monotonic()
    client = make_client(live_server.url, sdk_key, init_timeout=0.5)
    waited = time.monotonic() - began

    assert 0.45 <= waited < 1.5
    assert not client.is_ready()
    assert client.config_age() is None
    assert client.is_enabled("new-checkout", USER, default=True) is True
    assert client.evaluate("new-checkout", USER, default="off").reason == "ERROR"

    live_server.start()  # and it goes on in the background
    wait_for(client.is_ready, timeout=5, what="the first config")
    assert client.is_enabled("new-checkout", USER)


def test_a_wrong_key_logs_one_error_and_stops_polling(live_server: LiveServer, sdk_key: str, recorder: Recorder,
                                                      caplog: pytest.LogCaptureFixture,
                                                      make_client: Callable[..., FlagClient]) -> None:
    client = make_client(live_server.url, "fss_0000000000000000_wrong", poll_interval=1, init_timeout=2)

    wait_for(lambda: not sync_threads(), timeout=2, what="the sync thread to stop")
    assert [r["status"] for r in recorder.requests] == [401]
    [error] = sdk_errors(caplog)
    assert "401" in error.getMessage()
    assert "fss_0000000000000000_wrong" not in caplog.text
    assert not client.is_ready()
    assert client.is_enabled("anything", USER, default=True) is True


# -- a fake server for what the real one cannot be made to do ---------------------------------


DOCUMENT = {"environment": "production", "version": 1, "segments": {},
            "flags": {"new-checkout": {"enabled": True, "variants": ["off", "on"], "rules": [], "rollout": 100}}}


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hanging request: expected here


class FakeServer:
    """`GET /api/v1/sdk/config` with ETag/304, or whatever it is told to answer."""

    def __init__(self) -> None:
        self.document: Any = DOCUMENT
        self.etag = '"production-1"'
        self.status = 200  # anything but 200: answer that status with `body`
        self.body: bytes | None = None  # served instead of the document when set
        self.headers: dict[str, str] = {}
        self.hang = threading.Event()  # set: requests wait until `released` is set
        self.released = threading.Event()
        self.requests: list[tuple[float, str | None]] = []  # (monotonic time, If-None-Match)
        self.port = 0
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> int:
        return len(self.requests)

    def has_seen(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.requests) >= n

    def start(self) -> FakeServer:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.requests.append((time.monotonic(), self.headers.get("If-None-Match")))
                if fake.hang.is_set():
                    fake.released.wait(10)
                if self.path != CONFIG_PATH:
                    return self._send(404, b"{}")
                if fake.status != 200:
                    return self._send(fake.status, fake.body or b'{"error": "no"}')
                if fake.body is not None:
                    return self._send(200, fake.body)
                if self.headers.get("If-None-Match") == fake.etag:
                    return self._send(304, b"", {"ETag": fake.etag})
                return self._send(200, json.dumps(fake.document).encode(), {"ETag": fake.etag})

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in {**fake.headers, **(headers or {})}.items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-config-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = None


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


def requests_between(fake: FakeServer, start: float, end: float) -> int:
    return sum(1 for at, _ in fake.requests if start <= at < end)


def test_server_errors_back_off_and_a_success_resets_the_backoff(
        fake: FakeServer, make_client: Callable[..., FlagClient], caplog: pytest.LogCaptureFixture) -> None:
    fake.status = 500
    client = make_client(fake.url, "key", poll_interval=1, init_timeout=0.1)
    assert not client.is_ready()

    wait_for(fake.has_seen(3), timeout=3, what="three failed polls")
    fake.status = 200
    wait_for(client.is_ready, timeout=4, what="the recovery")
    fake.status = 500  # a second outage
    wait_for(fake.has_seen(6), timeout=5, what="two failed polls of the second outage")

    at = [t for t, _ in fake.requests]
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    # Before the first config it retries soon, doubling: 0.25-0.5s, 0.5-1s, 1-2s (up to the cap)
    assert gaps[0] >= 0.2 and gaps[1] >= 0.45 and gaps[2] >= 0.9
    # after the success: the poll interval, then 1-2s again, not 8-16s: the success reset the count
    assert gaps[4] <= 2.5
    assert client.is_enabled("new-checkout", USER)  # the last good config stays through the outage
    warnings = [r for r in caplog.records if r.name == "flagsdk._sync" and r.levelno >= logging.WARNING]
    assert [("HTTP 500" in r.getMessage()) for r in warnings] == [True, True]  # once per outage, not per poll


def test_429_obeys_retry_after(fake: FakeServer, make_client: Callable[..., FlagClient]) -> None:
    client = make_client(fake.url, "key", poll_interval=1)
    fake.status, fake.headers = 429, {"Retry-After": "2"}
    wait_for(lambda: fake.count() >= 2, timeout=3, what="a 429")
    fake.status, fake.headers = 200, {}

    wait_for(lambda: fake.count() >= 3, timeout=5, what="the retry")
    assert fake.requests[2][0] - fake.requests[1][0] >= 1.95
    assert client.is_enabled("new-checkout", USER)


def test_a_body_that_is_not_a_config_is_refused(fake: FakeServer, make_client: Callable[..., FlagClient],
                                                caplog: pytest.LogCaptureFixture) -> None:
    changes: list[Any] = []
    client = make_client(fake.url, "key", poll_interval=1, on_change=changes.append)

    for n, garbage in enumerate([b"<html>502 Bad Gateway</html>", b'{"not": "a config"}', b'{"not": "a config"}'],
                                start=2):
        fake.body = garbage
        wait_for(fake.has_seen(n), timeout=3, what="a poll of the garbage")
        assert client.is_enabled("new-checkout", USER)
    assert client.is_ready()
    assert len(changes) == 1
    assert len(sdk_errors(caplog)) == 2  # one per bad body: the same one again is not logged again
    intervals = [b - a for (a, _), (b, _) in zip(fake.requests, fake.requests[1:], strict=False)]
    assert max(intervals) < 1.5  # the server answers: no backoff, a fix is seen at once

    fake.body = None
    fake.document, fake.etag = {**DOCUMENT, "flags": {}}, '"production-2"'
    wait_for(lambda: not client.is_enabled("new-checkout", USER), timeout=3, what="a good config again")


def test_403_later_stops_polling_and_keeps_the_config(fake: FakeServer, make_client: Callable[..., FlagClient],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(fake.url, "key", poll_interval=1)
    fake.status = 403

    wait_for(lambda: not sync_threads(), timeout=3, what="the sync thread to stop")
    assert fake.count() == 2
    assert len(sdk_errors(caplog)) == 1
    assert client.is_enabled("new-checkout", USER)


def test_a_hanging_server_falls_back_to_the_cache_after_init_timeout(
        fake: FakeServer, tmp_path: Path, make_client: Callable[..., FlagClient]) -> None:
    cache = tmp_path / "flags.json"
    make_client(fake.url, "key", cache_path=cache).close()
    fake.hang.set()

    began = time.monotonic()
    client = make_client(fake.url, "key", cache_path=cache, init_timeout=0.5, timeout=10)

    # < 5 s: waiting for the request's own timeout (10 s) instead of init_timeout is the bug.
    assert 0.45 <= time.monotonic() - began < 5
    assert client.is_ready()
    assert client.is_enabled("new-checkout", USER)
    fake.released.set()  # the hung request ends, so that the thread can stop after the test


def test_close_is_quick_idempotent_and_ends_the_thread(fake: FakeServer) -> None:
    client = FlagClient(fake.url, "key", poll_interval=30, events=False)
    assert client.is_ready()

    began = time.monotonic()
    client.close()
    client.close()

    # The sleeping thread is woken, not waited for: waiting would take its 30 s interval
    # (or give up after CLOSE_TIMEOUT with the thread still alive, as the next line checks).
    assert time.monotonic() - began < 5
    assert not sync_threads()
    assert client.is_enabled("new-checkout", USER)  # the last config stays usable


def test_close_from_on_change_does_not_deadlock(fake: FakeServer) -> None:
    holder: list[FlagClient] = []
    closed = threading.Event()

    def on_change(_: Any) -> None:
        if holder:
            holder[0].close()
            closed.set()

    client = FlagClient(fake.url, "key", poll_interval=1, on_change=on_change, events=False)
    holder.append(client)
    fake.document, fake.etag = {**DOCUMENT, "flags": {}}, '"production-2"'

    wait_for(closed.is_set, timeout=3, what="close from on_change")
    wait_for(lambda: not sync_threads(), timeout=3, what="the thread to end")
    client.close()


def test_programmer_errors_raise_and_a_short_interval_is_clamped(
        fake: FakeServer, caplog: pytest.LogCaptureFixture, make_client: Callable[..., FlagClient]) -> None:
    with pytest.raises(ValueError):
        FlagClient("flags.internal:8000", "key")
    with pytest.raises(ValueError):
        FlagClient(fake.url, "key", timeout=0)
    with pytest.raises(ValueError):
        FlagClient(fake.url, "key", poll_interval=float("nan"))

    make_client(fake.url, "key", poll_interval=0.1)

    assert any("below the minimum" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    wait_for(lambda: fake.count() >= 2, timeout=3, what="a second poll")
    assert fake.requests[1][0] - fake.requests[0][0] >= 0.7  # not 0.1


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures, low, high in [(1, 1, 2), (2, 2, 4), (3, 4, 8), (6, 30, 60), (40, 30, 60)]:
        delays = [backoff_delay(failures, base=1.0, cap=60.0, rng=rng) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert max(delays) - min(delays) > (high - low) / 2  # jittered, not fixed
