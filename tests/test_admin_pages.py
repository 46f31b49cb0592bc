"""The admin pages through Flask's test client: signing in, the session cookie, CSRF,
error pages, and the form rules (inline 422 messages, stale 412s, confirmations).
The browser suite (tests/browser) drives the same pages in Chromium."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flagserver.admin import _diff, _forms
from flagserver.auth import create_token
from flagserver.writes import change_flag

FLAGS = "/admin/envs/production/flags"


def store_of(app: Flask) -> Any:
    return app.extensions["flagserver.store"]


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client: FlaskClient, token: str) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/admin/sign-in")
    response = client.post("/admin/sign-in", data={"token": token, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302, response.text
    return csrf_from(client.get(FLAGS).text)


def session_cookie(response: Any) -> str:
    cookies = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("flagserver_admin=")]
    assert cookies, response.headers
    return cookies[-1]


def create_flag(app: Flask, key: str = "new-checkout", **fields: Any) -> dict[str, Any]:
    return store_of(app).create_flag("production", {"key": key, **fields}, actor="test")  # type: ignore[no-any-return]


@pytest.fixture
def csrf(client: FlaskClient, admin_token: str) -> str:
    return sign_in(client, admin_token)


# -- signing in ----------------------------------------------------------------------------------


def test_pages_send_people_who_are_not_signed_in_to_the_sign_in_page(client: FlaskClient) -> None:
    response = client.get(f"{FLAGS}?q=checkout")
    assert response.status_code == 302
    assert response.location == "/admin/sign-in?next=/admin/envs/production/flags?q%3Dcheckout"


def test_signing_in_keeps_the_principal_in_a_safe_cookie_and_never_the_token(
        app: Flask, client: FlaskClient, admin_token: str) -> None:
    page = client.get("/admin/sign-in")
    response = client.post("/admin/sign-in", data={"token": admin_token, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302 and response.location == "/admin/"
    header = session_cookie(response)
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/admin" in header
    assert "Secure" not in header  # plain http here; see the https test
    value = header.split(";", 1)[0].split("=", 1)[1]
    payload = app.session_interface.get_signing_serializer(app).loads(value)  # type: ignore[attr-defined]
    assert payload["principal"] == {"kind": "admin", "environment": None, "actor": "admin:test-admin"}
    secret = admin_token.split("_", 2)[2]
    assert secret not in repr(payload) and secret not in header
    assert client.get(FLAGS).status_code == 200


def test_the_cookie_is_secure_over_https(app: Flask, admin_token: str) -> None:
    client = app.test_client()
    page = client.get("/admin/sign-in", base_url="https://flags.example")
    response = client.post("/admin/sign-in", base_url="https://flags.example",
                           data={"token": admin_token, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302
    assert "Secure" in session_cookie(response)


def test_a_wrong_token_or_an_sdk_key_does_not_sign_in(app: Flask, client: FlaskClient, sdk_key: str) -> None:
    token = csrf_from(client.get("/admin/sign-in").text)
    wrong = client.post("/admin/sign-in", data={"token": "fsa_0000_nope", "csrf_token": token})
    assert wrong.status_code == 401 and "This token is not valid" in wrong.text
    assert 'id="f-token-error"' in wrong.text and 'aria-invalid="true"' in wrong.text
    sdk = client.post("/admin/sign-in", data={"token": sdk_key, "csrf_token": token})
    assert sdk.status_code == 401 and "This is an SDK key" in sdk.text
    assert client.get(FLAGS).status_code == 302


def test_after_signing_in_people_land_where_they_were_going_but_never_off_the_pages(
        client: FlaskClient, admin_token: str) -> None:
    for target, expected in (("/admin/audit", "/admin/audit"), ("https://evil.example/x", "/admin/"),
                             ("//evil.example/admin", "/admin/"), ("/api/v1/envs", "/admin/")):
        token = csrf_from(client.get("/admin/sign-in").text)
        response = client.post("/admin/sign-in", data={"token": admin_token, "csrf_token": token, "next": target})
        assert response.location == expected, target


def test_signing_out_ends_the_session(client: FlaskClient, csrf: str) -> None:
    response = client.post("/admin/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 302 and response.location == "/admin/sign-in"
    assert client.get(FLAGS).status_code == 302


def test_revoking_the_token_ends_its_sessions(app: Flask, client: FlaskClient) -> None:
    record = create_token(store_of(app), "admin", "temp", None, "test")
    sign_in(client, record["token"])
    assert client.get(FLAGS).status_code == 200
    store_of(app).delete_token(record["id"], actor="test")
    assert client.get(FLAGS).status_code == 302


def test_a_session_expires(app: Flask, client: FlaskClient, csrf: str) -> None:
    app.config["ADMIN_SESSION_SECONDS"] = 0
    assert client.get(FLAGS).status_code == 302


# -- CSRF -----------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        app: Flask, client: FlaskClient, csrf: str) -> None:
    flag = create_flag(app, enabled=True)
    for data in ({"enabled": "false"}, {"enabled": "false", "csrf_token": "x" * 43},
                 {"enabled": "false", "csrf_token": ""}):
        response = client.post(f"{FLAGS}/new-checkout/enabled", data=data)
        assert response.status_code == 400
        assert "security token" in response.text
    assert store_of(app).get_flag("production", "new-checkout") == flag
    ok = client.post(f"{FLAGS}/new-checkout/enabled", data={"enabled": "false", "csrf_token": csrf})
    assert ok.status_code == 302 and store_of(app).get_flag("production", "new-checkout")["enabled"] is False


def test_a_refused_json_request_gets_a_json_error(client: FlaskClient, csrf: str) -> None:
    response = client.post(f"{FLAGS}/new", json={"key": "x"}, headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["status"] == 400


def test_the_csrf_token_may_come_in_a_header(app: Flask, client: FlaskClient, csrf: str) -> None:
    create_flag(app, enabled=True)
    response = client.post(f"{FLAGS}/new-checkout/enabled", data={"enabled": "false"},
                           headers={"X-CSRF-Token": csrf})
    assert response.status_code == 302


def test_signing_in_needs_the_csrf_token_too(client: FlaskClient, admin_token: str) -> None:
    client.get("/admin/sign-in")
    assert client.post("/admin/sign-in", data={"token": admin_token}).status_code == 400
    assert client.get(FLAGS).status_code == 302


# -- error pages and headers -------------------------------------------------------------------------


def test_unknown_pages_flags_and_environments_are_html_404s(client: FlaskClient, csrf: str) -> None:
    for path in ("/admin/nothing-here", f"{FLAGS}/missing", "/admin/envs/mars/flags",
                 "/admin/envs/production/segments/missing", f"{FLAGS}/missing/rollout"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html" and "Not found" in response.text
    api = client.get("/api/v1/nothing")
    assert api.status_code == 404 and api.mimetype == "application/json"


def test_pages_send_security_headers(client: FlaskClient, csrf: str) -> None:
    response = client.get(FLAGS)
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


# -- forms ------------------------------------------------------------------------------------------


def test_a_validation_error_is_shown_beside_its_field(app: Flask, client: FlaskClient, csrf: str) -> None:
    response = client.post(f"{FLAGS}/new", data={"key": "bad key!", "variants": "off\non", "csrf_token": csrf})
    assert response.status_code == 422
    error = re.search(r'<p class="field-error" id="f-key-error">(.*?)</p>', response.text, re.S)
    assert error and "must be 1-100 letters" in error.group(1)
    assert 'value="bad key!"' in response.text  # what was typed stays
    assert store_of(app).list_flags("production") == []


def test_a_stale_edit_is_refused_and_the_page_shows_the_new_state(
        app: Flask, client: FlaskClient, csrf: str) -> None:
    flag = create_flag(app, enabled=True, rollout=5)
    change_flag(store_of(app), "production", "new-checkout", {"rollout": 30}, actor="admin:grace")
    response = client.post(f"{FLAGS}/new-checkout/rollout",
                           data={"rollout": "40", "version": str(flag["version"]), "csrf_token": csrf})
    assert response.status_code == 412
    assert "Someone else changed this flag" in response.text and "version 2" in response.text
    assert 'id="f-rollout" name="rollout" inputmode="decimal" value="30"' in response.text
    assert store_of(app).get_flag("production", "new-checkout")["rollout"] == 30


def test_going_to_100_percent_asks_first_when_javascript_did_not(
        app: Flask, client: FlaskClient, csrf: str) -> None:
    flag = create_flag(app, enabled=True, rollout=25)
    data = {"rollout": "100", "version": str(flag["version"]), "csrf_token": csrf, "rollout_kind": "percentage"}
    step = client.post(f"{FLAGS}/new-checkout/rollout", data=data)
    assert step.status_code == 200 and "Set new-checkout to 100%?" in step.text
    assert 'name="confirmed" value="1"' in step.text
    assert store_of(app).get_flag("production", "new-checkout")["rollout"] == 25
    done = client.post(f"{FLAGS}/new-checkout/rollout", data={**data, "confirmed": "1"})
    assert done.status_code == 302
    assert store_of(app).get_flag("production", "new-checkout")["rollout"] == 100


def test_the_rules_editor_saves_through_the_api_rules(app: Flask, client: FlaskClient, csrf: str) -> None:
    flag = create_flag(app, enabled=True)
    store_of(app).create_segment("production", {"key": "internal", "included": ["u1"]}, actor="test")
    form = {
        "csrf_token": csrf, "version": str(flag["version"]),
        "rules[0].id": "staff", "rules[0].segments": "internal", "rules[0].serve": "on",
        "rules[1].id": "old", "rules[1].serve": _forms.SPLIT, "rules[1].rollout": "12.5",
        "rules[1].conditions[0].attribute": "age", "rules[1].conditions[0].op": "gte",
        "rules[1].conditions[0].values": "65",
        "rules[1].conditions[1].attribute": "email", "rules[1].conditions[1].op": "ends_with",
        "rules[1].conditions[1].values": "@a.com\n@b.com", "rules[1].conditions[1].ignore_case": "1",
    }
    assert client.post(f"{FLAGS}/new-checkout/rules", data=form).status_code == 302
    rules = store_of(app).get_flag("production", "new-checkout")["rules"]
    assert rules[0] == {"id": "staff", "segments": ["internal"], "conditions": [], "serve": "on"}
    assert rules[1]["rollout"] == 12.5
    assert rules[1]["conditions"][0]["values"] == [65]
    assert rules[1]["conditions"][1] == {"attribute": "email", "op": "ends_with", "values": ["@a.com", "@b.com"],
                                         "ignore_case": True, "negate": False}


def test_an_engine_error_names_the_condition_field(app: Flask, client: FlaskClient, csrf: str) -> None:
    flag = create_flag(app, enabled=True)
    form = {"csrf_token": csrf, "version": str(flag["version"]), "rules[0].id": "r", "rules[0].serve": "on",
            "rules[0].conditions[0].attribute": "email", "rules[0].conditions[0].op": "matches",
            "rules[0].conditions[0].values": "(unclosed"}
    response = client.post(f"{FLAGS}/new-checkout/rules", data=form)
    assert response.status_code == 422
    assert re.search(r'id="f-rules-0-conditions-0-values-error">.*not a valid regular expression', response.text)
    assert store_of(app).get_flag("production", "new-checkout")["rules"] == []


def test_deleting_a_segment_in_use_says_which_flag_uses_it(app: Flask, client: FlaskClient, csrf: str) -> None:
    segment = store_of(app).create_segment("production", {"key": "internal", "included": ["u1"]}, actor="test")
    create_flag(app, rules=[{"id": "staff", "segments": ["internal"], "serve": "on"}])
    response = client.post("/admin/envs/production/segments/internal/delete",
                           data={"csrf_token": csrf, "version": str(segment["version"]), "confirmed": "1"})
    assert response.status_code == 409
    assert "new-checkout" in response.text
    assert store_of(app).get_segment("production", "internal") is not None


# -- helpers ----------------------------------------------------------------------------------------


def test_list_values_that_are_not_text_survive_the_editor() -> None:
    values = [42, True, "42", "x"]
    assert _forms.needs_json(values)
    text = _forms.show_values(values, as_json=True)
    assert _forms.condition_values("in", text, as_json=True) == values
    assert _forms.condition_values("in", "42\nx", as_json=False) == ["42", "x"]
    assert _forms.condition_values("lt", "3\n2.5\nabc", as_json=False) == [3, 2.5, "abc"]


def test_the_audit_diff_names_fields_and_list_items() -> None:
    before = {"version": 1, "rollout": 5, "rules": [{"id": "a", "segments": ["x", "y"]}], "owner": None}
    after = {"version": 2, "rollout": 25, "rules": [{"id": "a", "segments": ["y", "z"]}], "owner": None,
             "tags": ["t"]}
    changes = {c.path: c for c in _diff.diff(before, after)}
    assert set(changes) == {"rollout", "rules[0].segments", "tags"}
    assert (changes["rollout"].before, changes["rollout"].after) == (5, 25)
    assert changes["rules[0].segments"].added_items == ("z",)
    assert changes["rules[0].segments"].removed_items == ("x",)
    assert changes["tags"].kind == "added"


# -- rollouts ---------------------------------------------------------------------------------------

ROLLOUT = f"{FLAGS}/search-v2/rollout"


def test_a_plan_is_checked_field_by_field_and_saved(app: Flask, client: FlaskClient, csrf: str) -> None:
    create_flag(app, "search-v2")
    bad = {"csrf_token": csrf, "stages[0].percentage": "50", "stages[1].percentage": "40",
           "guardrails[0].event": "checkout", "guardrails[0].kind": "conversion", "mode": "manual"}
    response = client.post(f"{ROLLOUT}/plan", data=bad)
    assert response.status_code == 422
    assert re.search(r'id="f-stages-1-percentage-error">.*greater than the previous', response.text, re.S)
    assert store_of(app).get_rollout("production", "search-v2") is None
    good = {**bad, "stages[1].percentage": "100", "stages[0].min_duration_seconds": "0",
            "stages[0].min_users_per_arm": "0"}
    assert client.post(f"{ROLLOUT}/plan", data=good).status_code == 302
    plan = store_of(app).get_rollout("production", "search-v2")["plan"]
    assert [s["percentage"] for s in plan["stages"]] == [50, 100] and plan["mode"] == "manual"
    assert plan["stages"][1]["min_duration_seconds"] == 600  # a blank box takes the default


def test_people_start_pause_resume_and_approve_a_rollout(app: Flask, client: FlaskClient, csrf: str) -> None:
    from flagserver.rollout.controller import Controller
    from tests.browser.seed import record_split

    store = store_of(app)
    create_flag(app, "search-v2")
    client.post(f"{ROLLOUT}/plan", data={
        "csrf_token": csrf, "stages[0].percentage": "50", "stages[0].min_duration_seconds": "0",
        "stages[0].min_users_per_arm": "0", "stages[0].margin": "0.3", "stages[1].percentage": "100",
        "guardrails[0].event": "checkout", "guardrails[0].kind": "conversion", "mode": "manual"})

    def act(action: str, **extra: str) -> str:
        response = client.post(f"{ROLLOUT}/{action}", data={"csrf_token": csrf, **extra})
        assert response.status_code == 302
        return client.get(ROLLOUT).text

    assert "running at 50%" in act("start")
    assert store.get_flag("production", "search-v2")["rollout"] == 50
    assert "Rollout of search-v2: paused" in act("pause")
    assert "Rollout of search-v2: running" in act("resume")
    page = act("approve")  # not waiting for approval yet: refused, with the reason
    assert "not waiting for approval" in page
    record_split(store, "production", "search-v2", control=1000, canary=1000, event="checkout",
                 control_rate=0.3, canary_rate=0.3)
    decision = Controller(store).run_once(app.config["CLOCK"]() + 60)[0][2]
    assert decision.action == "wait_for_approval", decision.reason
    assert "Approve promotion" in client.get(ROLLOUT).text
    page = act("approve")
    assert "Rollout of search-v2: completed" in page
    assert store.get_flag("production", "search-v2")["rollout"] == 100
    assert "promoted to 100%: approved by test-admin" in page


def test_rolling_back_asks_first_when_javascript_did_not(app: Flask, client: FlaskClient, csrf: str) -> None:
    create_flag(app, "search-v2")
    stages = {f"stages[{i}].percentage": str(p) for i, p in enumerate((5, 25, 50, 100))}
    saved = client.post(f"{ROLLOUT}/plan", data={"csrf_token": csrf, "guardrails[0].event": "checkout",
                                                 "guardrails[0].kind": "conversion", **stages})
    assert saved.status_code == 302
    assert client.post(f"{ROLLOUT}/start", data={"csrf_token": csrf}).status_code == 302
    step = client.post(f"{ROLLOUT}/rollback", data={"csrf_token": csrf})
    assert step.status_code == 200 and "The flag goes back to 0% now" in step.text
    assert store_of(app).get_flag("production", "search-v2")["rollout"] == 5
    done = client.post(f"{ROLLOUT}/rollback", data={"csrf_token": csrf, "confirmed": "1"})
    assert done.status_code == 302
    assert store_of(app).get_flag("production", "search-v2")["rollout"] == 0
    assert client.post(f"{ROLLOUT}/explode", data={"csrf_token": csrf}).status_code == 404
