"""FlagClient: a thin facade over the engine, config sync and event reporting."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine.evaluate import (
    ERROR,
    FLAG_NOT_FOUND,
    GENERAL,
    INVALID_CONTEXT,
    Evaluation,
    EvaluationError,
    Snapshot,
    error_result,
)
from .engine.model import ConfigError
from .engine.operators import InvalidContext

if TYPE_CHECKING:
    from ._events import EventProcessor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class User:
    """A user: a `key` and any attributes (strings, numbers, booleans, lists of strings)."""

    key: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The user as the engine reads it: the attributes, with `key` set to the
        user's key (an attribute named `key` is overridden). Raises TypeError when
        `attributes` is not a mapping; the client's evaluation methods turn that into
        an `ERROR` result with the default, never an exception."""
        return {**self.attributes, "key": self.key}


class FlagClient:
    """Evaluates flags in-process from a config kept in sync with the flag server.

    `FlagClient(url, sdk_key)` syncs with a server; `FlagClient(offline=True,
    bootstrap=...)` evaluates from a dict or a JSON file and never touches the
    network. The constructor raises only for programmer errors (no URL and not
    offline, an offline client without a bootstrap that can be read); evaluation
    never raises.

    An online client reports what it serves: each evaluation records an exposure
    (once per user, flag version and variant in this process), `track` records
    conversions, and a background thread sends them in batches (`events=False`
    turns that off; an offline client records nothing). See `stats()`.
    """

    def __init__(
        self,
        url: str | None = None,
        sdk_key: str | None = None,
        *,
        offline: bool = False,
        bootstrap: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        init_timeout: float = 2.0,
        poll_interval: float = 10.0,
        cache_path: str | os.PathLike[str] | None = None,
        on_change: Callable[[Snapshot], None] | None = None,
        timeout: float = 5.0,
        events: bool = True,
        event_capacity: int = 10_000,
        flush_interval: float = 5.0,
        event_batch_size: int = 500,
        exposure_dedupe_size: int = 100_000,
    ) -> None:
        self._snapshot = Snapshot.empty()
        self._ready = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self._errors: dict[tuple[str, str | None, str], Evaluation] = {}
        self._on_change = on_change
        self._last_sync: float | None = None
        self._sync: Any = None
        self._events: EventProcessor | None = None
        self.offline = offline
        if bootstrap is not None:
            document = _read_bootstrap(bootstrap)
            if not self._apply_document(document, source="bootstrap"):
                raise ValueError("bootstrap is not a config document")
        if offline:
            if bootstrap is None:
                raise ValueError("an offline FlagClient needs a bootstrap (a dict or a JSON file)")
            return
        if not url or not sdk_key:
            raise ValueError("FlagClient needs a server url and an sdk_key, or offline=True")
        from ._events import EventProcessor
        from ._sync import ConfigSync

        if events:
            self._events = EventProcessor(
                url,
                sdk_key,
                capacity=event_capacity,
                batch_size=event_batch_size,
                flush_interval=flush_interval,
                dedupe_size=exposure_dedupe_size,
                timeout=timeout,
            )
        self._sync = ConfigSync(
            url,
            sdk_key,
            apply_document=self._apply_document,
            poll_interval=poll_interval,
            cache_path=cache_path,
            timeout=timeout,
        )
        self._sync.start()
        if self._events is not None:
            self._events.start()
        if not self._sync.wait_first(init_timeout):
            log.warning("flagsdk: no config from %s within %.1fs; serving defaults until it arrives", url, init_timeout)

    # -- evaluation -------------------------------------------------------------

    def is_enabled(self, flag_key: str, user: Any, default: bool = False) -> bool:
        """True when `user` gets any variant but the flag's first (`off`).
        Never raises: on any failure returns `default`."""
        try:
            result = self._snapshot.evaluators[flag_key](user)
        except Exception:  # no such flag, a bad user, a bad key: the slow path says which, once
            pass
        else:
            events = self._events
            if events is not None:
                events.expose(result, user)
            return result.enabled
        result = self.evaluate(flag_key, user)
        return result.enabled if result.reason != ERROR else default

    def variant(self, flag_key: str, user: Any, default: str | None = None) -> str | None:
        """The variant `user` gets, or `default` on any failure. Never raises."""
        return self.evaluate(flag_key, user, default).variant

    def evaluate(self, flag_key: str, user: Any, default: str | None = None) -> Evaluation:
        """The full result (variant, reason, rule id, ...). Never raises."""
        evaluator = self._snapshot.evaluators.get(flag_key) if type(flag_key) is str else None
        if evaluator is None:
            return self._error(flag_key, default, FLAG_NOT_FOUND, f"no flag {flag_key!r}")
        try:
            result = evaluator(user)
        except EvaluationError as exc:
            return self._error(flag_key, default, exc.code, exc.message)
        except InvalidContext as exc:
            return self._error(flag_key, default, INVALID_CONTEXT, str(exc))
        except Exception as exc:  # never let a bug reach the application
            return self._error(flag_key, default, GENERAL, repr(exc))
        events = self._events
        if events is not None:
            events.expose(result, user)
        return result

    def _error(self, flag_key: str, default: str | None, code: str, message: str) -> Evaluation:
        """The error result, built once per (flag, default, code) and logged once."""
        cache_key = (flag_key, default, code)
        try:
            result = self._errors.get(cache_key)
        except TypeError:  # an unhashable default
            return error_result(flag_key, default, code, message)
        if result is None:
            flag = self._snapshot.config.flags.get(flag_key)
            result = error_result(flag_key, default, code, message, flag.version if flag is not None else None)
            if len(self._errors) >= 1024:
                self._errors.clear()
            self._errors[cache_key] = result
            if (flag_key, code) not in self._logged:
                self._logged.add((flag_key, code))
                log.warning("flagsdk: %s for flag %r: %s (serving the default; logged once)",
                            code, flag_key, message)
        return result

    # -- config -----------------------------------------------------------------

    def _apply_document(self, document: Any, source: str = "server") -> bool:
        """Swap in a new snapshot; a document that is not a config keeps the old one."""
        try:
            snapshot = Snapshot.from_dict(document)
        except ConfigError as exc:
            log.error("flagsdk: refused a config from %s, keeping the previous one: %s", source, exc)
            return False
        except Exception:  # a bug must not cost the application its flags
            log.exception("flagsdk: could not load a config from %s, keeping the previous one", source)
            return False
        for key, problem in snapshot.config.invalid_flags.items():
            log.warning("flagsdk: skipped malformed flag %r: %s", key, problem)
        self._snapshot = snapshot
        self._ready = True
        self._last_sync = time.monotonic()
        self._logged = set()
        self._errors = {}
        if self._on_change is not None:
            try:
                self._on_change(snapshot)
            except Exception:
                log.exception("flagsdk: on_change callback failed")
        return True

    @property
    def snapshot(self) -> Snapshot:
        """The config currently in use (immutable)."""
        return self._snapshot

    def is_ready(self) -> bool:
        """True once a config has been loaded (from the server, a cache or a bootstrap)."""
        return self._ready

    def config_age(self) -> float | None:
        """Seconds since the config was last confirmed by its source, or None if never."""
        if self._sync is not None:
            return self._sync.config_age()
        return None if self._last_sync is None else time.monotonic() - self._last_sync

    # -- events -----------------------------------------------------------------

    def track(self, event: str, user: Any, value: float | None = None) -> None:
        """Record that `user` did `event` (any name: "checkout_completed"), with an
        optional number (an amount, a duration). Sent in the background, never on
        the caller's thread. Never raises: bad input is logged once and not
        recorded. An offline client, or one made with `events=False`, records nothing."""
        events = self._events
        if events is not None:
            events.track(event, user, value)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Send the recorded events now and wait up to `timeout` seconds (None: no
        limit) until each was delivered or given up on. True if that happened in
        time (also when there is nothing to send); never raises."""
        events = self._events
        return True if events is None else events.flush(timeout)

    def stats(self) -> dict[str, Any]:
        """Event reporting counts of this process: `sent`, `failed` (refused by the
        server), `dropped` (buffer full), `queued` and `stopped` (None, or why reporting
        stopped: a refused SDK key)."""
        events = self._events
        if events is None:
            return {"sent": 0, "failed": 0, "dropped": 0, "queued": 0, "stopped": None}
        return events.stats()

    # -- lifecycle --------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Send the queued events (for up to `timeout` seconds), stop background
        work and release the connection pools. Idempotent; never raises for a
        server that cannot be reached (it logs what was not sent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._events is not None:
            self._events.close(timeout)
        if self._sync is not None:
            self._sync.close()

    def __enter__(self) -> FlagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_bootstrap(bootstrap: Mapping[str, Any] | str | os.PathLike[str]) -> Any:
    if isinstance(bootstrap, Mapping):
        return bootstrap
    with open(bootstrap, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"bootstrap file {os.fspath(bootstrap)!r} is not JSON: {exc}") from None
