"""A tiny real HTTP server that receives webhooks on a loopback port: it records every
request (time, path, headers, body) and answers as told, so tests can make it fail.

`Receiver(responses=[500, "drop", 200], default=200)` answers its n-th request with
`responses[n]` (then `default`): an HTTP status; `"drop"` closes the connection
without answering (a connection error for the sender); `("slow", seconds, status)`
answers `status` after `seconds` (or as soon as the receiver stops).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when the request arrived
    monotonic: float
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return str(self.json()["event"])


def independent_signature(secret: str, header: str, body: bytes) -> bool:
    """Check `t=<ts>,v1=<hex>` as a receiver written from the docs would, without
    the server's code: HMAC-SHA256 over "<ts>.<body>"."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """See the module docstring. Use as a context manager, or `start()`/`stop()`."""

    def __init__(self, responses: list[Any] | None = None, default: Any = 200,
                 on_request: Callable[[Received], None] | None = None) -> None:
        self.responses = list(responses or [])
        self.default = default
        self.on_request = on_request
        self.requests: list[Received] = []
        self.answers: list[Any] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}/hook"

    def received(self, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if event is None or r.event == event]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Received(time.time(), time.monotonic(), self.path,
                                   {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    n = len(receiver.requests)
                    receiver.requests.append(request)
                    answer = receiver.responses[n] if n < len(receiver.responses) else receiver.default
                    receiver.answers.append(answer)
                if receiver.on_request is not None:
                    receiver.on_request(request)
                if answer == "drop":
                    self.close_connection = True
                    return
                if isinstance(answer, tuple):
                    _, seconds, answer = answer
                    receiver.stopping.wait(seconds)
                try:
                    self.send_response(int(answer))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up (timeout) and closed the connection
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
