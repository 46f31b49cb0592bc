"""Config sync: keeps a client's config in step with the server by polling.

One daemonic thread, `flagsdk.sync`, asks `GET {url}/api/v1/sdk/config` every
`poll_interval` seconds with the last `ETag` in `If-None-Match` (a 304 costs the
server almost nothing and the SDK no parsing). Failures (no answer, timeouts, 5xx,
429) back off exponentially with jitter up to a cap and the last good config stays
in use; a 401 or 403 stops the thread after one error log. A document that is not
a config is refused and the previous one kept.

With a `cache_path` the last good document is written atomically next to its ETag,
and read back when a process starts while the server cannot be reached.

After `os.fork()` the child gets its own thread, session and locks and keeps the
config it inherited (gunicorn --preload, uwsgi): see `_after_fork_in_child`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._background import MAX_BACKOFF, LiveSet, positive_seconds, retry_delay
from ._background import backoff_delay as backoff_delay  # where it used to live (and tests import it)
from ._http import (
    PERMANENT_STATUSES,
    HttpResponse,
    SdkHttp,
    TransportError,
    check_base_url,
    is_retryable_status,
    safe_url,
)

log = logging.getLogger(__name__)

CONFIG_PATH = "/api/v1/sdk/config"
MIN_POLL_INTERVAL = 1.0
# Before the first config, retry soon: the application may be waiting for it.
FIRST_RETRY = 0.25
CLOSE_TIMEOUT = 2.0
CACHE_FORMAT = 1


# -- the on-disk cache ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedConfig:
    document: Any
    etag: str | None
    age: float  # seconds since the server last confirmed it (the file's mtime)


class ConfigCache:
    """The last good config document of one SDK key in one JSON file.

    Written to a temporary file in the same directory and moved into place with
    `os.replace`, so a reader (another worker, the next process) never sees half
    a file. The file records a digest of the SDK key, so a cache written for
    another environment's key is never served. Failures are reported by raising
    `OSError` (write) or returning None (read); the caller logs.
    """

    def __init__(self, path: str | os.PathLike[str], sdk_key: str) -> None:
        self.path = os.fspath(path)
        self._key_id = hashlib.sha256(b"flagsdk-cache:" + sdk_key.encode()).hexdigest()[:32]

    def load(self) -> CachedConfig | None:
        try:
            with open(self.path, "rb") as f:
                age = max(0.0, time.time() - os.fstat(f.fileno()).st_mtime)
                raw = json.loads(f.read())
        except FileNotFoundError:
            log.debug("flagsdk: no config cache at %s yet", self.path)
            return None
        except (OSError, ValueError) as exc:
            log.warning("flagsdk: cannot read the config cache %s, ignoring it: %s", self.path, exc)
            return None
        if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT or "document" not in raw:
            log.warning("flagsdk: %s is not a flagsdk config cache, ignoring it", self.path)
            return None
        if raw.get("key") != self._key_id:
            log.warning("flagsdk: the config cache %s was written for another SDK key, ignoring it", self.path)
            return None
        etag = raw.get("etag")
        return CachedConfig(document=raw["document"], etag=etag if isinstance(etag, str) else None, age=age)

    def save(self, document: Any, etag: str | None) -> None:
        data = json.dumps(
            {"format": CACHE_FORMAT, "key": self._key_id, "etag": etag, "document": document},
            separators=(",", ":"),
        ).encode()
        directory, name = os.path.split(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def touch(self) -> None:
        """Mark the cached document as confirmed now (after a 304)."""
        os.utime(self.path)


# -- fork safety --------------------------------------------------------------------

# The live ConfigSyncs, weakly, with one process-wide fork hook that restarts them.
_live: LiveSet[ConfigSync] = LiveSet(log, fork_failure="flagsdk: could not restart config sync after fork")


# -- the sync ------------------------------------------------------------------------


class ConfigSync:
    """Polls the server for one SDK key's config and hands each new document to
    `apply_document(document) -> bool` (False: not a config; the previous one stays).

    The constructor raises `ValueError` for programmer errors only (a URL that is
    not http(s), an empty key, a non-positive interval or timeout); nothing after
    it raises: failures are logged (once per streak) and retried.
    """

    def __init__(
        self,
        url: str,
        sdk_key: str,
        *,
        apply_document: Callable[[Any], bool],
        poll_interval: float = 10.0,
        cache_path: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._url = check_base_url(url) + CONFIG_PATH
        self._log_url = safe_url(self._url)
        if not isinstance(sdk_key, str) or not sdk_key.strip():
            raise ValueError("sdk_key must be a non-empty string")
        if not callable(apply_document):
            raise ValueError("apply_document must be callable")
        poll_interval = positive_seconds(poll_interval, "poll_interval")
        if poll_interval < MIN_POLL_INTERVAL:
            log.warning("flagsdk: poll_interval %.3gs is below the minimum; polling every %.0fs",
                        poll_interval, MIN_POLL_INTERVAL)
            poll_interval = MIN_POLL_INTERVAL
        self._sdk_key = sdk_key
        self._apply_document = apply_document
        self._poll_interval = poll_interval
        self._timeout = positive_seconds(timeout, "timeout")
        self._max_backoff = max(MAX_BACKOFF, poll_interval)
        self._cache = ConfigCache(cache_path, sdk_key) if cache_path is not None else None
        self._cached: CachedConfig | None = None
        self._cache_read = False
        self._cache_write_failing = False

        # Changed by the sync thread, and by `wait_first` when it falls back to the
        # cache; always under `_lock` so a stale cache can never replace a newer config.
        self._etag: str | None = None
        self._has_config = False
        self._last_sync: float | None = None
        self._failures = 0
        self._refused_digest: bytes | None = None
        self._stopped_status: int | None = None  # 401/403: we stopped for good

        self._started = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._http: SdkHttp | None = None
        self._new_runtime()
        _live.add(self)

    def __repr__(self) -> str:
        return f"<ConfigSync {self._log_url} every {self._poll_interval:g}s>"

    def _new_runtime(self) -> None:
        """The locks, events and randomness of this process (re-made after fork)."""
        self._lock = threading.Lock()  # guards applying documents and the state above
        self._state_lock = threading.Lock()  # guards start/close
        self._stop = threading.Event()
        self._first = threading.Event()  # the first attempt settled: a config, or a permanent refusal
        self._rng = random.Random()

    # -- public -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the `flagsdk.sync` thread; the first request goes out at once.
        Idempotent; does nothing after `close()`."""
        with self._state_lock:
            if self._started or self._closed:
                return
            self._started = True
            self._spawn(initial_delay=0.0)

    def wait_first(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first config; True when one is in
        use. If the server has not answered by then, a cached config is used."""
        if not self._first.wait(max(0.0, timeout)):
            self._use_cache("the server has not answered yet")
        return self._has_config

    def config_age(self) -> float | None:
        """Seconds since the config in use was last confirmed by the server (a 304
        counts), or since the cache file was written; None before any config."""
        last = self._last_sync
        return None if last is None else max(0.0, time.monotonic() - last)

    def close(self) -> None:
        """Stop the thread (waking it at once), wait for it up to a deadline, and
        close the HTTP session. Idempotent; safe from inside `on_change`."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        _live.discard(self)
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT)
            if thread.is_alive():
                log.warning("flagsdk: the sync thread did not stop within %.0fs; it will exit on its own",
                            CLOSE_TIMEOUT)
        if self._http is not None:
            self._http.close()

    # -- the thread ---------------------------------------------------------------------

    def _spawn(self, initial_delay: float) -> None:
        self._http = SdkHttp(self._sdk_key, timeout=self._timeout)
        self._thread = threading.Thread(
            target=self._run, args=(self._http, self._stop, initial_delay), name="flagsdk.sync", daemon=True
        )
        self._thread.start()

    def _run(self, http: SdkHttp, stop: threading.Event, initial_delay: float) -> None:
        # `http` and `stop` are passed in, not read from self, so that this loop
        # keeps to the objects of the process that started it.
        try:
            if initial_delay > 0 and stop.wait(initial_delay):
                return
            while not stop.is_set():
                began = time.monotonic()
                try:
                    delay = self._poll_once(http)
                except Exception:  # one bad round must not end the sync
                    log.exception("flagsdk: unexpected error in config sync; retrying")
                    delay = self._backoff(None)
                if delay is None:
                    return
                if not self._failures:  # keep the period, whatever the request took
                    delay -= time.monotonic() - began
                stop.wait(max(0.0, delay))
        finally:
            http.close()

    def _poll_once(self, http: SdkHttp) -> float | None:
        """One request; returns the seconds to wait before the next, or None to stop."""
        etag = self._etag
        if not self._has_config:
            with self._lock:
                cached = self._read_cache()
            if cached is not None and cached.etag:
                etag = cached.etag  # a 304 then confirms the cached document
        try:
            response = http.get(self._url, etag=etag)
        except TransportError as exc:
            return self._failed(str(exc), retryable=exc.retryable)
        if response.status == 304 and etag is not None:
            if not self._has_config and not self._use_cache("the server confirmed it (304)", confirmed=True):
                self._etag = None
                self._cached = None
                return 0.0  # the cached document is unusable: ask for the full one now
            return self._succeeded(confirmed=True)
        if response.status == 200:
            return self._received(response)
        if response.status in PERMANENT_STATUSES:
            self._stop_for_good(response.status)
            return None
        return self._failed(
            f"HTTP {response.status}",
            retryable=is_retryable_status(response.status),
            retry_after=response.retry_after,
        )

    def _received(self, response: HttpResponse) -> float:
        if response.etag is not None and response.etag == self._etag and self._has_config:
            return self._succeeded(confirmed=True)  # same strong ETag: the same bytes we already use
        digest = hashlib.sha256(response.body).digest()
        if digest == self._refused_digest:  # refused already; do not parse or log again
            return self._refused(digest)
        try:
            document = json.loads(response.body)
        except ValueError as exc:  # includes UnicodeDecodeError
            log.error("flagsdk: %s sent a body that is not JSON (%s); keeping the previous config",
                      self._log_url, exc)
            return self._refused(digest)
        with self._lock:
            applied = self._apply(document)
            if applied:
                self._has_config = True
                self._etag = response.etag
                self._cached = None  # superseded; free it
        if not applied:  # apply_document logged why
            return self._refused(digest)
        self._refused_digest = None
        self._save_cache(document, response.etag)
        return self._succeeded()

    def _succeeded(self, *, confirmed: bool = False) -> float:
        """`confirmed`: the server said the config in use is current (a 304)."""
        with self._lock:
            if self._failures:
                log.info("flagsdk: config sync with %s works again after %d failed attempt(s)",
                         self._log_url, self._failures)
            self._failures = 0
            self._last_sync = time.monotonic()
        if confirmed and self._cache is not None and not self._cache_write_failing:
            # The file's age is the cached config's age when a later process falls back on it.
            try:
                self._cache.touch()
            except OSError:
                pass  # not written (the config came from elsewhere) or removed: the next change writes it
        self._first.set()
        return self._poll_interval

    def _refused(self, digest: bytes) -> float:
        """A 200 whose body is not a config. The server answers, so there is no load
        to back off from: keep the pace (a fix is seen within one interval) and the
        previous config, and log a given bad body once."""
        self._refused_digest = digest
        if not self._has_config:
            self._use_cache("the server sent no usable config")
        return self._poll_interval

    def _failed(self, problem: str, *, retryable: bool, retry_after: float | None = None) -> float:
        with self._lock:
            self._failures += 1
            failures = self._failures
        if not self._has_config:
            self._use_cache("the server cannot be reached")
        delay = self._backoff(retry_after)
        if failures == 1:
            level = logging.WARNING if retryable else logging.ERROR
            log.log(level, "flagsdk: config sync with %s failed (%s); %s, retrying with backoff (next in %.1fs)",
                    self._log_url, problem,
                    "keeping the last good config" if self._has_config else "serving defaults", delay)
        else:
            log.debug("flagsdk: config sync failed again (%s, %d in a row); next in %.1fs", problem, failures, delay)
        return delay

    def _backoff(self, retry_after: float | None) -> float:
        base = self._poll_interval if self._has_config else min(self._poll_interval, FIRST_RETRY)
        return retry_delay(self._failures, retry_after, base=base, cap=self._max_backoff, rng=self._rng)

    def _stop_for_good(self, status: int) -> None:
        self._stopped_status = status
        log.error(
            "flagsdk: %s answered HTTP %d: the SDK key is %s; config sync stopped (%s until the key is fixed "
            "and the process restarted)",
            self._log_url, status, "not valid" if status == 401 else "not allowed to read this config",
            "keeping the last good config" if self._has_config else "serving defaults",
        )
        self._first.set()  # nothing more to wait for

    def _apply(self, document: Any) -> bool:
        try:
            return bool(self._apply_document(document))
        except Exception:  # the callback is not ours to trust blindly
            log.exception("flagsdk: applying a config document failed; keeping the previous config")
            return False

    # -- the cache -----------------------------------------------------------------

    def _read_cache(self) -> CachedConfig | None:
        if self._cache is None:
            return None
        if not self._cache_read:
            self._cache_read = True
            self._cached = self._cache.load()
        return self._cached

    def _use_cache(self, why: str, *, confirmed: bool = False) -> bool:
        """Serve the cached document when no config is in use yet; True if it is."""
        if self._cache is None:
            return False
        with self._lock:
            if self._has_config:
                return True
            cached = self._read_cache()
            if cached is None:
                return False
            if not self._apply(cached.document):
                log.warning("flagsdk: the cached config in %s is not usable, ignoring it", self._cache.path)
                self._cached = None
                return False
            self._has_config = True
            self._etag = cached.etag
            self._last_sync = time.monotonic() - (0.0 if confirmed else cached.age)
        if confirmed:  # the caller goes on to record the success
            log.info("flagsdk: using the cached config from %s: %s", self._cache.path, why)
        else:
            log.warning("flagsdk: %s; serving the cached config from %s (%.0fs old)", why, self._cache.path,
                        cached.age)
            self._first.set()
        return True

    def _save_cache(self, document: Any, etag: str | None) -> None:
        if self._cache is None:
            return
        try:
            self._cache.save(document, etag)
        except (OSError, TypeError, ValueError) as exc:
            if not self._cache_write_failing:
                log.warning("flagsdk: cannot write the config cache %s: %s (logged once)", self._cache.path, exc)
            self._cache_write_failing = True
        else:
            self._cache_write_failing = False

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: new locks, events and session, and a new thread if the
        parent was syncing. The inherited snapshot, ETag and age stay.

        The parent's session is dropped, not closed: closing it would take
        urllib3's pool locks, which a parent thread may have held at the fork.
        The child's copies of its sockets are closed when it is collected; the
        parent's connections are not affected by that.
        """
        was_first = self._first.is_set()
        self._new_runtime()
        if was_first:
            self._first.set()
        self._thread = None
        self._http = None
        if self._started and not self._closed and self._stopped_status is None:
            # Workers forked together should not all ask at the same instant.
            self._spawn(initial_delay=self._rng.uniform(0.0, min(1.0, self._poll_interval)))
