"""What many test modules need: polling with a deadline, and what to do when a
tool a test needs (Redis, Chromium, Playwright) is missing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NoReturn

import pytest


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str] = "the condition", *,
             interval: float = 0.02, ignoring: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `condition` until it returns something truthy, and return that.

    Raises AssertionError naming `what` (a callable is called then, to describe the
    state at the deadline) and the last value after `timeout` seconds. Exceptions of
    the `ignoring` types count as "not yet" (a server still starting, say); any
    other exception propagates at once. `interval` is the pause between polls, not
    synchronisation: the deadline decides.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = condition()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}; last: {last!r}")
        time.sleep(interval)


def missing(message: str) -> NoReturn:
    """A tool a test needs is missing: fail in CI (where it must be there), skip
    with `message` as the reason anywhere else. Usable at module level too."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)
