"""Webhooks: a signed JSON POST to configured URLs when a rollout moves.

The events are `rollout.started`, `rollout.promoted`, `rollout.rolled_back`,
`rollout.paused`, `rollout.resumed`, `rollout.aborted`,
`rollout.waiting_for_approval`, `rollout.completed`, and `rollout.notice` (anything
else the policy asks people to hear of, such as a stage held too long); see
`WEBHOOK_EVENTS` in `controller.py`.

Deliveries run in the background, one bounded queue, thread and `requests.Session`
per URL, so a slow or failing receiver never holds up the controller or another
receiver (a rollback is applied before its webhook is even queued). Each delivery
is retried with backoff on connection errors and 5xx. `close()` delivers what is
queued within a deadline; the controller calls it when it stops, and `create_app`
registers an `atexit` backstop for web workers.

Signature: `X-Flagserver-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
with the configured secret; receivers should also reject old timestamps.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import requests

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Flagserver-Signature"
# How long `close()` waits for queued deliveries by default: under the 10 s that
# `flagserver serve` gives its controller process to stop before killing it.
CLOSE_TIMEOUT = 5.0


def close_at_exit(sender: WebhookSender, timeout: float = CLOSE_TIMEOUT) -> None:
    """Have `sender` closed (what is queued delivered) when the interpreter exits, as
    a backstop for processes that never close it themselves (web workers). The hook
    holds the sender weakly, so registering it keeps nothing alive."""
    atexit.register(_close_if_alive, weakref.ref(sender), timeout)


def _close_if_alive(ref: weakref.ref[WebhookSender], timeout: float) -> None:
    sender = ref()
    if sender is not None:
        sender.close(timeout)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance` seconds of `now`."""
    if not header.isascii():
        return False
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookSender:
    """Delivers events to `urls` in the background, one queue, thread and HTTP session
    per URL so that a failing receiver never holds up another. `send` never blocks
    or raises; `close()` delivers what is queued within a deadline."""

    def __init__(self, urls: Sequence[str], secret: str, *, timeout: float = 5.0, attempts: int = 4,
                 backoff: float = 0.5, capacity: int = 1000) -> None:
        self.urls = list(urls)
        self._secret = secret
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._capacity = capacity
        self._queues: dict[str, queue.Queue[tuple[bytes, str] | None]] = {}
        self._threads: dict[str, threading.Thread] = {}
        # A Session is not safe to share between threads: each URL's thread has its own.
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Queue `payload` (with `event`, `id` and `sent_at` added) for every URL.
        A payload that is not JSON, or a full queue, is counted in `dropped` and
        logged; after `close()` nothing is queued."""
        if not self.urls or self._closed:
            return
        try:
            body = json.dumps({"event": event, "id": uuid.uuid4().hex, "sent_at": time.time(), **payload},
                              allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            self.dropped += len(self.urls)
            log.warning("webhook %s not sent: its payload is not JSON (%s)", event, exc)
            return
        for url in self.urls:
            items = self._queue(url)
            if items is None:  # closed meanwhile
                return
            try:
                items.put_nowait((body, event))
            except queue.Full:
                self.dropped += 1
                log.warning("webhook queue full: dropped %s for %s", event, url)

    def _queue(self, url: str) -> queue.Queue[tuple[bytes, str] | None] | None:
        with self._lock:
            if self._closed:
                return None
            if url not in self._queues:
                self._queues[url] = queue.Queue(maxsize=self._capacity)
                self._sessions[url] = requests.Session()
                thread = threading.Thread(target=self._run, args=(url, self._queues[url], self._sessions[url]),
                                          name="flagserver.webhooks", daemon=True)
                self._threads[url] = thread
                thread.start()
            return self._queues[url]

    def _run(self, url: str, items: queue.Queue[tuple[bytes, str] | None], session: requests.Session) -> None:
        while True:
            item = items.get()
            if item is None:
                return
            try:
                self._deliver(session, url, *item)
            except Exception:  # one bad delivery must not stop the others
                log.exception("webhook delivery crashed")

    def _deliver(self, session: requests.Session, url: str, body: bytes, event: str) -> None:
        delay = self._backoff
        problem = ""
        for attempt in range(1, self._attempts + 1):
            headers = {"Content-Type": "application/json", "X-Flagserver-Event": event,
                       SIGNATURE_HEADER: sign(self._secret, int(time.time()), body)}
            try:
                response = session.post(url, data=body, headers=headers, timeout=self._timeout)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("webhook %s refused %s: HTTP %s", url, event, response.status_code)
                        self.failed += 1
                    else:
                        self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
            if attempt == self._attempts or self._stopping.wait(delay):
                break
            delay *= 2
        self.failed += 1
        log.warning("webhook %s: %s not delivered (%s)", url, event, problem)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Deliver what is queued within `timeout` seconds, then stop the threads and
        close their sessions. At the deadline retries stop: what is still queued then
        may be lost. Idempotent; never raises."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queues, threads, sessions = dict(self._queues), dict(self._threads), dict(self._sessions)
        for items in queues.values():
            try:
                items.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        for thread in threads.values():
            thread.join(1.0)
        for session in sessions.values():
            session.close()
