"""Event reporting: exposures and conversions, buffered and sent to the server in batches.

The application thread only records: an exposure is looked up in a bounded LRU of
what this process already reported (two generations of dicts: a repeat costs one
tuple and one dict lookup),
a new one and a `track` call append a small tuple to a bounded deque under a lock
held for a few hundred nanoseconds. No I/O, no JSON, no waiting.

One daemonic thread, `flagsdk.events`, takes the events out in batches (every
`flush_interval` seconds, or at once when `batch_size` are waiting), turns them
into the wire format, gzips them and POSTs them to `{url}/api/v1/sdk/events`.

Delivery:
- a batch gets its `batch_id` once and keeps it (and its bytes) through every
  retry, so a resend after a timeout whose first attempt was in fact stored is
  not counted twice: the server de-duplicates by batch id;
- connection errors, timeouts, 408, 429 and 5xx retry with exponential backoff and
  jitter (and Retry-After); while a batch waits, new events wait in the buffer;
- any other 4xx drops the batch (its events count as `failed`), except a 422
  naming an unknown flag (deleted since it was evaluated): that flag's exposures
  are removed and the rest sent again, so one stale flag does not sink a batch;
- a 401 or 403 is permanent: one error log, the buffer is discarded and nothing
  is recorded or sent any more.

The buffer holds `capacity` events; when full the oldest is dropped and counted,
and the flusher warns once. After `os.fork()` the child gets an empty buffer, an
empty LRU, new locks and its own thread: the parent's events are the parent's to
send. `close()` flushes with a deadline; an `atexit` hook does the same for
processors still open at exit. Both hooks hold processors weakly.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._background import MAX_BACKOFF, LiveSet, positive_seconds, retry_delay
from ._http import (
    PERMANENT_STATUSES,
    HttpResponse,
    SdkHttp,
    TransportError,
    check_base_url,
    is_retryable_status,
    safe_url,
)
from .engine.evaluate import ERROR, Evaluation

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/sdk/events"
DEFAULT_CAPACITY = 10_000
DEFAULT_BATCH_SIZE = 500
DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_DEDUPE_SIZE = 100_000
CLOSE_TIMEOUT = 2.0
FLUSH_TIMEOUT = 5.0
# The server's limits (flagserver/api/events.py): one event over them refuses the batch.
MAX_BATCH_SIZE = 5_000
MAX_NAME = 200
MAX_USER_KEY = 512
# The server refuses events older than 30 days; an hour's margin for clocks and queues.
MAX_EVENT_AGE = 30 * 24 * 3600 - 3600
# At most this many rounds of removing a deleted flag's exposures from one batch.
MAX_SALVAGES = 10
# The flusher moves a backlog out of the buffer this many events per lock hold,
# so an application thread never waits long for the lock.
TAKE_CHUNK = 64
# Level 1 is ~3x faster than 6 on batches of events and within a few % of its size.
GZIP_LEVEL = 1

_POST_HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

# Buffered events are tuples, turned into JSON only by the flusher:
#   exposure: (Evaluation, user_key, at)           -- 3 items
#   track:    (event_name, user_key, value, at)    -- 4 items
# In a batch each is `(flag or None, its JSON text)`: the text is written directly
# (an exposure's fixed part once per Evaluation per batch), several times faster
# than json.dumps of dicts, and this runs under the application's GIL.
WireEvent = tuple[str | None, str]
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Batch:
    """The batch being delivered: it keeps its id and bytes through every retry."""

    batch_id: str
    events: list[WireEvent]
    body: bytes
    start: int  # the sequence number of its first event (see EventProcessor._popped)
    attempts: int = 0
    salvages: int = 0


# -- process-wide hooks (fork, exit) ------------------------------------------------------

# The live processors, weakly, with one fork hook that restarts them and one exit
# hook that flushes those the application did not close.
_live: LiveSet[EventProcessor] = LiveSet(log, fork_failure="flagsdk: could not restart event reporting after fork",
                                         exit_failure="flagsdk: could not flush events at exit")


# -- the processor ---------------------------------------------------------------------------


class EventProcessor:
    """Records exposures and conversions and sends them to the server.

    `expose` and `track` never raise and never block on I/O. The constructor
    raises `ValueError` for programmer errors only (a bad URL, an empty key, a
    size or interval that is not a positive number).
    """

    def __init__(
        self,
        url: str,
        sdk_key: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        timeout: float = 5.0,
    ) -> None:
        self._url = check_base_url(url) + EVENTS_PATH
        self._log_url = safe_url(self._url)
        if not isinstance(sdk_key, str) or not sdk_key.strip():
            raise ValueError("sdk_key must be a non-empty string")
        self._sdk_key = sdk_key
        self._capacity = _positive_int(capacity, "event_capacity")
        self._batch_size = min(_positive_int(batch_size, "event_batch_size"), MAX_BATCH_SIZE)
        self._flush_interval = positive_seconds(flush_interval, "flush_interval")
        self._generation_size = max(1, _positive_int(dedupe_size, "exposure_dedupe_size") // 2)
        self._timeout = positive_seconds(timeout, "timeout")
        self._backoff_base = min(1.0, self._flush_interval)
        self._max_backoff = max(MAX_BACKOFF, self._flush_interval)
        self._logged: set[str] = set()
        self._started = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._new_runtime()
        _live.add(self)

    def __repr__(self) -> str:
        return f"<EventProcessor {self._log_url}>"

    def _new_runtime(self) -> None:
        """The buffer, LRU, counters, locks and events of this process (new after fork)."""
        self._state_lock = threading.Lock()  # guards start/close
        self._lock = threading.Lock()  # guards everything below, held briefly
        self._settled = threading.Condition(self._lock)  # notified when events leave for good
        self._buffer: deque[tuple[Any, ...]] = deque()
        # The exposures already reported, in two generations: `_recent` (used since
        # the last turn) and `_older` (used in the generation before). See expose().
        self._recent: dict[tuple[Any, ...], None] = {}
        self._older: dict[tuple[Any, ...], None] = {}
        self._retired: dict[tuple[Any, ...], None] | None = None  # freed by the flusher, off the hot path
        self._accepting = True
        # Every event that ever entered the buffer has a sequence number; `_popped`
        # of them have left it (dropped, or taken into a batch), in order.
        self._popped = 0
        self._pending: _Batch | None = None
        self._sent = 0
        self._failed = 0
        self._dropped = 0
        self._stopped: str | None = None  # why sending stopped for good (401/403)
        self._flush_until = 0  # events with a smaller sequence number are due now
        self._flush_requests = 0
        self._deadline: float | None = None  # set by close()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._drop_warned = False

    # -- the application's side ----------------------------------------------------------

    def expose(self, result: Evaluation, user: Any) -> None:
        """Record that `user` was served `result`, unless this process already did
        (same flag, version, variant, reason and rule, within the last
        `dedupe_size` distinct ones or so). Errors are not exposures; a user
        without a string key is not recorded. Never raises."""
        # The hot path of every evaluation. The memory is an LRU in two generations
        # rather than an OrderedDict: a repeat is one tuple and one dict lookup, where
        # an OrderedDict's move_to_end touches three list nodes scattered over a big
        # heap (+150-200 ns in cache misses at 100,000 entries). A repeat found in
        # the older generation moves to the recent one; when the recent one holds
        # half the size it becomes the older one and the older one is forgotten: what
        # was used within the last half-size distinct exposures is always remembered.
        try:
            key = user["key"] if type(user) is dict else _user_key(user)
            token = (result.flag_key, result.flag_version, result.variant, result.reason, result.rule_id, key)
            recent = self._recent
            if token in recent:
                return
            if result.reason == ERROR:  # evaluators raise rather than return errors; only a caller's mistake
                return
            seen_before = token in self._older
            recent[token] = None
            if len(recent) >= self._generation_size:
                self._retired = self._older  # freed on the flusher's thread, not the caller's
                self._older = recent
                self._recent = {}
            if seen_before:
                return
            if type(key) is not str or not key or len(key) > MAX_USER_KEY:
                self._log_once("exposure-key", "flagsdk: an exposure was not recorded: the user key must be a "
                                               "non-empty string of at most %d characters (logged once)",
                               MAX_USER_KEY)
                return
            self._add((result, key, time.time()))
        except (KeyError, TypeError):  # no key (a disabled flag does not need one), an unhashable key
            return
        except Exception:  # a bug must not reach the application
            self._log_once("expose", "flagsdk: could not record an exposure (logged once)", exc_info=True)

    def track(self, event: Any, user: Any, value: Any = None) -> None:
        """Record that `user` did `event` (any name), with an optional number.
        Never raises: bad input is logged once per kind of problem and not recorded."""
        try:
            if type(event) is not str or not event or len(event) > MAX_NAME:
                self._log_once("track-event", "flagsdk: track() needs an event name: a non-empty string of at "
                                              "most %d characters; not recorded (logged once)", MAX_NAME)
                return
            key = user.get("key") if type(user) is dict else _user_key(user)
            if type(key) is not str or not key or len(key) > MAX_USER_KEY:
                self._log_once("track-user", "flagsdk: track(%r) needs a user with a 'key' (a non-empty string of "
                                             "at most %d characters); not recorded (logged once)", event, MAX_USER_KEY)
                return
            if value is not None:
                value = _finite_number(value)
                if value is None:
                    self._log_once("track-value", "flagsdk: track(%r) value must be a finite number or None; "
                                                  "not recorded (logged once)", event)
                    return
            self._add((event, key, value, time.time()))
        except Exception:
            self._log_once("track", "flagsdk: could not record a tracked event (logged once)", exc_info=True)

    def _add(self, event: tuple[Any, ...]) -> None:
        with self._lock:
            if not self._accepting:
                return
            buffer = self._buffer
            if len(buffer) >= self._capacity:
                buffer.popleft()
                self._popped += 1
                self._dropped += 1
            buffer.append(event)
            due = len(buffer) == self._batch_size
        if due:  # once per batch, when the buffer reaches it
            self._wake.set()

    # -- public control ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the `flagsdk.events` thread. Idempotent; nothing after `close()`."""
        with self._state_lock:
            if self._started or self._closed:
                return
            self._started = True
            self._spawn()

    def flush(self, timeout: float | None = FLUSH_TIMEOUT) -> bool:
        """Send every event recorded so far now, and wait up to `timeout` seconds
        (None: as long as it takes) until each was delivered or given up on
        (see `stats()`). True when that happened in time; never raises."""
        with self._lock:
            target = self._popped + len(self._buffer)
            self._flush_until = max(self._flush_until, target)
            self._flush_requests += 1
            running = self._thread is not None and self._thread.is_alive()
        if not running:
            return self._is_settled(target)
        self._wake.set()
        with self._settled:
            return self._settled.wait_for(lambda: self._is_settled(target), timeout)

    def stats(self) -> dict[str, Any]:
        """Counts since this process started reporting: `sent` (acknowledged by the
        server), `failed` (refused by it, or not valid to send), `dropped` (the buffer
        was full, or too old to send), `queued` (waiting) and `stopped` (None, or why
        sending stopped for good)."""
        with self._lock:
            pending = self._pending
            return {
                "sent": self._sent,
                "failed": self._failed,
                "dropped": self._dropped,
                "queued": len(self._buffer) + (len(pending.events) if pending is not None else 0),
                "stopped": self._stopped,
            }

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop recording, send what is queued for up to `timeout` seconds, and stop
        the thread. Idempotent; logs (never raises) when events could not be sent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        _live.discard(self)
        with self._lock:
            self._accepting = False
            self._deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout) + 0.1)
        queued = self.stats()["queued"]
        if queued and self._stopped is None:
            log.warning("flagsdk: %d event(s) were not sent to %s (close() waits for them up to %.1fs)",
                        queued, self._log_url, timeout)

    # -- the thread -------------------------------------------------------------------------

    def _spawn(self) -> None:
        http = SdkHttp(self._sdk_key, timeout=self._timeout)
        self._thread = threading.Thread(target=self._run, args=(http, self._stop, self._wake),
                                        name="flagsdk.events", daemon=True)
        self._thread.start()

    def _run(self, http: SdkHttp, stop: threading.Event, wake: threading.Event) -> None:
        # `http`, `stop` and `wake` are passed in, not read from self, so that this
        # loop keeps to the objects of the process that started it.
        next_tick = time.monotonic() + self._flush_interval
        retry_at = 0.0  # monotonic time before which the pending batch is not resent
        flush_requests = 0  # the last flush() request served
        try:
            while True:
                wake.clear()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self._flush_interval
                    interval_due = True
                else:
                    interval_due = False
                try:
                    with self._lock:
                        if self._flush_requests != flush_requests:  # flush() asks for one attempt now
                            flush_requests = self._flush_requests
                            retry_at = 0.0
                    retry_at = self._work(http, now, retry_at, interval_due, stop.is_set())
                    self._warn_drops()
                    self._retired = None
                except Exception:  # one bad round must not end reporting
                    log.exception("flagsdk: unexpected error in the event flusher; going on")
                    retry_at = time.monotonic() + self._backoff(1, None)
                if self._stopped is not None:
                    return
                deadline = self._deadline
                if stop.is_set():
                    with self._lock:
                        idle = self._pending is None and not self._buffer
                    if idle or deadline is None or time.monotonic() >= deadline:
                        return
                wait_until = retry_at if self._pending is not None else next_tick
                if deadline is not None:
                    wait_until = min(wait_until, deadline)
                wake.wait(max(0.0, wait_until - time.monotonic()))
        finally:
            http.close()

    def _work(self, http: SdkHttp, now: float, retry_at: float, interval_due: bool, closing: bool) -> float:
        """Send what is due; returns when the pending batch may be retried (0: none waits)."""
        while True:
            if self._pending is None:
                with self._lock:
                    waiting = len(self._buffer)
                    due = waiting >= self._batch_size or (waiting > 0 and (
                        interval_due or closing or self._popped < self._flush_until))
                if not due:
                    return 0.0
                if not self._take():  # nothing in it could be sent (counted): look again
                    continue
            elif now < retry_at:
                return retry_at
            retry_in = self._deliver(http)
            if self._stopped is not None:
                return 0.0
            if retry_in is not None:
                return time.monotonic() + retry_in
            now = time.monotonic()

    def _take(self) -> bool:
        """Move the oldest events (up to a batch) out of the buffer into a new batch."""
        with self._lock:
            buffer = self._buffer
            if not buffer:
                return False
            start = self._popped
            # Until the batch is built, flush() must still see these events as pending.
            self._pending = _Batch("", [], b"", start)
            if len(buffer) <= self._batch_size:  # the usual case: swap the buffer, in O(1)
                self._buffer = deque()
                self._popped += len(buffer)
                chunks: list[Any] = [buffer]
                remaining = 0
            else:  # a backlog: a chunk per lock hold, so recording never waits long
                chunks = []
                remaining = self._batch_size
        while remaining:
            with self._lock:
                buffer = self._buffer
                n = min(TAKE_CHUNK, remaining, len(buffer))
                if not n:
                    break
                chunks.append([buffer.popleft() for _ in range(n)])
                self._popped += n
            remaining -= n
        try:
            batch = _Batch(uuid.uuid4().hex, self._to_wire(itertools.chain.from_iterable(chunks)), b"", start)
            batch.body = _encode(batch)
        except Exception:
            with self._lock:
                self._failed += sum(len(chunk) for chunk in chunks)
                self._pending = None
                self._settled.notify_all()
            raise
        with self._lock:
            self._pending = batch if batch.events else None
            if not batch.events:
                self._settled.notify_all()
        return bool(batch.events)

    def _to_wire(self, taken: Iterable[tuple[Any, ...]]) -> list[WireEvent]:
        oldest = time.time() - MAX_EVENT_AGE
        events: list[WireEvent] = []
        prefixes: dict[int, str | None] = {}  # id(Evaluation): `taken` keeps each alive meanwhile
        too_old = invalid = 0
        for event in taken:
            if event[-1] < oldest:
                too_old += 1
            elif len(event) == 3:
                result, user, at = event
                prefix = prefixes.get(id(result), "")
                if prefix == "":
                    prefix = prefixes[id(result)] = _exposure_prefix(result)
                if prefix is None:
                    invalid += 1
                else:
                    events.append((result.flag_key, f'{prefix}{_json_str(user)},"at":{at:.3f}}}'))
            else:
                name, user, value, at = event
                events.append((None, f'{{"kind":"track","event":{_json_str(name)},"user":{_json_str(user)},'
                                     f'"value":{"null" if value is None else repr(value)},"at":{at:.3f}}}'))
        if too_old or invalid:
            with self._lock:
                self._dropped += too_old
                self._failed += invalid
            if too_old:
                self._log_once("too-old", "flagsdk: dropped %d event(s) older than the server accepts "
                                          "(logged once)", too_old)
            if invalid:
                self._log_once("invalid", "flagsdk: %d exposure(s) of flags whose key, variant or rule id the "
                                          "server would refuse were not sent (logged once)", invalid)
        return events

    def _deliver(self, http: SdkHttp) -> float | None:
        """One attempt at the pending batch. Returns None when the batch is settled
        (sent, or given up on), else the seconds to wait before the next attempt."""
        batch = self._pending
        assert batch is not None
        batch.attempts += 1
        try:
            response = http.request("POST", self._url, data=batch.body, headers=_POST_HEADERS)
        except TransportError as exc:
            if exc.retryable:
                return self._failed_attempt(batch, str(exc), None)
            self._settle(batch, sent=False)
            log.error("flagsdk: could not send %d event(s) to %s (%s); dropped them", len(batch.events),
                      self._log_url, exc)
            return None
        status = response.status
        if 200 <= status < 300:
            if batch.attempts > 1:
                log.info("flagsdk: sent %d event(s) to %s after %d attempts", len(batch.events), self._log_url,
                         batch.attempts)
            self._settle(batch, sent=True)
            return None
        if status in PERMANENT_STATUSES:
            self._stop_for_good(status)
            return None
        if is_retryable_status(status):
            return self._failed_attempt(batch, f"HTTP {status}", response.retry_after)
        if self._salvage(batch, response):
            return 0.0
        log.error("flagsdk: %s refused a batch of %d event(s) with HTTP %d (%s); dropped it", self._log_url,
                  len(batch.events), status, _error_message(response.body))
        self._settle(batch, sent=False)
        return None

    def _failed_attempt(self, batch: _Batch, problem: str, retry_after: float | None) -> float:
        delay = self._backoff(batch.attempts, retry_after)
        if batch.attempts == 1:
            log.warning("flagsdk: could not send %d event(s) to %s (%s); retrying the same batch with backoff "
                        "(next in %.1fs)", len(batch.events), self._log_url, problem, delay)
        else:
            log.debug("flagsdk: sending events failed again (%s, attempt %d); next in %.1fs", problem,
                      batch.attempts, delay)
        return delay

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        return retry_delay(failures, retry_after, base=self._backoff_base, cap=self._max_backoff, rng=self._rng)

    def _salvage(self, batch: _Batch, response: HttpResponse) -> bool:
        """A 422 naming `events[i].flag`: that flag is gone from the environment (deleted
        after it was evaluated). Remove its exposures and keep the rest, under the
        same batch id (nothing of a refused batch was counted). True if resending."""
        if response.status != 422 or batch.salvages >= MAX_SALVAGES:
            return False
        flag = _refused_flag(response.body, batch.events)
        if flag is None:
            return False
        keep = [e for e in batch.events if e[0] != flag]
        refused = len(batch.events) - len(keep)
        log.warning("flagsdk: the server does not know flag %r (deleted?); dropped %d exposure(s) of it and "
                    "sending the rest of the batch", flag, refused)
        with self._lock:
            self._failed += refused
            batch.events = keep
            batch.salvages += 1
            if not keep:
                self._pending = None
                self._settled.notify_all()
                return False
        batch.body = _encode(batch)
        return True

    def _settle(self, batch: _Batch, *, sent: bool) -> None:
        with self._lock:
            if sent:
                self._sent += len(batch.events)
            else:
                self._failed += len(batch.events)
            if self._pending is batch:
                self._pending = None
            self._settled.notify_all()

    def _stop_for_good(self, status: int) -> None:
        with self._lock:
            discarded = len(self._buffer) + (len(self._pending.events) if self._pending is not None else 0)
            self._failed += discarded
            self._popped += len(self._buffer)
            self._buffer = deque()
            self._pending = None
            self._accepting = False
            self._stopped = f"HTTP {status}"
            self._settled.notify_all()
        log.error("flagsdk: %s answered HTTP %d: the SDK key is %s; event reporting stopped (%d event(s) "
                  "discarded; nothing more is recorded until the key is fixed and the process restarted)",
                  self._log_url, status, "not valid" if status == 401 else "not allowed to send events",
                  discarded)

    def _warn_drops(self) -> None:
        if self._dropped and not self._drop_warned:
            self._drop_warned = True
            log.warning("flagsdk: the event buffer is full (%d events); dropping the oldest (%d so far; see "
                        "stats(); logged once)", self._capacity, self._dropped)

    def _is_settled(self, target: int) -> bool:
        """Every event with a sequence number below `target` has left for good."""
        pending = self._pending
        return self._popped >= target and (pending is None or pending.start >= target)

    def _log_once(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message, *args, exc_info=exc_info)

    # -- fork ------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: an empty buffer and LRU, zeroed counts, new locks and,
        if the parent was reporting, a new thread and session. The parent's session
        is dropped, not closed (its locks may have been held at the fork)."""
        stopped = self._stopped
        self._new_runtime()
        self._thread = None
        if stopped is not None:  # the key was refused: it still is
            self._stopped = stopped
            self._accepting = False
        elif self._closed:
            self._accepting = False
        elif self._started:
            self._spawn()


def _finite_number(value: Any) -> float | None:
    """`value` as a finite float; None for booleans, non-numbers, NaN, infinities and
    integers beyond a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _user_key(user: Any) -> Any:
    """The key of a user given as a Mapping or as an object with a `key` (the SDK's `User`)."""
    if isinstance(user, Mapping):
        return user.get("key")
    return getattr(user, "key", None)


def _exposure_prefix(result: Evaluation) -> str | None:
    """The JSON of an exposure of `result` up to its user; None if the server would refuse it."""
    flag, variant, rule_id, version = result.flag_key, result.variant, result.rule_id, result.flag_version
    if not (type(flag) is str and 0 < len(flag) <= MAX_NAME
            and type(variant) is str and 0 < len(variant) <= MAX_NAME
            and (rule_id is None or (type(rule_id) is str and 0 < len(rule_id) <= MAX_NAME))
            and type(version) is int and version >= 0):
        return None
    return (f'{{"kind":"exposure","flag":{_json_str(flag)},"variant":{_json_str(variant)},'
            f'"rule_id":{"null" if rule_id is None else _json_str(rule_id)},"reason":{_json_str(result.reason)},'
            f'"randomized":{"true" if result.randomized else "false"},"flag_version":{version},"user":')


def _encode(batch: _Batch) -> bytes:
    body = f'{{"batch_id":"{batch.batch_id}","events":[{",".join(text for _, text in batch.events)}]}}'
    return gzip.compress(body.encode(), compresslevel=GZIP_LEVEL, mtime=0)


def _error_body(body: bytes) -> dict[str, Any]:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _error_message(body: bytes) -> str:
    message = _error_body(body).get("message")
    if isinstance(message, str):
        return message[:300]
    return body[:200].decode("utf-8", "replace") or "no details"


def _refused_flag(body: bytes, events: list[WireEvent]) -> str | None:
    """The flag of the exposure a 422 names as `events[i].flag`, if that is what it names."""
    fields = _error_body(body).get("fields")
    if not isinstance(fields, dict):
        return None
    for name in fields:
        if isinstance(name, str) and name.startswith("events[") and name.endswith("].flag"):
            try:
                return events[int(name[len("events["):-len("].flag")])][0]
            except (ValueError, IndexError):
                return None
    return None


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number, not {value!r}")
    return value

