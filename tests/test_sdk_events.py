"""Event reporting of the SDK: exposures and conversions, buffered, batched, gzipped,
retried and counted, over real HTTP on loopback.

`Receiver` stands in for the outside world where the real server cannot be made to
misbehave on demand (500s, answers later than the client waits, 4xx, 401): a small
http.server that serves a config document, gunzips and records every event batch,
and answers each POST as the test tells it to. The end-to-end tests at the bottom
run the real flag server (`live_server`) on SQLite and on Redis and read what it
counted through its stats API. Nothing of ours is mocked; waiting is polling with a
deadline.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flagsdk import FlagClient, User
from flagsdk._events import EVENTS_PATH

from tests.support import wait_for
from tests.test_sdk_fork import fork_and_report

CONFIG_PATH = "/api/v1/sdk/config"
KEY = "sdk-test-key"


def document(version: int = 1, rollout: float = 50, flag_version: int = 3) -> dict[str, Any]:
    return {
        "environment": "production",
        "version": version,
        "segments": {"staff": {"included": ["staff-1"]}},
        "flags": {
            "new-checkout": {"enabled": True, "variants": ["off", "on"], "version": flag_version,
                             "rules": [{"id": "staff", "segments": ["staff"], "serve": "on"}],
                             "rollout": rollout},
            "killed": {"enabled": False, "variants": ["off", "on"], "rules": [], "rollout": 100, "version": 1},
            "layout": {"enabled": True, "variants": ["control", "blue"], "rules": [],
                       "rollout": {"control": 5000, "blue": 5000}, "version": 1},
        },
    }


# -- the receiver --------------------------------------------------------------------------------


@dataclass
class Answer:
    """How the receiver answers one POST: a status (202 means accept), after `delay` seconds."""

    status: int = 202
    delay: float = 0.0
    body: dict[str, Any] | None = None


@dataclass
class Post:
    batch_id: str
    events: list[dict[str, Any]]
    headers: dict[str, str]
    raw: bytes
    status: int = 0


@dataclass
class Receiver:
    """Serves `document` and records POSTed event batches; `answer(...)` queues replies."""

    document: dict[str, Any] = field(default_factory=document)
    posts: list[Post] = field(default_factory=list)
    stored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # accepted, by batch id
    answers: list[Answer] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    _server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *answers: Answer | int) -> None:
        with self.lock:
            self.answers.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def events(self) -> list[dict[str, Any]]:
        """Every event stored (each accepted batch once), in arrival order."""
        with self.lock:
            return [e for batch in self.stored.values() for e in batch]

    def exposures(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["kind"] == "exposure"]

    def tracks(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["kind"] == "track"]

    def has(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.events()) >= n

    def posted(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.posts) >= n

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != CONFIG_PATH:
                    return self._send(404, {"error": {"message": "no such path"}})
                doc = receiver.document
                etag = f'"production-{doc["version"]}"'
                if self.headers.get("If-None-Match") == etag:
                    return self._send(304, None, {"ETag": etag})
                self._send(200, doc, {"ETag": etag})

            def do_POST(self) -> None:  # noqa: N802
                if self.path != EVENTS_PATH:
                    return self._send(404, {"error": {"message": "no such path"}})
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                batch = json.loads(body)
                post = Post(batch["batch_id"], batch["events"], dict(self.headers), raw)
                with receiver.lock:
                    receiver.posts.append(post)
                    answer = receiver.answers.pop(0) if receiver.answers else Answer()
                    duplicate = batch["batch_id"] in receiver.stored
                    if answer.status == 202 or answer.delay:  # a late answer: stored, acknowledged late
                        receiver.stored.setdefault(batch["batch_id"], batch["events"])
                post.status = answer.status
                if answer.delay:
                    receiver.released.wait(answer.delay)
                if answer.status == 202:
                    reply = {"batch_id": batch["batch_id"], "accepted": len(batch["events"]), "duplicate": duplicate}
                    return self._send(202, reply)
                self._send(answer.status, answer.body or {"error": {"status": answer.status, "message": "no"}})

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that stopped waiting for a late answer: expected here

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="events-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def event_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flagsdk.events"]


@pytest.fixture
def make_client() -> Iterator[Callable[..., FlagClient]]:
    """Builds online FlagClients (long interval unless told) and closes them after the test."""
    clients: list[FlagClient] = []

    def make(url: str, sdk_key: str = KEY, **kwargs: Any) -> FlagClient:
        kwargs.setdefault("poll_interval", 60)
        kwargs.setdefault("flush_interval", 60)
        client = FlagClient(url, sdk_key, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=1)
    wait_for(lambda: not event_threads(), 5, what="every flagsdk.events thread to end")


def sdk_logs(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("flagsdk") and r.levelno >= level]


def label(event: dict[str, Any], exposure_field: str = "flag") -> str:
    """A track's event name, or a field of an exposure."""
    return str(event["event"] if event["kind"] == "track" else event[exposure_field])


def users(n: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [{"key": f"{prefix}-{i}"} for i in range(n)]


# -- recording and the wire format -------------------------------------------------------------


def test_exposures_and_tracks_arrive_in_one_gzipped_batch(receiver: Receiver,
                                                          make_client: Callable[..., FlagClient]) -> None:
    # Given an online client
    client = make_client(receiver.url)
    [thread] = event_threads()
    assert thread.daemon
    before = time.time()

    # When it evaluates and tracks, then flushes
    on = client.is_enabled("new-checkout", {"key": "staff-1"})
    served = client.variant("layout", User("user-7", {"plan": "pro"}))
    client.evaluate("killed", {"key": "user-7"})
    client.track("checkout_completed", {"key": "staff-1"}, value=49.9)
    client.track("signup", User("user-7"))
    assert client.flush(timeout=5)

    # Then one POST carried them, gzipped, with the SDK key, in the server's wire format
    [post] = receiver.posts
    assert post.headers["Content-Encoding"] == "gzip"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Authorization"] == f"Bearer {KEY}"
    assert 8 <= len(post.batch_id) <= 100
    assert on is True
    exposures = {e["flag"]: e for e in receiver.exposures()}
    assert exposures["new-checkout"] == {
        "kind": "exposure", "flag": "new-checkout", "variant": "on", "rule_id": "staff",
        "reason": "TARGETING_MATCH", "randomized": False, "flag_version": 3, "user": "staff-1",
        "at": exposures["new-checkout"]["at"]}
    assert exposures["layout"]["variant"] == served and exposures["layout"]["reason"] == "SPLIT"
    assert exposures["layout"]["randomized"] is True and exposures["layout"]["rule_id"] is None
    assert exposures["killed"]["reason"] == "DISABLED" and exposures["killed"]["variant"] == "off"
    assert [(t["event"], t["user"], t["value"]) for t in receiver.tracks()] == [
        ("checkout_completed", "staff-1", 49.9), ("signup", "user-7", None)]
    for event in receiver.events():
        assert before - 1 <= event["at"] <= time.time() + 1
    assert client.stats() == {"sent": 5, "failed": 0, "dropped": 0, "queued": 0,
                              "stopped": None}


def test_errors_are_not_exposures(receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    client = make_client(receiver.url)

    # When evaluations fail (unknown flag, no key, not a user), on every entry point
    assert client.is_enabled("no-such-flag", {"key": "u"}, default=True) is True
    assert client.variant("no-such-flag", {"key": "u"}, default="x") == "x"
    assert client.evaluate("new-checkout", {"name": "no key"}).reason == "ERROR"
    assert client.is_enabled("new-checkout", "not a user") is False
    client.is_enabled("killed", {"name": "no key"})  # served (a disabled flag needs no key), not reportable
    client.is_enabled("new-checkout", {"key": "k" * 513})  # served, but longer than the server accepts
    # ... and one that works
    client.is_enabled("new-checkout", {"key": "u"})
    assert client.flush(timeout=5)

    # Then only the successful evaluation was reported
    assert [(e["flag"], e["user"]) for e in receiver.events()] == [("new-checkout", "u")]


def test_a_full_batch_goes_out_at_once_and_the_interval_sends_the_rest(
        receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    # Given a batch size of 50 and a flush interval of 1 s
    client = make_client(receiver.url, event_batch_size=50, flush_interval=1)
    began = time.monotonic()

    # When 120 distinct users are exposed
    for user in users(120):
        client.is_enabled("new-checkout", user)

    # Then two full batches leave at once, without waiting for the interval
    wait_for(receiver.has(100), timeout=0.9, what="two full batches")
    assert [len(p.events) for p in receiver.posts] == [50, 50]
    assert client.stats()["queued"] == 20
    # ... and the interval sends the other 20
    wait_for(receiver.has(120), timeout=3, what="the partial batch at the interval")
    assert time.monotonic() - began >= 0.9
    assert [len(p.events) for p in receiver.posts] == [50, 50, 20]
    assert sorted(e["user"] for e in receiver.events()) == sorted(u["key"] for u in users(120))
    assert len({p.batch_id for p in receiver.posts}) == 3


def test_an_exposure_is_reported_once_per_user_variant_and_flag_version(
        receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    client = make_client(receiver.url, poll_interval=1)

    # When the same users are evaluated again and again, through every entry point
    for _ in range(50):
        for user in ({"key": "a"}, User("b"), {"key": "staff-1"}):
            client.is_enabled("new-checkout", user)
            client.evaluate("new-checkout", user)
            client.variant("new-checkout", user)
    assert client.flush(timeout=5)

    # Then each user was reported once
    assert sorted(e["user"] for e in receiver.exposures()) == ["a", "b", "staff-1"]

    # When the flag changes (a new version) the same users are reported again, once
    receiver.document = document(version=2, rollout=100, flag_version=4)
    wait_for(lambda: client.snapshot.config.version == 2, timeout=5, what="the new config")
    for _ in range(10):
        client.is_enabled("new-checkout", {"key": "a"})
        client.is_enabled("new-checkout", {"key": "staff-1"})
    assert client.flush(timeout=5)
    later = [(e["user"], e["variant"], e["flag_version"]) for e in receiver.exposures()[3:]]
    assert later == [("a", "on", 4), ("staff-1", "on", 4)]


def test_the_dedupe_memory_is_bounded_and_keeps_what_was_used_recently(
        receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    # Given a memory of 10 exposures (two generations of 5)
    client = make_client(receiver.url, exposure_dedupe_size=10)

    # When 11 users are seen, user-5 (among the last 5) and user-0 (the oldest) come back
    for user in users(11):
        client.evaluate("layout", user)
    client.evaluate("layout", {"key": "user-5"})  # recently seen: still remembered
    client.evaluate("layout", {"key": "user-0"})  # forgotten: reported again
    # ... and after 4 more new users (fewer than half the size), user-5 is still remembered
    for user in users(4, prefix="later"):
        client.evaluate("layout", user)
    client.evaluate("layout", {"key": "user-5"})
    assert client.flush(timeout=5)

    assert [e["user"] for e in receiver.events()] == (
        [f"user-{i}" for i in range(11)] + ["user-0"] + [f"later-{i}" for i in range(4)])


def test_track_records_any_event_and_never_raises(receiver: Receiver, make_client: Callable[..., FlagClient],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(receiver.url)

    # When good and bad calls are made
    client.track("checkout_completed", {"key": "u"}, value=49.9)
    client.track("items", {"key": "u"}, value=3)
    client.track("page_view", {"key": "u"})
    client.track("items", {"key": "u"}, value=float("nan"))
    client.track("items", {"key": "u"}, value="3")  # type: ignore[arg-type]
    client.track("items", {"key": "u"}, value=True)
    client.track("items", {"key": "u"}, value=10**400)
    client.track("", {"key": "u"})
    client.track(None, {"key": "u"})  # type: ignore[arg-type]
    client.track("x" * 201, {"key": "u"})
    client.track("signup", {"name": "no key"})
    client.track("signup", "u")
    client.track("signup", {"key": "k" * 513})
    assert client.flush(timeout=5)

    # Then the good ones arrived, the bad ones did not, and each kind of problem was logged once
    assert [(t["event"], t["value"]) for t in receiver.tracks()] == [
        ("checkout_completed", 49.9), ("items", 3.0), ("page_view", None)]
    logs = sdk_logs(caplog)
    assert len(logs) == 3, logs
    assert any("finite number" in m for m in logs)
    assert any("event name" in m for m in logs)
    assert any("'key'" in m for m in logs)


def test_offline_and_disabled_clients_record_nothing(receiver: Receiver,
                                                     make_client: Callable[..., FlagClient]) -> None:
    offline = FlagClient(offline=True, bootstrap=document())
    quiet = make_client(receiver.url, events=False)
    assert not event_threads()

    for client in (offline, quiet):
        client.is_enabled("new-checkout", {"key": "u"})
        client.track("signup", {"key": "u"})
        assert client.flush(timeout=1)
        assert client.stats()["sent"] == 0 and client.stats()["queued"] == 0
    offline.close()
    assert receiver.posts == []


def test_a_full_buffer_drops_the_oldest_and_counts_them(receiver: Receiver,
                                                        make_client: Callable[..., FlagClient],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # Given a buffer of 100 events and batches larger than that (nothing leaves on its own)
    client = make_client(receiver.url, event_capacity=100, event_batch_size=500)

    # When 250 events are recorded
    for i in range(250):
        client.track("purchase", {"key": f"user-{i}"}, value=i)

    # Then the 150 oldest were dropped and counted, and the drop was warned about once
    assert client.stats()["dropped"] == 150 and client.stats()["queued"] == 100
    assert client.flush(timeout=5)
    assert [t["value"] for t in receiver.tracks()] == [float(i) for i in range(150, 250)]
    assert client.stats() == {"sent": 100, "failed": 0, "dropped": 150, "queued": 0,
                              "stopped": None}
    for i in range(250, 500):
        client.track("purchase", {"key": f"user-{i}"}, value=i)
    assert client.flush(timeout=5)
    assert client.stats()["dropped"] == 300
    full = [m for m in sdk_logs(caplog) if "buffer is full" in m]
    assert len(full) == 1


# -- delivery: retries, refusals, deadlines ---------------------------------------------------------


def test_a_500_is_retried_with_the_same_batch(receiver: Receiver, make_client: Callable[..., FlagClient],
                                              caplog: pytest.LogCaptureFixture) -> None:
    # Given a server that fails twice
    receiver.answer(500, 503)
    client = make_client(receiver.url, flush_interval=0.1)

    # When events are recorded
    for user in users(10):
        client.is_enabled("new-checkout", user)
    client.track("signup", {"key": "user-1"})

    # Then the same batch (same id, same bytes) is sent until it is accepted, and counted once
    wait_for(receiver.has(11), timeout=5, what="the batch after two failures")
    assert [p.status for p in receiver.posts] == [500, 503, 202]
    assert len({p.batch_id for p in receiver.posts}) == 1
    assert len({p.raw for p in receiver.posts}) == 1
    wait_for(lambda: client.stats()["sent"] == 11, timeout=2, what="the count")
    assert client.stats()["failed"] == 0
    assert len([m for m in sdk_logs(caplog) if "retrying" in m]) == 1  # one warning per streak


def test_a_timeout_is_retried_with_the_same_batch_id_and_counted_once(
        receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    # Given a server that stores the first batch but answers later than the client waits
    receiver.answer(Answer(202, delay=2.0))
    client = make_client(receiver.url, timeout=0.5, flush_interval=0.1)

    # When events are sent
    for user in users(5):
        client.is_enabled("new-checkout", user)

    # Then the client gives up on the first answer and resends the same batch id
    wait_for(receiver.posted(2), timeout=5, what="the resend")
    first, second = receiver.posts[:2]
    assert first.batch_id == second.batch_id and first.raw == second.raw
    wait_for(lambda: client.stats()["sent"] == 5, timeout=3, what="the acknowledgement")
    # ... and the receiver, which de-duplicates by batch id, holds the events once
    assert len(receiver.events()) == 5


def test_a_4xx_drops_the_batch_and_reporting_goes_on(receiver: Receiver, make_client: Callable[..., FlagClient],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    receiver.answer(Answer(422, body={"error": {"status": 422, "code": "validation_error",
                                                "message": "events[0].at: must be epoch seconds",
                                                "fields": {"events[0].at": ["must be epoch seconds"]}}}))
    client = make_client(receiver.url)

    client.track("signup", {"key": "u1"})
    client.track("signup", {"key": "u2"})
    assert client.flush(timeout=5)
    client.track("signup", {"key": "u3"})
    assert client.flush(timeout=5)

    assert [p.status for p in receiver.posts] == [422, 202]
    assert [t["user"] for t in receiver.tracks()] == ["u3"]
    assert client.stats()["failed"] == 2 and client.stats()["sent"] == 1
    errors = sdk_logs(caplog, logging.ERROR)
    assert len(errors) == 1 and "422" in errors[0] and "events[0].at" in errors[0]


def test_a_flag_unknown_to_the_server_is_cut_out_and_the_rest_sent(
        receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    # Given a server that no longer knows the flag "layout" (deleted after the SDK evaluated it)
    client = make_client(receiver.url)
    client.evaluate("new-checkout", {"key": "u1"})
    client.evaluate("layout", {"key": "u1"})
    client.evaluate("layout", {"key": "u2"})
    client.track("signup", {"key": "u1"})
    receiver.answer(Answer(422, body={"error": {"status": 422, "message": "events[1].flag: no flag 'layout'",
                                                "fields": {"events[1].flag": ["no flag 'layout'"]}}}))

    assert client.flush(timeout=5)

    # Then the batch was sent again without that flag's exposures, under the same id
    first, second = receiver.posts
    assert first.batch_id == second.batch_id
    assert [label(e) for e in second.events] == ["new-checkout", "signup"]
    assert client.stats()["sent"] == 2 and client.stats()["failed"] == 2


def test_401_stops_reporting_with_one_error(receiver: Receiver, make_client: Callable[..., FlagClient],
                                            caplog: pytest.LogCaptureFixture) -> None:
    receiver.answer(401)
    client = make_client(receiver.url)
    client.track("signup", {"key": "u1"})

    assert client.flush(timeout=5)

    wait_for(lambda: not event_threads(), timeout=3, what="the flusher to stop")
    client.track("signup", {"key": "u2"})
    client.is_enabled("new-checkout", {"key": "u3"})
    assert client.flush(timeout=1)
    assert len(receiver.posts) == 1
    stats = client.stats()
    assert stats["stopped"] == "HTTP 401" and stats["failed"] == 1 and stats["queued"] == 0
    errors = sdk_logs(caplog, logging.ERROR)
    assert len(errors) == 1 and "401" in errors[0]
    assert client.is_enabled("new-checkout", {"key": "staff-1"})  # evaluation goes on


def test_flush_and_close_keep_their_deadlines(receiver: Receiver, make_client: Callable[..., FlagClient],
                                              caplog: pytest.LogCaptureFixture) -> None:
    # Given a server that always fails
    receiver.answer(*[500] * 1000)
    client = make_client(receiver.url)
    client.track("signup", {"key": "u1"})

    # When flush and close are given short deadlines
    # Upper bounds far from the deadlines, to tell a busy machine from a deadline not kept:
    # that would wait without end for events the server never takes (or flush's default 5 s).
    began = time.monotonic()
    assert client.flush(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - began < 3
    began = time.monotonic()
    client.close(timeout=0.5)
    assert time.monotonic() - began < 5
    client.close()  # idempotent

    # Then the client says what it could not send, and its thread ends
    assert client.stats()["queued"] == 1
    assert any("were not sent" in m for m in sdk_logs(caplog))
    wait_for(lambda: not event_threads(), timeout=3, what="the flusher to end")
    client.track("signup", {"key": "u2"})  # after close: ignored, never raises
    assert client.stats()["queued"] == 1


def test_close_sends_what_is_queued_and_records_nothing_after(receiver: Receiver,
                                                              make_client: Callable[..., FlagClient]) -> None:
    client = make_client(receiver.url)
    for user in users(3):
        client.is_enabled("layout", user)

    client.close(timeout=5)

    assert len(receiver.events()) == 3
    assert not event_threads()
    client.track("signup", {"key": "user-1"})
    assert client.flush(timeout=1) and client.stats()["queued"] == 0 and client.stats()["sent"] == 3


def test_a_client_left_open_is_flushed_at_exit(receiver: Receiver, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        "import sys\n"
        "from flagsdk import FlagClient\n"
        "client = FlagClient(sys.argv[1], 'k', poll_interval=60, flush_interval=60)\n"
        "client.track('exit_test', {'key': 'u1'}, value=1)\n"
        "client.is_enabled('new-checkout', {'key': 'u1'})\n"
    )  # and no close(): the atexit backstop flushes
    subprocess.run([sys.executable, str(script), receiver.url], check=True, timeout=30,
                   env={**os.environ, "PYTHONWARNINGS": "error"})

    assert sorted(label(e) for e in receiver.events()) == ["exit_test", "new-checkout"]


def test_a_forked_child_reports_its_own_events(receiver: Receiver, make_client: Callable[..., FlagClient]) -> None:
    # Given a parent with events queued
    client = make_client(receiver.url)
    client.track("parent_event", {"key": "p"})
    client.is_enabled("new-checkout", {"key": "shared"})

    def child() -> dict[str, Any]:
        before = client.stats()
        threads = [t.name for t in threading.enumerate()]
        client.track("child_event", {"key": "c"})
        client.is_enabled("new-checkout", {"key": "shared"})  # its own LRU: reported from here too
        delivered = client.flush(timeout=5)
        return {"before": before, "threads": threads, "delivered": delivered, "after": client.stats()}

    # When a child is forked and records and flushes
    report = fork_and_report(child)

    # Then the child started with an empty buffer and its own thread, and sent only its own events
    assert report["before"]["queued"] == 0 and report["before"]["sent"] == 0
    assert "flagsdk.events" in report["threads"]
    assert report["delivered"] and report["after"]["sent"] == 2
    assert sorted(label(e, "user") for e in receiver.events()) == ["child_event", "shared"]
    # ... and the parent still has its own, and sends them
    assert client.stats()["queued"] == 2
    assert client.flush(timeout=5)
    assert sorted(label(e, "user") for e in receiver.events()) == [
        "child_event", "parent_event", "shared", "shared"]


def test_recording_from_many_threads_loses_nothing(receiver: Receiver,
                                                   make_client: Callable[..., FlagClient]) -> None:
    client = make_client(receiver.url, event_batch_size=100, flush_interval=0.05)

    def work(t: int) -> None:
        for i in range(500):
            client.track("click", {"key": f"t{t}-u{i}"})
            client.is_enabled("layout", {"key": f"t{t}-u{i}"})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=10)

    assert client.stats()["sent"] == 8000 and client.stats()["dropped"] == 0
    events = receiver.events()
    assert len(events) == 8000
    assert len({(e["kind"], e["user"]) for e in events}) == 8000


def test_programmer_errors_in_the_options_raise() -> None:
    for options in ({"event_capacity": 0}, {"event_batch_size": -1}, {"flush_interval": 0},
                    {"exposure_dedupe_size": 1.5}):
        with pytest.raises(ValueError):
            FlagClient("http://127.0.0.1:9", KEY, init_timeout=0, **options)
    assert not event_threads()


# -- end to end: the real server counts what the SDK sends -------------------------------------------

BACKENDS = ["sqlite", "redis"]
FLAG = "new-checkout"
METRIC = "checkout_completed"


class SlowFirstEvents:
    """WSGI middleware on the real app: the first event batch is stored, then answered
    later than the SDK waits, so the SDK sends it again. Remembers every answer."""

    def __init__(self, wsgi_app: Any, delay: float) -> None:
        self.wsgi_app = wsgi_app
        self.delay = delay
        self.answers: list[dict[str, Any]] = []
        self.released = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != EVENTS_PATH:
            return self.wsgi_app(environ, start_response)
        body = b"".join(self.wsgi_app(environ, start_response))
        with self._lock:
            self.answers.append(json.loads(body))
            first = len(self.answers) == 1
        if first:
            self.released.wait(self.delay)
        return [body]


@pytest.fixture
def admin_http(app: Any) -> Any:
    return app.test_client()


def create_flag(admin_http: Any, admin: dict[str, str], rollout: float = 25) -> None:
    """new-checkout: `on` for staff (an @company.com email, not randomized), else a `rollout` % split."""
    response = admin_http.post("/api/v1/envs/production/flags", headers=admin, json={
        "key": FLAG, "enabled": True, "variants": ["off", "on"], "rollout": rollout,
        "rules": [{"id": "staff", "conditions": [{"attribute": "email", "op": "ends_with",
                                                  "values": ["@company.com"]}], "serve": "on"}]})
    assert response.status_code == 201, response.get_json()


def population(n: int) -> list[dict[str, Any]]:
    """`n` users; every 10th is staff."""
    return [{"key": f"user-{i}", "email": f"u{i}@{'company.com' if i % 10 == 0 else 'example.org'}"}
            for i in range(n)]


def converts(index: int, variant: str | None) -> bool:
    """The known conversion pattern: a third of the canary, a fifth of the control."""
    return index % 3 == 0 if variant == "on" else index % 5 == 0


@dataclass
class Expected:
    exposed: dict[str, int] = field(default_factory=lambda: {"off": 0, "on": 0})
    randomized: dict[str, int] = field(default_factory=lambda: {"off": 0, "on": 0})
    converted: dict[str, int] = field(default_factory=lambda: {"off": 0, "on": 0})
    converted_randomized: dict[str, int] = field(default_factory=lambda: {"off": 0, "on": 0})
    value_sum: dict[str, float] = field(default_factory=lambda: {"off": 0.0, "on": 0.0})


def run_population(client: FlagClient, people: list[dict[str, Any]]) -> Expected:
    """Each user is evaluated (three times, through each entry point) and, following
    the pattern, converts twice (one user, two events: counted once, summed twice).
    The expectation comes from the engine's own answer for each user."""
    expected = Expected()
    for i, user in enumerate(people):
        result = client.evaluate(FLAG, user)
        assert client.is_enabled(FLAG, user) == result.enabled
        assert client.variant(FLAG, user) == result.variant
        arm = str(result.variant)
        expected.exposed[arm] += 1
        expected.randomized[arm] += result.randomized
        if converts(i, arm):
            client.track(METRIC, user, value=10.0)
            client.track(METRIC, user, value=2.5)
            expected.converted[arm] += 1
            expected.converted_randomized[arm] += result.randomized
            expected.value_sum[arm] += 12.5
    return expected


def server_counts(admin_http: Any, admin: dict[str, str]) -> dict[str, Any]:
    response = admin_http.get(f"/api/v1/envs/production/flags/{FLAG}/stats", headers=admin)
    assert response.status_code == 200, response.get_json()
    [stage] = [s for s in response.get_json()["stages"] if s["current"]]
    return dict(stage["arms"])


def assert_counted(arms: dict[str, Any], expected: Expected) -> None:
    for arm in ("off", "on"):
        got = arms[arm]
        assert got["exposed"] == expected.exposed[arm], arm
        assert got["randomized_exposed"] == expected.randomized[arm], arm
        assert got["mixed"] == 0
        metric = got["events"][METRIC]
        assert metric["users"] == expected.converted[arm], arm
        assert metric["randomized_users"] == expected.converted_randomized[arm], arm
        assert metric["value_sum"] == pytest.approx(expected.value_sum[arm]), arm


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_server_counts_exactly_what_2000_users_did(live_server: Any, sdk_key: str, admin: dict[str, str],
                                                       admin_http: Any, make_client: Callable[..., FlagClient],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Given a flag at 25% with a staff rule, and an SDK sending batches of 500 every 0.2 s
    create_flag(admin_http, admin, rollout=25)
    client = make_client(live_server.url, sdk_key, flush_interval=0.2)

    # When 2,000 users are evaluated and convert in a known pattern; some people who
    # were never exposed convert too (they count nowhere)
    expected = run_population(client, population(2000))
    for i in range(50):
        client.track(METRIC, {"key": f"never-exposed-{i}"}, value=1.0)
    assert client.flush(timeout=20)

    # Then the server counted exactly what the engine decided, per arm and population
    assert expected.randomized["on"] > 300 and expected.exposed["on"] > expected.randomized["on"]  # both kinds
    assert_counted(server_counts(admin_http, admin), expected)
    stats = client.stats()
    sent = sum(expected.exposed.values()) + 2 * sum(expected.converted.values()) + 50
    assert stats == {"sent": sent, "failed": 0, "dropped": 0, "queued": 0, "stopped": None}
    assert not sdk_logs(caplog)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_events_made_while_the_server_is_down_arrive_when_it_returns(
        live_server: Any, sdk_key: str, admin: dict[str, str], admin_http: Any,
        make_client: Callable[..., FlagClient]) -> None:
    create_flag(admin_http, admin, rollout=50)
    client = make_client(live_server.url, sdk_key, flush_interval=0.1)

    # Given the server goes down
    live_server.stop()

    # When users are evaluated and convert meanwhile
    expected = run_population(client, population(300))
    assert client.flush(timeout=0.5) is False
    assert client.stats()["queued"] > 0

    # Then they are delivered once it is back (on the same port)
    live_server.start()
    assert client.flush(timeout=15)
    assert_counted(server_counts(admin_http, admin), expected)
    assert client.stats()["failed"] == 0 and client.stats()["dropped"] == 0


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_over_the_bound_the_drop_count_says_how_many(live_server: Any, sdk_key: str, admin: dict[str, str],
                                                     admin_http: Any, make_client: Callable[..., FlagClient]) -> None:
    # Given a buffer of 100 events that nothing empties before the flush
    create_flag(admin_http, admin, rollout=50)
    client = make_client(live_server.url, sdk_key, event_capacity=100)

    # When 250 users are exposed
    people = population(250)
    for user in people:
        client.is_enabled(FLAG, user)
    assert client.flush(timeout=10)

    # Then the 150 oldest were dropped, and the server counted the other 100
    assert client.stats()["dropped"] == 150 and client.stats()["sent"] == 100
    arms = server_counts(admin_http, admin)
    assert sum(arm["exposed"] for arm in arms.values()) == 100


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_batch_sent_again_after_a_timeout_is_counted_once(
        app: Any, live_server: Any, sdk_key: str, admin: dict[str, str], admin_http: Any,
        make_client: Callable[..., FlagClient]) -> None:
    # Given a server whose first answer to an event batch comes after the SDK stopped waiting
    create_flag(admin_http, admin, rollout=50)
    slow = SlowFirstEvents(app.wsgi_app, delay=3.0)
    app.wsgi_app = slow  # type: ignore[method-assign]
    client = make_client(live_server.url, sdk_key, timeout=1.0)

    # When a batch is sent, times out and is sent again
    expected = run_population(client, population(200))
    assert client.flush(timeout=15)
    slow.released.set()

    # Then the server stored it the first time, called the resend a duplicate, and counted it once
    assert [a["duplicate"] for a in slow.answers] == [False, True]
    assert slow.answers[0]["batch_id"] == slow.answers[1]["batch_id"]
    assert_counted(server_counts(admin_http, admin), expected)


# -- the benchmark runs ------------------------------------------------------------------------------


def test_the_benchmark_runs_small_and_writes_only_its_section(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_sdk_events.py"
    spec = importlib.util.spec_from_file_location("bench_sdk_events", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_sdk_events"] = bench  # dataclasses look their module up here
    try:
        spec.loader.exec_module(bench)
        report = bench.measure(n_users=100, repeats=2)
    finally:
        del sys.modules["bench_sdk_events"]

    assert [row.name for row in report.rows] == [
        "track()", "exposure, new", "exposure, repeat", "is_enabled, reporting (repeat)",
        "is_enabled, events=False", "empty loop"]
    for row in report.rows:
        assert len(row.samples) == 2 and 0 < row.min_ns <= row.median_ns
    # every track() and every new exposure of the run reached the receiver
    assert report.stats["sent"] == 100 + 2 * (100 + 100) and report.stats["dropped"] == 0
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    section = bench.render_section(report, {**bench.machine_info(), "load": "0.0"})
    bench.write_section(results, section)
    bench.write_section(results, section)
    text = results.read_text()
    assert "keep me" in text and text.count(bench.START_MARKER) == 1 and text.count(bench.END_MARKER) == 1
