"""Browser tests of the admin pages: headless Chromium (Debian's `chromium`) driven by
Playwright for Python, against the real app on a loopback port (`live_server`).

Never `playwright install`: the tests launch the system Chromium. When it is
missing they fail in CI and are skipped with the reason elsewhere.
Every page a test opens is watched for JavaScript console errors and uncaught
exceptions; a test fails if any appeared.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import missing

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        missing("Chromium is missing: apt-get install -y chromium (Debian), or set CHROMIUM_PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is missing: pip install playwright (never `playwright install`)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class PageWatch:
    """Console errors and uncaught exceptions of the pages of one test. A document
    answered with an error status on purpose (422 for a refused form, 412 for a stale
    edit) makes Chromium log "Failed to load resource"; that is the HTTP status, not a
    script error, and is left out only for documents, never for scripts or styles."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._error_documents: set[str] = set()

    def watch(self, page: Any) -> Any:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("response", self._response)
        return page

    def _response(self, response: Any) -> None:
        if response.request.resource_type == "document" and response.status >= 400:
            self._error_documents.add(response.url.split("#", 1)[0])

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "").split("#", 1)[0]
        if message.text.startswith("Failed to load resource") and url in self._error_documents:
            return
        self.errors.append(f"console: {message.text} ({url})")


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def context(browser: Any, watch: PageWatch, live_server: Any) -> Iterator[Any]:
    # Depends on `live_server` so that the pages close before the server stops.
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()
    assert watch.errors == [], "JavaScript errors on the pages:\n" + "\n".join(watch.errors)


@pytest.fixture
def page(context: Any, watch: PageWatch) -> Any:
    return watch.watch(context.new_page())
