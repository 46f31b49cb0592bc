"""The admin pages in headless Chromium, against the real app on a loopback port.

Each test starts from a fresh store (`app`), signs in through the form and works
the pages with the keyboard-reachable controls people use (labels, roles). The
`context` fixture fails a test whose pages logged a JavaScript error.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
from flagsdk import FlagClient, bucket
from flask import Flask

from flagserver.rollout.controller import Controller
from flagserver.writes import change_flag
from tests.browser.helpers import screenshot, sign_in
from tests.browser.seed import record_split, seed_demo
from tests.live_server import LiveServer
from tests.support import missing, wait_for

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    missing("Playwright for Python is missing: pip install playwright (never `playwright install`)")

pytestmark = pytest.mark.browser

ENV = "production"


def store_of(app: Flask) -> Any:
    return app.extensions["flagserver.store"]


def flag_url(server: LiveServer, key: str) -> str:
    return f"{server.url}/admin/envs/{ENV}/flags/{key}"


def test_sign_in_refuses_a_wrong_token_then_signs_in_and_out(page: Any, live_server: LiveServer,
                                                             admin_token: str) -> None:
    page.goto(f"{live_server.url}/admin/envs/{ENV}/flags")
    expect(page).to_have_url(re.compile(r"/admin/sign-in\?next="))
    token = page.get_by_label("Admin token")
    token.fill("fsa_0123456789abcdef_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#f-token-error")).to_contain_text("This token is not valid")
    expect(page.get_by_label("Admin token")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Admin token").fill(admin_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Flags", exact=True)).to_be_visible()
    expect(page).to_have_url(f"{live_server.url}/admin/envs/{ENV}/flags")  # where it was going
    expect(page.locator(".who")).to_contain_text("test-admin")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(f"{live_server.url}/admin/envs/{ENV}/flags")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_new_flag_at_25_percent_reaches_a_real_sdk(page: Any, app: Flask, live_server: LiveServer,
                                                     admin_token: str, sdk_key: str) -> None:
    sign_in(page, live_server.url, admin_token)
    page.get_by_role("link", name="New flag").first.click()
    page.get_by_label("Key", exact=True).fill("new-checkout")
    page.get_by_label("Description").fill("The one-page checkout")
    page.get_by_label("Tags").fill("checkout, payments")
    page.get_by_label(re.compile("Turn it on")).check()
    page.get_by_role("button", name="Create flag").click()
    expect(page.locator("h1")).to_contain_text("new-checkout")
    expect(page.locator(".flash-success")).to_contain_text("Flag new-checkout created")

    users = [f"user-{i}" for i in range(400)]
    expected = {u for u in users if bucket("new-checkout", u) < 2500}
    with FlagClient(live_server.url, sdk_key, poll_interval=1) as client:
        # The SDK has the flag, on at 0%: nobody gets it yet.
        wait_for(lambda: client.evaluate("new-checkout", {"key": "user-0"}).reason == "SPLIT", 10,
                 what="the SDK to have the flag", interval=0.1)
        assert not any(client.is_enabled("new-checkout", {"key": u}) for u in users)

        number = page.get_by_label("Percentage", exact=True)
        number.fill("25")
        expect(page.get_by_label("Percentage slider")).to_have_value("25")  # the slider follows the box
        page.get_by_role("button", name="Set percentage").click()
        expect(page.locator(".flash-success")).to_contain_text("new-checkout is now at 25%")

        # Picked up by polling: exactly the users whose bucket is under 25.00%.
        wait_for(lambda: {u for u in users if client.is_enabled("new-checkout", {"key": u})} == expected, 10,
                 what="the SDK to serve the flag at 25%", interval=0.1)
    assert 60 < len(expected) < 140
    assert store_of(app).get_flag(ENV, "new-checkout")["rollout"] == 25


def test_the_slider_works_by_keyboard_and_100_percent_is_confirmed_first(page: Any, app: Flask,
                                                                          live_server: LiveServer,
                                                                          admin_token: str) -> None:
    store_of(app).create_flag(ENV, {"key": "dark-mode", "enabled": True, "rollout": 25}, actor="test")
    sign_in(page, live_server.url, admin_token)
    page.goto(flag_url(live_server, "dark-mode"))
    slider = page.get_by_label("Percentage slider")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_label("Percentage", exact=True)).to_have_value("26")
    page.keyboard.press("End")
    expect(page.get_by_label("Percentage", exact=True)).to_have_value("100")

    page.get_by_role("button", name="Set percentage").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Set it to 100%?")
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Enter")  # Cancel has the focus
    expect(dialog).to_be_hidden()
    assert store_of(app).get_flag(ENV, "dark-mode")["rollout"] == 25

    page.get_by_role("button", name="Set percentage").click()
    page.get_by_role("button", name="Set to 100%").click()
    expect(page.locator(".flash-success")).to_contain_text("dark-mode is now at 100%")
    assert store_of(app).get_flag(ENV, "dark-mode")["rollout"] == 100


def test_a_segment_rule_reordered_and_the_preview_says_who_gets_what(page: Any, app: Flask,
                                                                      live_server: LiveServer,
                                                                      admin_token: str) -> None:
    store_of(app).create_flag(ENV, {"key": "new-checkout", "enabled": True, "rollout": 0}, actor="test")
    sign_in(page, live_server.url, admin_token)

    # A segment: staff by email domain, case-insensitively.
    page.get_by_role("link", name="Segments").click()
    page.get_by_role("link", name="New segment").first.click()
    page.get_by_label("Key", exact=True).fill("internal")
    page.get_by_label("Description").fill("Our own staff")
    page.get_by_role("button", name="Add condition").click()
    expect(page.get_by_label("Attribute", exact=True)).to_be_focused()  # the new condition takes the focus
    page.keyboard.type("email")
    page.get_by_label("Operator").select_option("ends_with")
    page.get_by_label(re.compile("^Values")).fill("@company.com")
    page.get_by_label("Ignore case").check()
    page.get_by_role("button", name="Create segment").click()
    expect(page.locator(".flash-success")).to_contain_text("Segment internal created")
    assert store_of(app).get_segment(ENV, "internal")["conditions"] == [
        {"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True, "negate": False}]

    # Two rules: staff get "on"; free-tier users get "off"; then free-tier moves first.
    page.goto(flag_url(live_server, "new-checkout"))
    page.get_by_role("button", name="Add rule").click()
    first = page.locator("fieldset.rule").nth(0)
    expect(first.get_by_label("Rule id")).to_have_value("rule-1")
    first.get_by_label("Rule id").fill("staff")
    first.get_by_label("internal", exact=True).check()
    first.get_by_label("Serve", exact=True).select_option("on")
    page.get_by_role("button", name="Add rule").click()
    second = page.locator("fieldset.rule").nth(1)
    second.get_by_label("Rule id").fill("free")
    second.get_by_label("Serve", exact=True).select_option("off")
    second.get_by_role("button", name="Add condition").click()
    second.get_by_label("Attribute", exact=True).fill("plan")
    second.get_by_label(re.compile("^Values")).fill("free-tier")
    second.get_by_role("button", name="Move up rule 2").click()
    expect(page.locator("fieldset.rule").nth(0).get_by_label("Rule id")).to_have_value("free")
    expect(page.get_by_role("button", name="Move up rule 1")).to_be_disabled()
    page.get_by_role("button", name="Save rules").click()
    expect(page.locator(".flash-success")).to_contain_text("Rules of new-checkout saved (2 rules)")
    rules = store_of(app).get_flag(ENV, "new-checkout")["rules"]
    assert [r["id"] for r in rules] == ["free", "staff"]
    assert rules[0]["conditions"][0]["values"] == ["free-tier"] and rules[0]["serve"] == "off"
    assert rules[1]["segments"] == ["internal"] and rules[1]["serve"] == "on"

    # Who gets what, as the engine says.
    user_box = page.get_by_label("User (JSON)")
    user_box.fill('{"key": "u-1", "email": "Ada@Company.com"}')
    page.get_by_role("button", name="Evaluate").click()
    result = page.locator("#preview-result")
    expect(result).to_contain_text("Gets on")
    expect(result).to_contain_text("TARGETING_MATCH")
    expect(result).to_contain_text("matched rule staff")
    page.get_by_label("User (JSON)").fill('{"key": "u-2", "email": "ada@company.com", "plan": "free-tier"}')
    page.get_by_role("button", name="Evaluate").click()
    expect(result).to_contain_text("Gets off")
    expect(result).to_contain_text("matched rule free")
    page.get_by_label("User (JSON)").fill('{"key": "u-3", "email": "x@example.com"}')
    page.get_by_role("button", name="Evaluate").click()
    expect(result).to_contain_text("SPLIT")
    expect(result).to_contain_text("by the flag’s percentage split")
    page.get_by_label("User (JSON)").fill('{"key": ')
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#f-user-error")).to_contain_text("not valid JSON")


def test_a_validation_error_is_shown_beside_its_field(page: Any, app: Flask, live_server: LiveServer,
                                                      admin_token: str) -> None:
    store_of(app).create_flag(ENV, {"key": "search-v2", "enabled": True}, actor="test")
    sign_in(page, live_server.url, admin_token)
    page.goto(flag_url(live_server, "search-v2"))
    page.get_by_role("button", name="Add rule").click()
    page.get_by_role("button", name="Add condition").click()
    page.get_by_label("Attribute", exact=True).fill("email")
    page.get_by_label("Operator").select_option("matches")
    page.get_by_label(re.compile("^Values")).fill("(unclosed")
    page.get_by_role("button", name="Save rules").click()

    values = page.get_by_label(re.compile("^Values"))
    expect(values).to_have_value("(unclosed")  # what was typed is still there
    expect(values).to_have_attribute("aria-invalid", "true")
    message = page.locator("#f-rules-0-conditions-0-values-error")
    expect(message).to_contain_text("not a valid regular expression")
    expect(page.locator(".error-summary")).to_be_focused()
    page.locator(".error-summary a").first.click()
    expect(values).to_be_focused()
    assert store_of(app).get_flag(ENV, "search-v2")["rules"] == []


def test_a_stale_edit_says_someone_else_changed_the_flag_and_shows_the_new_state(
        context: Any, watch: Any, app: Flask, live_server: LiveServer, admin_token: str) -> None:
    store_of(app).create_flag(ENV, {"key": "new-checkout", "enabled": True, "rollout": 5}, actor="test")
    mine, theirs = watch.watch(context.new_page()), watch.watch(context.new_page())
    sign_in(mine, live_server.url, admin_token)
    for page in (mine, theirs):
        page.goto(flag_url(live_server, "new-checkout"))
        expect(page.get_by_label("Percentage", exact=True)).to_have_value("5")

    theirs.get_by_label("Percentage", exact=True).fill("30")
    theirs.get_by_role("button", name="Set percentage").click()
    expect(theirs.locator(".flash-success")).to_contain_text("now at 30%")

    mine.get_by_label("Percentage", exact=True).fill("40")
    mine.get_by_role("button", name="Set percentage").click()
    notice = mine.locator("#stale-notice")
    expect(notice).to_contain_text("Someone else changed this flag")
    expect(notice).to_contain_text("version 2")
    expect(notice).to_be_focused()
    expect(mine.get_by_label("Percentage", exact=True)).to_have_value("30")  # the new state
    assert store_of(app).get_flag(ENV, "new-checkout")["rollout"] == 30


def test_a_rollout_plan_starts_advances_and_rolls_back(page: Any, app: Flask, live_server: LiveServer,
                                                       admin_token: str) -> None:
    store = store_of(app)
    store.create_flag(ENV, {"key": "search-v2", "description": "The new search ranking"}, actor="test")
    sign_in(page, live_server.url, admin_token)
    page.goto(flag_url(live_server, "search-v2"))
    page.get_by_role("link", name="Automatic rollout").click()
    expect(page.get_by_role("heading", name="Automatic rollout of search-v2")).to_be_visible()

    # An empty guardrail is refused, beside its box; then the plan saves.
    page.get_by_role("button", name="Save plan").click()
    expect(page.locator("#f-guardrails-0-event-error")).to_be_visible()
    page.get_by_label("Guardrail 1: event").fill("checkout_completed")
    page.get_by_role("button", name="Save plan").click()
    expect(page.locator(".flash-success")).to_contain_text("Rollout plan saved")

    page.get_by_role("button", name="Start").click()
    expect(page.locator(".flash-success")).to_contain_text("running at 5%")
    ladder = page.get_by_role("list", name="Stages")
    expect(ladder.locator('[aria-current="step"]')).to_contain_text("5%")
    assert store.get_flag(ENV, "search-v2")["rollout"] == 5

    # Users arrive (5% canary, conversion alike in both arms) and the controller looks
    # after the minimum soak: the stage is promoted.
    record_split(store, ENV, "search-v2", control=5700, canary=300, event="checkout_completed",
                 control_rate=1 / 3, canary_rate=1 / 3)
    decisions = Controller(store).run_once(time.time() + 700)
    assert decisions and decisions[0][2].action == "promote", decisions
    page.reload()
    expect(ladder.locator('[aria-current="step"]')).to_contain_text("25%")
    expect(ladder.locator(".step.done")).to_contain_text("5%")
    expect(page.locator(".decisions li").first).to_contain_text("promoted to 25%")
    earlier = page.locator("details.stage-report").nth(1)
    earlier.locator("summary").click()
    chart = earlier.locator("svg.chart")
    expect(chart).to_contain_text("on (canary)")
    expect(chart).to_contain_text("300 users")
    expect(earlier.locator("table")).to_contain_text("33.3%")

    page.get_by_role("button", name="Roll back").click()
    expect(page.get_by_role("dialog")).to_contain_text("Roll search-v2 back to 0% now?")
    page.get_by_role("dialog").get_by_role("button", name="Roll back").click()
    expect(page.locator(".flash-success")).to_contain_text("rolled back")
    expect(ladder.locator(".step.failed")).to_contain_text("25%")
    expect(page.locator(".decisions li").first).to_contain_text("rolled back to 0% by test-admin")
    assert store.get_flag(ENV, "search-v2")["rollout"] == 0


def test_a_form_post_without_the_csrf_token_is_refused(page: Any, app: Flask, live_server: LiveServer,
                                                       admin_token: str) -> None:
    store_of(app).create_flag(ENV, {"key": "new-checkout", "enabled": True, "rollout": 5}, actor="test")
    sign_in(page, live_server.url, admin_token)
    page.goto(flag_url(live_server, "new-checkout"))
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert set(cookies) == {"flagserver_admin"}
    url = f"{flag_url(live_server, 'new-checkout')}/enabled"
    with requests.Session() as http:
        refused = http.post(url, data={"enabled": "false"}, cookies=cookies, allow_redirects=False, timeout=5)
        assert refused.status_code == 400
        assert "security token" in refused.text
        assert store_of(app).get_flag(ENV, "new-checkout")["enabled"] is True
        # The same cookie with the page's token is accepted: the refusal was about the token.
        token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        accepted = http.post(url, data={"enabled": "false", "csrf_token": token}, cookies=cookies,
                             allow_redirects=False, timeout=5)
        assert accepted.status_code == 302
    assert store_of(app).get_flag(ENV, "new-checkout")["enabled"] is False


UNLABELLED = """() => Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
  .filter(el => !el.closest('template') && !(el.labels && el.labels.length)
                && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id || el.outerHTML.slice(0, 80))"""


def test_every_page_renders_cleanly_with_labelled_controls(page: Any, app: Flask, live_server: LiveServer,
                                                           admin_token: str) -> None:
    """A tour of the main pages with realistic data: no script errors (the fixture
    checks), every control labelled, skip link first, a screenshot of each."""
    store = store_of(app)
    seed_demo(store, ENV)
    Controller(store).run_once(time.time())
    change_flag(store, ENV, "dark-mode", {"description": "Dark theme for the whole dashboard"}, actor="admin:grace")
    sign_in(page, live_server.url, admin_token)
    tour = [
        ("flags", f"/admin/envs/{ENV}/flags", "Flags"),
        ("flag", f"/admin/envs/{ENV}/flags/new-checkout", "new-checkout"),
        ("flag-weights", f"/admin/envs/{ENV}/flags/checkout-layout", "checkout-layout"),
        ("rollout", f"/admin/envs/{ENV}/flags/search-v2/rollout", "Automatic rollout of search-v2"),
        ("segments", f"/admin/envs/{ENV}/segments", "Segments"),
        ("segment", f"/admin/envs/{ENV}/segments/internal", "internal"),
        ("new-flag", f"/admin/envs/{ENV}/flags/new", "New flag"),
        ("audit", "/admin/audit", "Audit log"),
    ]
    for name, path, heading in tour:
        page.goto(live_server.url + path)
        expect(page.locator("h1")).to_contain_text(heading)
        assert page.evaluate(UNLABELLED) == [], name
        screenshot(page, name)
        if page.locator("[autofocus]").count() == 0:  # a form page puts the focus in its first box
            page.keyboard.press("Tab")
            expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

    # The pages' content, briefly: a preview, the list, the rollout's evidence, the audit diff.
    page.goto(f"{live_server.url}/admin/envs/{ENV}/flags/new-checkout")
    page.get_by_label("User (JSON)").fill('{"key": "user-7", "email": "grace@company.com", "plan": "pro"}')
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#preview-result")).to_contain_text("matched rule staff")
    screenshot(page, "flag-preview")
    page.goto(f"{live_server.url}/admin/envs/{ENV}/flags?tag=checkout")
    expect(page.locator("tbody tr")).to_have_count(2)
    page.goto(f"{live_server.url}/admin/envs/{ENV}/flags/search-v2/rollout")
    expect(page.locator("svg.chart").first).to_contain_text("checkout_completed: conversion")
    expect(page.locator(".decisions")).to_contain_text("held at 5%")
    page.goto(f"{live_server.url}/admin/audit?environment={ENV}&key=dark-mode&filtered=1")
    first = page.locator(".audit-entry").first
    expect(first).to_contain_text("admin:grace")
    expect(first.locator("tr.diff-changed")).to_contain_text("Dark theme for the whole dashboard")

    # The environment switcher keeps the page and changes the environment.
    page.goto(f"{live_server.url}/admin/envs/{ENV}/segments")
    page.get_by_label("Environment").select_option("staging")
    page.get_by_role("button", name="Switch").click()
    expect(page).to_have_url(f"{live_server.url}/admin/envs/staging/segments")
