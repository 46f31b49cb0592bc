"""The webhook sender on its own (flagserver/rollout/webhooks.py), against a real HTTP
receiver on a loopback port: signing, retries with backoff on 5xx and connection
errors, no retry on 4xx, the bounded queue, and close() with its deadline."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flagserver.rollout.webhooks import SIGNATURE_HEADER, WebhookSender, sign, verify
from tests.api_helpers import wait_for
from tests.webhook_receiver import Receiver, independent_signature

SECRET = "s3cret"


@pytest.fixture
def senders() -> Iterator[list[WebhookSender]]:
    """Senders made by a test are closed after it (their thread and HTTP pool)."""
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        sender.close(timeout=1.0)


@pytest.fixture
def make_sender(senders: list[WebhookSender]) -> Any:
    def make(*urls: str, **options: Any) -> WebhookSender:
        sender = WebhookSender(list(urls), SECRET, **{"backoff": 0.05, **options})
        senders.append(sender)
        return sender
    return make


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- signing ----------------------------------------------------------------------------------------

def test_sign_is_hmac_sha256_of_the_timestamp_and_the_body():
    body = b'{"event": "rollout.rolled_back"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()

    assert sign(SECRET, 1700000000, body) == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature_and_refuses_everything_else():
    body = b'{"flag": "f"}'
    header = sign(SECRET, 1700000000, body)

    assert verify(SECRET, header, body, now=1700000000)
    assert verify(SECRET, header, body, now=1700000300)  # at the edge of the 300 s tolerance
    assert verify(SECRET, header, body, now=1699999700)
    assert not verify(SECRET, header, body, now=1700000301)  # replayed too late
    assert not verify(SECRET, header, body, now=1700000000 - 301)
    assert not verify("other", header, body, now=1700000000)
    assert not verify(SECRET, header, b'{"flag": "g"}', now=1700000000)
    assert not verify(SECRET, header.replace("t=1700000000", "t=1700000001"), body, now=1700000000)
    assert verify(SECRET, header, body, now=1700000100, tolerance=100)
    assert not verify(SECRET, header, body, now=1700000101, tolerance=100)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000", "t=1700000000,v1=",
                                    "t=1700000000,v1=zz", "t==,v1=="])
def test_verify_refuses_malformed_headers(header):
    assert verify(SECRET, header, b"{}", now=1700000000) is False


def test_verify_refuses_a_header_with_non_ascii_characters():
    assert verify(SECRET, "t=1700000000,v1=é", b"{}", now=1700000000) is False


# --- delivery -----------------------------------------------------------------------------------------

def test_a_delivery_is_a_signed_json_post(make_sender):
    with Receiver() as receiver:
        sender = make_sender(receiver.url)
        before = time.time()
        sender.send("rollout.rolled_back", {"environment": "production", "flag": "f", "percentage": 0})

        wait_for(lambda: sender.delivered == 1, timeout=5)
        [request] = receiver.received()

    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-flagserver-event"] == "rollout.rolled_back"
    body = request.json()
    assert body["event"] == "rollout.rolled_back"
    assert (body["environment"], body["flag"], body["percentage"]) == ("production", "f", 0)
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert before <= body["sent_at"] <= time.time()
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, header, request.body, now=time.time())
    assert independent_signature(SECRET, header, request.body)
    assert abs(int(header.split(",")[0][2:]) - request.at) <= 2
    assert (sender.delivered, sender.failed, sender.dropped) == (1, 0, 0)


def test_every_url_gets_every_event(make_sender):
    with Receiver() as first, Receiver() as second:
        sender = make_sender(first.url, second.url)
        sender.send("rollout.promoted", {"flag": "f"})
        sender.send("rollout.paused", {"flag": "f"})
        wait_for(lambda: sender.delivered == 4, timeout=5)

        for receiver in (first, second):
            assert [r.event for r in receiver.received()] == ["rollout.promoted", "rollout.paused"]
        assert first.received()[0].json()["id"] == second.received()[0].json()["id"]


@pytest.mark.parametrize("failures", [[500, 503], [502, 504]])
def test_5xx_is_retried_with_backoff_and_the_same_body(make_sender, failures):
    with Receiver([*failures, 200]) as receiver:
        sender = make_sender(receiver.url, backoff=0.1, attempts=4)
        sender.send("rollout.rolled_back", {"flag": "f"})

        wait_for(lambda: sender.delivered == 1, timeout=5)
        requests = receiver.received()

    assert len(requests) == 3
    assert len({r.body for r in requests}) == 1  # one id: the receiver can de-duplicate retries
    gaps = [b.monotonic - a.monotonic for a, b in zip(requests, requests[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s, then doubled
    for request in requests:  # each attempt is signed afresh and verifies
        assert verify(SECRET, request.headers["x-flagserver-signature"], request.body, now=time.time())
    assert (sender.delivered, sender.failed) == (1, 0)


def test_a_dropped_connection_is_retried(make_sender):
    with Receiver(["drop", "drop", 200]) as receiver:
        sender = make_sender(receiver.url, backoff=0.05)
        sender.send("rollout.paused", {"flag": "f"})

        wait_for(lambda: sender.delivered == 1, timeout=5)
        assert len(receiver.received()) == 3
    assert sender.failed == 0


def test_a_timeout_is_retried(make_sender):
    with Receiver([("slow", 2.0, 200), 200]) as receiver:
        sender = make_sender(receiver.url, backoff=0.05, timeout=0.3)
        sender.send("rollout.paused", {"flag": "f"})

        wait_for(lambda: sender.delivered == 1, timeout=5)
        assert len(receiver.received()) == 2


def test_a_receiver_that_is_down_costs_its_attempts_then_one_failure(make_sender):
    sender = make_sender(f"http://127.0.0.1:{closed_port()}/hook", attempts=3, backoff=0.1)
    started = time.monotonic()
    sender.send("rollout.rolled_back", {"flag": "f"})

    wait_for(lambda: sender.failed == 1, timeout=5)

    assert time.monotonic() - started >= 0.1 + 0.2  # it waited out its backoff between the attempts
    assert sender.delivered == 0


def test_attempts_are_bounded(make_sender):
    with Receiver(default=500) as receiver:
        sender = make_sender(receiver.url, attempts=3, backoff=0.02)
        sender.send("rollout.rolled_back", {"flag": "f"})

        wait_for(lambda: sender.failed == 1, timeout=5)
        sender.close(timeout=2)
        assert len(receiver.received()) == 3
    assert sender.delivered == 0


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_4xx_is_not_retried(make_sender, status):
    with Receiver([status]) as receiver:
        sender = make_sender(receiver.url, attempts=4, backoff=0.02)
        sender.send("rollout.rolled_back", {"flag": "f"})
        sender.send("rollout.paused", {"flag": "f"})  # the next event is not held up either

        wait_for(lambda: sender.delivered == 1, timeout=5)
        sender.close(timeout=2)  # whatever was still to be retried would have been by now
        assert [r.event for r in receiver.received()] == ["rollout.rolled_back", "rollout.paused"]
    assert sender.failed == 1


# --- the queue and close() ------------------------------------------------------------------------------

def test_a_full_queue_drops_and_counts_and_send_never_blocks(make_sender):
    with Receiver([("slow", 10.0, 200)]) as receiver:
        sender = make_sender(receiver.url, capacity=2)
        sender.send("e1", {})
        wait_for(lambda: len(receiver.received()) == 1, timeout=5)  # e1 holds the sender's thread

        started = time.monotonic()
        for n in range(2, 7):
            sender.send(f"e{n}", {})
        assert time.monotonic() - started < 5  # a send that blocked on the full queue would wait e1's 10 s

        assert sender.dropped == 3
        receiver.stopping.set()  # e1 is answered now
        wait_for(lambda: sender.delivered == 3, timeout=5)
        assert [r.event for r in receiver.received()] == ["e1", "e2", "e3"]


def test_close_delivers_what_is_queued(make_sender):
    with Receiver(default=("slow", 0.05, 200)) as receiver:
        sender = make_sender(receiver.url)
        for n in range(10):
            sender.send(f"e{n}", {"n": n})
        started = time.monotonic()

        sender.close(timeout=5)

        assert time.monotonic() - started < 5
        assert [r.event for r in receiver.received()] == [f"e{n}" for n in range(10)]
    assert sender.delivered == 10


def test_close_keeps_its_deadline_when_a_receiver_keeps_failing(make_sender):
    with Receiver(default=500) as receiver:
        sender = make_sender(receiver.url, attempts=4, backoff=2.0)  # 14 s of retries per event
        sender.send("e1", {})
        sender.send("e2", {})
        wait_for(lambda: len(receiver.received()) >= 1, timeout=5)
        started = time.monotonic()

        sender.close(timeout=0.5)

        assert time.monotonic() - started < 2.5
        sender.send("e3", {})  # a closed sender takes nothing more, and does not raise
        assert sender.dropped == 0
    assert {r.event for r in receiver.received()} <= {"e1", "e2"}


def test_close_is_idempotent_and_a_sender_without_urls_does_nothing(make_sender):
    idle = make_sender()
    idle.send("e1", {})
    idle.close()
    idle.close()
    assert (idle.delivered, idle.failed, idle.dropped) == (0, 0, 0)


def test_close_keeps_its_deadline_with_a_full_queue(make_sender):
    with Receiver(default=("slow", 3.0, 200)) as receiver:
        sender = make_sender(receiver.url, capacity=1, attempts=1, timeout=10)
        sender.send("e1", {})
        wait_for(lambda: len(receiver.received()) == 1, timeout=5)
        sender.send("e2", {})  # the queue is full now
        started = time.monotonic()

        sender.close(timeout=0.5)
        elapsed = time.monotonic() - started

    assert elapsed < 2.0, f"close(timeout=0.5) took {elapsed:.1f} s"


def test_a_failing_receiver_does_not_hold_up_another(make_sender):
    with Receiver(default=500) as failing, Receiver() as healthy:
        sender = make_sender(failing.url, healthy.url, attempts=4, backoff=0.5)  # 3.5 s of retries
        sender.send("rollout.rolled_back", {"flag": "f"})
        started = time.monotonic()

        wait_for(lambda: healthy.received(), timeout=5)
        waited = time.monotonic() - started
        sender.close(timeout=0.2)

    assert waited < 1.0, f"the healthy receiver heard of the rollback after {waited:.1f} s"


def test_send_never_raises(make_sender):
    with Receiver() as receiver:
        sender = make_sender(receiver.url)
        sender.send("rollout.notice", {"numbers": {"when": object()}})
        sender.send("rollout.notice", {"numbers": {}})
        wait_for(lambda: sender.delivered == 1, timeout=5)
    assert sender.dropped == 1  # suggested: counted and logged as dropped
