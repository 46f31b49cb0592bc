"""What the browser tests share: signing in, screenshots, polling with a deadline."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def sign_in(page: Any, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/admin/")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Flags", exact=True).wait_for()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def poll(check: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Call `check` until it returns something truthy, or fail after `timeout` seconds
    (for what happens outside the page, such as the SDK's polling thread)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s: {check}")
        pause.wait(interval)
