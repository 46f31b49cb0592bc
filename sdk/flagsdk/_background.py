"""What the SDK's background workers (`_sync.ConfigSync`, `_events.EventProcessor`)
share: the weak registry of live instances with its process-wide fork and exit
hooks, backoff with jitter, and the check of their seconds arguments."""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import threading
import weakref
from typing import Any, Generic, Protocol, TypeVar

MAX_BACKOFF = 60.0
# A server asking for more than this in Retry-After is not obeyed beyond it.
MAX_RETRY_AFTER = 600.0


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after `failures` (>= 1) consecutive failures.

    Exponential with "equal jitter": between half and all of
    `min(cap, base * 2**failures)`, so clients that failed together spread out
    while each still waits at least half the nominal delay.
    """
    ceiling = min(cap, base * 2.0 ** min(failures, 32))
    return rng.uniform(ceiling / 2, ceiling)


def retry_delay(failures: int, retry_after: float | None, *, base: float, cap: float,
                rng: random.Random) -> float:
    """`backoff_delay`, but never sooner than the server's Retry-After (which is
    obeyed up to `MAX_RETRY_AFTER` seconds)."""
    delay = backoff_delay(max(1, failures), base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def positive_seconds(value: Any, name: str) -> float:
    """`value` as a float; `ValueError` (a programmer error) unless it is a finite
    number above zero (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Worker(Protocol):
    def _after_fork_in_child(self) -> None: ...

    def close(self) -> None: ...


W = TypeVar("W", bound=Worker)


class LiveSet(Generic[W]):
    """The live instances of one worker class, held weakly (a closed or forgotten one
    drops out by itself), and the process-wide hooks that walk them: after a fork,
    each one's `_after_fork_in_child()`; at exit, with `exit_failure`, each one's
    `close()` (a backstop for workers the application did not close).

    One hook of each kind per set, registered at the first `add`, rather than one per
    instance: `os.register_at_fork` and `atexit` cannot unregister an instance's
    hook, and a hook per instance would keep it alive. A hook never raises: a
    failure is logged to `log` with `fork_failure` or `exit_failure`.
    """

    def __init__(self, log: logging.Logger, *, fork_failure: str, exit_failure: str | None = None) -> None:
        self._log = log
        self._fork_failure = fork_failure
        self._exit_failure = exit_failure
        self._live: weakref.WeakSet[W] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._hooked = False

    def add(self, worker: W) -> None:
        with self._lock:
            self._live.add(worker)
            if not self._hooked:
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(after_in_child=self._after_fork_in_child)
                if self._exit_failure is not None:
                    atexit.register(self._close_at_exit)
                self._hooked = True

    def discard(self, worker: W) -> None:
        with self._lock:
            self._live.discard(worker)

    def _after_fork_in_child(self) -> None:
        # The child has one thread; a lock another parent thread held at the fork is
        # held forever here, so take none and replace ours.
        self._lock = threading.Lock()
        for worker in list(self._live):
            try:
                worker._after_fork_in_child()
            except Exception:  # a fork hook must never break the child
                self._log.exception(self._fork_failure)

    def _close_at_exit(self) -> None:
        for worker in list(self._live):
            try:
                worker.close()
            except Exception:
                self._log.exception(self._exit_failure)
