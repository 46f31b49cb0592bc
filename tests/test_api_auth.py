"""Who may call what: every endpoint against every kind of caller.

Admin tokens can do everything; SDK keys only read their own environment's config
(and post its events); a missing, malformed, wrong or revoked token is a 401, an
SDK key on the admin API a 403. A refused request changes nothing.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from flagserver.auth import create_token
from tests.api_helpers import BACKENDS, assert_error, create_flag, create_segment, storage_state
from tests.conftest import dispose_app, make_app

PUBLIC = "public"  # answers everyone
ADMIN = "admin"  # admin tokens only
SDK = "sdk"  # SDK keys (their own environment) and admin tokens (naming one)


def _events() -> dict[str, Any]:
    return {"batch_id": "batch-0001", "events": [
        {"kind": "exposure", "flag": "f", "variant": "on", "rule_id": None, "reason": "SPLIT", "randomized": True,
         "flag_version": 1, "user": "user-1", "at": time.time()},
        {"kind": "track", "event": "checkout", "user": "user-1", "value": 10.0, "at": time.time()}]}


# (method, URL rule, URL to call, body, who may call, the status an allowed caller gets)
ENDPOINTS: list[tuple[str, str, str, Any, str, int]] = [
    ("GET", "/healthz", "/healthz", None, PUBLIC, 200),
    ("GET", "/readyz", "/readyz", None, PUBLIC, 200),
    ("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None, PUBLIC, 200),
    ("GET", "/api/v1/envs", "/api/v1/envs", None, ADMIN, 200),
    ("POST", "/api/v1/envs", "/api/v1/envs", {"key": "qa"}, ADMIN, 201),
    ("GET", "/api/v1/envs/<env>", "/api/v1/envs/production", None, ADMIN, 200),
    ("GET", "/api/v1/envs/<env>/config", "/api/v1/envs/production/config", None, ADMIN, 200),
    ("POST", "/api/v1/envs/<env>/evaluate", "/api/v1/envs/production/evaluate",
     {"flag": "f", "user": {"key": "u"}}, ADMIN, 200),
    ("GET", "/api/v1/envs/<env>/flags", "/api/v1/envs/production/flags", None, ADMIN, 200),
    ("POST", "/api/v1/envs/<env>/flags", "/api/v1/envs/production/flags", {"key": "g"}, ADMIN, 201),
    ("GET", "/api/v1/envs/<env>/flags/<key>", "/api/v1/envs/production/flags/f", None, ADMIN, 200),
    ("PUT", "/api/v1/envs/<env>/flags/<key>", "/api/v1/envs/production/flags/f", {"enabled": True}, ADMIN, 200),
    ("PATCH", "/api/v1/envs/<env>/flags/<key>", "/api/v1/envs/production/flags/f", {"rollout": 5}, ADMIN, 200),
    ("DELETE", "/api/v1/envs/<env>/flags/<key>", "/api/v1/envs/production/flags/f", None, ADMIN, 204),
    ("GET", "/api/v1/envs/<env>/flags/<key>/stats", "/api/v1/envs/production/flags/f/stats", None, ADMIN, 200),
    ("GET", "/api/v1/envs/<env>/rollouts", "/api/v1/envs/production/rollouts", None, ADMIN, 200),
    ("GET", "/api/v1/envs/<env>/flags/<key>/rollout-plan", "/api/v1/envs/production/flags/f/rollout-plan", None,
     ADMIN, 200),
    ("PUT", "/api/v1/envs/<env>/flags/<key>/rollout-plan", "/api/v1/envs/production/flags/f/rollout-plan",
     {"guardrails": [{"event": "checkout", "kind": "conversion"}, {"event": "errors", "kind": "error"}]},
     ADMIN, 200),
    ("POST", "/api/v1/envs/<env>/flags/<key>/rollout-plan/<action>",
     "/api/v1/envs/production/flags/f/rollout-plan/start", None, ADMIN, 200),
    ("GET", "/api/v1/envs/<env>/segments", "/api/v1/envs/production/segments", None, ADMIN, 200),
    ("POST", "/api/v1/envs/<env>/segments", "/api/v1/envs/production/segments", {"key": "seg2"}, ADMIN, 201),
    ("GET", "/api/v1/envs/<env>/segments/<key>", "/api/v1/envs/production/segments/seg", None, ADMIN, 200),
    ("PUT", "/api/v1/envs/<env>/segments/<key>", "/api/v1/envs/production/segments/seg", {"included": ["u"]},
     ADMIN, 200),
    ("PATCH", "/api/v1/envs/<env>/segments/<key>", "/api/v1/envs/production/segments/seg", {"percentage": 5},
     ADMIN, 200),
    ("DELETE", "/api/v1/envs/<env>/segments/<key>", "/api/v1/envs/production/segments/seg", None, ADMIN, 204),
    ("GET", "/api/v1/tokens", "/api/v1/tokens", None, ADMIN, 200),
    ("POST", "/api/v1/tokens", "/api/v1/tokens", {"kind": "admin", "name": "ops"}, ADMIN, 201),
    ("DELETE", "/api/v1/tokens/<token_id>", "/api/v1/tokens/{victim}", None, ADMIN, 204),
    ("GET", "/api/v1/audit", "/api/v1/audit", None, ADMIN, 200),
    ("GET", "/api/v1/sdk/config", "/api/v1/sdk/config?environment=production", None, SDK, 200),
    ("POST", "/api/v1/sdk/events", "/api/v1/sdk/events?environment=production", _events, SDK, 202),
]

CALLERS = ["no-token", "malformed-header", "wrong-secret", "revoked", "admin", "sdk-production", "sdk-staging"]


def build_world(app) -> dict[str, Any]:
    """Flag f with a draft rollout plan, segment seg (unused), a token to delete, and the
    headers of each kind of caller."""
    store = app.extensions["flagserver.store"]
    client = app.test_client()
    admin_token = create_token(store, "admin", "test-admin", None, "test")["token"]
    admin = {"Authorization": f"Bearer {admin_token}"}
    create_segment(client, admin, key="seg", included=["u1"])
    create_flag(client, admin, key="f", enabled=True, rollout=50)
    plan = client.put("/api/v1/envs/production/flags/f/rollout-plan", headers=admin,
                      json={"guardrails": [{"event": "checkout", "kind": "conversion"}]})
    assert plan.status_code == 201, plan.get_data(as_text=True)
    victim = create_token(store, "admin", "victim", None, "test")
    revoked = client.post("/api/v1/tokens", json={"kind": "admin", "name": "leaver"}, headers=admin).get_json()
    revoked_headers = {"Authorization": f"Bearer {revoked['token']}"}
    assert client.get("/api/v1/envs", headers=revoked_headers).status_code == 200  # verified, so remembered
    assert client.delete(f"/api/v1/tokens/{revoked['id']}", headers=admin).status_code == 204
    token_id = admin_token.split("_", 2)[1]
    sdk = {env: create_token(store, "sdk", f"web-{env}", env, "test")["token"] for env in ("production", "staging")}
    callers = {
        "no-token": {},
        "malformed-header": {"Authorization": admin_token},  # a real secret without the Bearer scheme
        "wrong-secret": {"Authorization": f"Bearer fsa_{token_id}_{'x' * 43}"},
        "revoked": revoked_headers,
        "admin": admin,
        "sdk-production": {"Authorization": f"Bearer {sdk['production']}"},
        "sdk-staging": {"Authorization": f"Bearer {sdk['staging']}"},
    }
    return {"victim": victim["id"], "callers": callers}


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    """One app for the cells that must change nothing (refusals and reads); each of them
    checks that storage is unchanged, so they cannot disturb each other unnoticed."""
    app = make_app(tmp_path_factory.mktemp("auth"))
    yield app, build_world(app)
    dispose_app(app)


def expected_status(who: str, caller: str, allowed: int) -> int:
    if who == PUBLIC:
        return allowed
    if caller in ("no-token", "malformed-header", "wrong-secret", "revoked"):
        return 401
    if caller == "admin":
        return allowed
    return allowed if who == SDK else 403


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "rule", "url", "body", "who", "allowed"), ENDPOINTS,
                         ids=[f"{m} {r}" for m, r, *_ in ENDPOINTS])
def test_auth_matrix(tmp_path, shared_world, method, rule, url, body, who, allowed, caller):
    expected = expected_status(who, caller, allowed)
    if method != "GET" and expected < 400:  # an allowed write: on a fresh app of its own
        app = make_app(tmp_path)
        world = build_world(app)
    else:
        app, world = shared_world
    headers = world["callers"][caller]
    before = storage_state(app)

    response = app.test_client().open(url.format(victim=world["victim"]), method=method, headers=headers,
                                      json=body() if callable(body) else body)

    if expected >= 400:
        error = assert_error(response, expected)
        assert error["code"] == ("unauthorized" if expected == 401 else "forbidden")
        if expected == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert storage_state(app) == before
    else:
        assert response.status_code == expected, response.get_data(as_text=True)[:300]
    if app is not shared_world[0]:
        dispose_app(app)


def test_the_matrix_covers_every_endpoint(app):
    served = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/v1/") or rule.rule in ("/healthz", "/readyz")
              for method in rule.methods - {"HEAD", "OPTIONS"}}

    assert {(method, rule) for method, rule, *_ in ENDPOINTS} == served


@pytest.mark.parametrize("header", [
    "Bearer",
    "Bearer ",
    "Bearer   ",
    "Basic YWRtaW46YWRtaW4=",
    "Token {token}",
    "{token}",
    "Bearer {token} extra",
    "Bearer fsa_{id}",
    "Bearer fsa__{secret}",
    "Bearer fss_{id}_{secret}",  # the admin token's id and secret under the SDK key prefix
    "Bearer xyz_{id}_{secret}",
    "Bearer fsa_{id}_{secret}x",
    "Bearer fsa_{id}_",
    "Bearer fsa_0000000000000000_{secret}",
])
def test_malformed_and_wrong_tokens_are_401(client, admin_token, header):
    _, token_id, secret = admin_token.split("_", 2)

    response = client.get("/api/v1/envs", headers={"Authorization": header.format(
        token=admin_token, id=token_id, secret=secret)})

    assert_error(response, 401)


def test_the_scheme_is_case_insensitive(client, admin_token):
    assert client.get("/api/v1/envs", headers={"Authorization": f"bearer {admin_token}"}).status_code == 200


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_sdk_keys_see_only_their_own_environment(app, client, admin):
    store = app.extensions["flagserver.store"]
    create_flag(client, admin, key="f", enabled=True, rollout=50)
    create_segment(client, admin, env="staging", key="staging-only", included=["u1"])
    keys = {env: create_token(store, "sdk", env, env, "test")["token"] for env in ("production", "staging")}

    def config(env: str, query: str = "") -> dict[str, Any]:
        response = client.get(f"/api/v1/sdk/config{query}", headers={"Authorization": f"Bearer {keys[env]}"})
        assert response.status_code == 200
        return response.get_json()

    production, staging = config("production"), config("staging")
    assert (production["environment"], staging["environment"]) == ("production", "staging")
    assert production["flags"]["f"]["enabled"] is True and staging["flags"]["f"]["enabled"] is False
    assert "staging-only" in staging["segments"] and "staging-only" not in production["segments"]
    assert config("staging", "?environment=production") == staging  # the key decides, not the query
    for url in ("/api/v1/envs/staging/config", "/api/v1/envs/production/config",
                "/api/v1/envs/staging/flags/f"):
        assert_error(client.get(url, headers={"Authorization": f"Bearer {keys['staging']}"}), 403)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", ["admin", "sdk"])
def test_a_revoked_token_is_refused_at_once_in_the_same_process(app, client, admin, kind):
    body = {"kind": kind, "name": "leaver", **({"environment": "production"} if kind == "sdk" else {})}
    token = client.post("/api/v1/tokens", json=body, headers=admin).get_json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    url = "/api/v1/sdk/config" if kind == "sdk" else "/api/v1/envs"
    for _ in range(3):  # verified and remembered (TOKEN_CACHE_SECONDS is 5 s by default)
        assert client.get(url, headers=headers).status_code == 200

    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=admin).status_code == 204

    assert_error(client.get(url, headers=headers), 401)


def test_a_token_revoking_itself_is_refused_from_then_on(client, admin):
    token = client.post("/api/v1/tokens", json={"kind": "admin", "name": "self"}, headers=admin).get_json()
    headers = {"Authorization": f"Bearer {token['token']}"}

    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=headers).status_code == 204
    assert_error(client.get("/api/v1/envs", headers=headers), 401)


# --- the bootstrap admin token (config ADMIN_TOKEN, FLAGSERVER_ADMIN_TOKEN) ------------------------

def _works_as_admin(app, token: str) -> None:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/envs", headers=headers).status_code == 200
    assert client.post("/api/v1/envs/production/flags", json={"key": "boot"}, headers=headers).status_code == 201
    created = client.post("/api/v1/tokens", json={"kind": "sdk", "name": "web", "environment": "production"},
                          headers=headers)
    assert created.status_code == 201
    entry = client.get("/api/v1/audit?key=boot", headers=headers).get_json()["entries"][0]
    assert entry["actor"] == "admin:bootstrap"
    assert_error(client.get("/api/v1/envs", headers={"Authorization": f"Bearer {token}x"}), 401)
    assert_error(client.get("/api/v1/envs", headers={"Authorization": f"Bearer {token[:-1]}"}), 401)


def test_config_admin_token_works_as_an_admin(tmp_path):
    app = make_app(tmp_path, ADMIN_TOKEN="bootstrap-secret-3f9a1c")
    try:
        _works_as_admin(app, "bootstrap-secret-3f9a1c")
    finally:
        dispose_app(app)


@pytest.mark.parametrize("token", [
    "bootstrap-secret-3f9a1c",
    "8731049277310561",  # all digits, as `openssl rand` or a password manager may give
])
def test_flagserver_admin_token_variable_works_as_an_admin(tmp_path, monkeypatch, token):
    monkeypatch.setenv("FLAGSERVER_ADMIN_TOKEN", token)
    app = make_app(tmp_path)
    try:
        _works_as_admin(app, token)
    finally:
        dispose_app(app)


def test_without_a_bootstrap_token_an_empty_bearer_is_not_an_admin(client):
    assert_error(client.get("/api/v1/envs", headers={"Authorization": "Bearer  "}), 401)


def test_401_and_403_bodies_say_what_is_needed(client, sdk_key):
    unauthorized = assert_error(client.get("/api/v1/envs"), 401)
    forbidden = assert_error(client.get("/api/v1/envs", headers={"Authorization": f"Bearer {sdk_key}"}), 403)

    assert re.search(r"Bearer", unauthorized["message"])
    assert "admin" in forbidden["message"]
