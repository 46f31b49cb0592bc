"""Webhooks: a signed JSON POST to configured URLs when a rollout is promoted, rolled
back, paused or starts waiting for approval.

Deliveries run on one background thread from a bounded queue, so a slow or failing
receiver never holds up the controller (a rollback is applied before its webhook is
even queued). Each delivery is retried with backoff on connection errors and 5xx.

Signature: `X-Flagserver-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
with the configured secret; receivers should also reject old timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import requests

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Flagserver-Signature"


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
    """Delivers events to `urls` in the background, one queue and thread per URL so
    that a failing receiver never holds up another. `send` never blocks or raises."""

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
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._session = requests.Session()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Queue `payload` (with `event`, `id` and `sent_at` added) for every URL."""
        if not self.urls or self._stopping.is_set():
            return
        try:
            body = json.dumps({"event": event, "id": uuid.uuid4().hex, "sent_at": time.time(), **payload},
                              allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            self.dropped += len(self.urls)
            log.warning("webhook %s not sent: its payload is not JSON (%s)", event, exc)
            return
        for url in self.urls:
            try:
                self._queue(url).put_nowait((body, event))
            except queue.Full:
                self.dropped += 1
                log.warning("webhook queue full: dropped %s for %s", event, url)

    def _queue(self, url: str) -> queue.Queue[tuple[bytes, str] | None]:
        with self._lock:
            if url not in self._queues:
                self._queues[url] = queue.Queue(maxsize=self._capacity)
                thread = threading.Thread(target=self._run, args=(url, self._queues[url]),
                                          name="flagserver.webhooks", daemon=True)
                self._threads[url] = thread
                thread.start()
            return self._queues[url]

    def _run(self, url: str, items: queue.Queue[tuple[bytes, str] | None]) -> None:
        while True:
            item = items.get()
            if item is None:
                return
            try:
                self._deliver(url, *item)
            except Exception:  # one bad delivery must not stop the others
                log.exception("webhook delivery crashed")

    def _deliver(self, url: str, body: bytes, event: str) -> None:
        delay = self._backoff
        problem = ""
        for attempt in range(1, self._attempts + 1):
            headers = {"Content-Type": "application/json", "X-Flagserver-Event": event,
                       SIGNATURE_HEADER: sign(self._secret, int(time.time()), body)}
            try:
                response = self._session.post(url, data=body, headers=headers, timeout=self._timeout)
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

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout` (retries are cut short), then stop."""
        deadline = time.monotonic() + timeout
        with self._lock:
            queues, threads = dict(self._queues), dict(self._threads)
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
        self._session.close()
