"""Environments, tokens, the audit log, the evaluate endpoint, health and the OpenAPI document."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from flagsdk.engine import Snapshot

from tests.api_helpers import BACKENDS, assert_error, audit_entries, create_flag, create_segment, send

AUDIT_KEYS = {"id", "at", "actor", "action", "environment", "target_type", "target_key", "before", "after"}


# --- environments ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_environments_list_and_get(client, admin):
    listed = client.get("/api/v1/envs", headers=admin)
    one = client.get("/api/v1/envs/staging", headers=admin)

    assert listed.status_code == 200
    environments = listed.get_json()["environments"]
    assert [(e["key"], e["name"]) for e in environments] == [("production", "Production"), ("staging", "Staging")]
    assert one.status_code == 200
    assert one.get_json() == environments[1]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_create_environment(app, client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=50)

    response = client.post("/api/v1/envs", json={"key": "qa"}, headers=admin)

    assert response.status_code == 201
    created = response.get_json()
    assert (created["key"], created["name"]) == ("qa", "qa")  # the name defaults to the key
    assert client.get("/api/v1/envs/qa", headers=admin).get_json() == created
    config = client.get("/api/v1/envs/qa/config", headers=admin).get_json()
    assert config["environment"] == "qa"
    assert (config["flags"]["f"]["enabled"], config["flags"]["f"]["rollout"]) == (False, 0)
    entry = audit_entries(app, target_key="qa")[0]
    assert (entry["action"], entry["target_type"], entry["after"]["key"]) == ("create", "environment", "qa")


def test_create_environment_with_a_name(client, admin):
    response = client.post("/api/v1/envs", json={"key": "eu-prod", "name": "Production (EU)"}, headers=admin)

    assert response.status_code == 201
    assert response.get_json()["name"] == "Production (EU)"


# --- tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_an_admin_token_is_created_with_its_secret_shown_once(app, client, admin):
    response = client.post("/api/v1/tokens", json={"kind": "admin", "name": "ops"}, headers=admin)

    assert response.status_code == 201
    token = response.get_json()
    assert (token["kind"], token["name"], token["environment"]) == ("admin", "ops", None)
    assert re.fullmatch(rf"fsa_{token['id']}_[A-Za-z0-9_-]{{20,}}", token["token"])
    fresh = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/api/v1/envs", headers=fresh).status_code == 200
    secret = token["token"].split("_", 2)[2]
    listed = client.get("/api/v1/tokens", headers=admin)
    assert token["id"] in [t["id"] for t in listed.get_json()["tokens"]]
    assert all("token" not in t and "secret_hash" not in t for t in listed.get_json()["tokens"])
    assert secret not in listed.get_data(as_text=True)
    assert secret not in json.dumps(audit_entries(app))  # not in the audit log either


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_an_sdk_key_belongs_to_one_environment(client, admin):
    response = client.post("/api/v1/tokens", json={"kind": "sdk", "name": "web", "environment": "staging"},
                           headers=admin)

    assert response.status_code == 201
    key = response.get_json()
    assert (key["kind"], key["environment"]) == ("sdk", "staging")
    assert key["token"].startswith(f"fss_{key['id']}_")
    config = client.get("/api/v1/sdk/config", headers={"Authorization": f"Bearer {key['token']}"})
    assert config.status_code == 200
    assert config.get_json()["environment"] == "staging"


def test_each_token_has_its_own_secret(client, admin):
    tokens = [client.post("/api/v1/tokens", json={"kind": "admin", "name": f"t{i}"}, headers=admin).get_json()
              for i in range(3)]

    assert len({t["token"] for t in tokens}) == 3
    assert len({t["id"] for t in tokens}) == 3


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_deleting_a_token_revokes_it(app, client, admin):
    token = client.post("/api/v1/tokens", json={"kind": "admin", "name": "ops"}, headers=admin).get_json()
    theirs = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/api/v1/envs", headers=theirs).status_code == 200

    response = client.delete(f"/api/v1/tokens/{token['id']}", headers=admin)

    assert response.status_code == 204
    assert token["id"] not in [t["id"] for t in client.get("/api/v1/tokens", headers=admin).get_json()["tokens"]]
    assert_error(client.get("/api/v1/envs", headers=theirs), 401)
    entry = audit_entries(app, target_key=token["id"])[0]
    assert (entry["action"], entry["target_type"]) == ("delete", "token")


# --- the audit log -----------------------------------------------------------------------------

@pytest.fixture
def history(client, admin):
    """Five audited writes: flag f (create, update) in production, segment s in staging, flag g."""
    create_flag(client, admin, key="f")
    client.patch("/api/v1/envs/production/flags/f", json={"rollout": 5}, headers=admin)
    create_segment(client, admin, env="staging", key="s", included=["u1"])
    client.patch("/api/v1/envs/staging/segments/s", json={"included": ["u2"]}, headers=admin)
    create_flag(client, admin, key="g")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_audit_is_newest_first_with_who_what_and_when(client, admin, history):
    response = client.get("/api/v1/audit", headers=admin)

    assert response.status_code == 200
    entries = response.get_json()["entries"]
    assert all(set(e) == AUDIT_KEYS for e in entries)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    assert [(e["target_key"], e["action"]) for e in entries[:5]] == [
        ("g", "create"), ("s", "update"), ("s", "create"), ("f", "update"), ("f", "create")]
    assert {e["actor"] for e in entries[:5]} == {"admin:test-admin"}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_audit_filters_by_environment_and_key(client, admin, history):
    def entries(query: str) -> list[tuple[str, str]]:
        found = client.get(f"/api/v1/audit?{query}", headers=admin).get_json()["entries"]
        return [(e["target_key"], e["action"]) for e in found]

    assert entries("environment=staging") == [("s", "update"), ("s", "create"), ("staging", "create")]
    assert entries("key=f") == [("f", "update"), ("f", "create")]
    assert entries("environment=staging&key=f") == []
    assert entries("key=nothing") == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_audit_pages_with_limit_and_before(client, admin, history):
    everything = client.get("/api/v1/audit?limit=1000", headers=admin).get_json()["entries"]

    pages, before = [], ""
    while True:
        page = client.get(f"/api/v1/audit?limit=2{before}", headers=admin).get_json()["entries"]
        if not page:
            break
        assert len(page) <= 2
        pages.extend(page)
        before = f"&before={page[-1]['id']}"

    assert [e["id"] for e in pages] == [e["id"] for e in everything]


# --- the evaluate endpoint ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_evaluate_gives_what_the_engine_gives_on_the_config_document(client, admin):
    create_segment(client, admin, key="internal", conditions=[
        {"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True}])
    create_segment(client, admin, key="random-10", percentage=10)
    create_flag(client, admin, key="new-checkout", enabled=True, rollout=25, rules=[
        {"id": "staff", "segments": ["internal"], "serve": "on"},
        {"id": "sample", "segments": ["random-10"], "rollout": 50}])
    create_flag(client, admin, key="layout", enabled=True, variants=["control", "blue", "green"],
                rollout={"control": 5000, "blue": 2500, "green": 2500})
    document = client.get("/api/v1/envs/production/config", headers=admin).get_json()
    engine = Snapshot.from_dict(document)
    users = [{"key": f"user-{i}", "email": "x@company.com" if i % 7 == 0 else f"u{i}@example.com"}
             for i in range(60)] + [{"email": "nokey@example.com"}, {"key": "with-plan", "plan": ["a", "b"]}]

    reasons = set()
    for flag in ("new-checkout", "layout", "missing"):
        for user in users:
            response = send(client, "post", "/api/v1/envs/production/evaluate",
                            {"flag": flag, "user": user, "default": "fallback"}, admin)
            assert response.status_code == 200
            assert response.get_json() == dataclasses.asdict(engine.evaluate(flag, user, "fallback")), (flag, user)
            reasons.add(response.get_json()["reason"])
    assert {"TARGETING_MATCH", "SPLIT", "ERROR"} <= reasons


def test_evaluate_of_an_unknown_flag_gives_the_default_and_flag_not_found(client, admin):
    response = client.post("/api/v1/envs/production/evaluate",
                           json={"flag": "nope", "user": {"key": "u"}, "default": "off"}, headers=admin)

    assert response.status_code == 200
    result = response.get_json()
    assert (result["variant"], result["reason"], result["error_code"]) == ("off", "ERROR", "FLAG_NOT_FOUND")


def test_evaluate_uses_the_named_environment(client, admin):
    create_flag(client, admin, key="f", enabled=True, rollout=100)

    def variant(env: str) -> str:
        return client.post(f"/api/v1/envs/{env}/evaluate", json={"flag": "f", "user": {"key": "u"}},
                           headers=admin).get_json()["variant"]

    assert (variant("production"), variant("staging")) == ("on", "off")


# --- health ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_healthz_and_readyz_answer_without_a_token(client):
    healthz = client.get("/healthz")
    readyz = client.get("/readyz")

    assert (healthz.status_code, healthz.get_json()["status"]) == (200, "ok")
    assert (readyz.status_code, readyz.get_json()["status"]) == (200, "ready")


def test_readyz_is_503_when_storage_does_not_answer_while_healthz_stays_200(app, client):
    app.extensions["flagserver.store"].close()  # every operation now raises StoreUnavailable

    readyz = client.get("/readyz")

    assert readyz.status_code == 503
    assert readyz.get_json()["status"] == "unavailable"
    assert client.get("/healthz").status_code == 200


# --- the OpenAPI document ----------------------------------------------------------------------

def _documented_rules(app) -> dict[str, set[str]]:
    """The app's URL rules under /api/v1 and the health checks, as OpenAPI paths -> methods."""
    rules: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/v1/") or rule.rule in ("/healthz", "/readyz")):
            continue
        path = re.sub(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", rule.rule)
        rules.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    return rules


@pytest.fixture
def openapi(client):
    response = client.get("/api/v1/openapi.json")  # no token: the description of the API is public
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_openapi_document_is_a_valid_openapi_3_document(openapi):
    from openapi_spec_validator import validate

    validate(openapi)  # raises with the first structural error
    assert openapi["openapi"].startswith("3.")
    assert openapi["info"]["title"] and openapi["info"]["version"]


def test_openapi_describes_every_url_rule_with_its_methods(app, openapi):
    rules = _documented_rules(app)
    assert len(rules) >= 15  # the walk found the API

    missing = {f"{method.upper()} {path}" for path, methods in rules.items() for method in methods
               if method not in openapi["paths"].get(path, {})}
    assert missing == set()
    invented = {f"{method.upper()} {path}" for path, item in openapi["paths"].items() for method in item
                if method in {"get", "put", "post", "patch", "delete"} and method not in rules.get(path, set())}
    assert invented == set()


def test_openapi_path_parameters_and_security(openapi):
    for path, item in openapi["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in [*item.get("parameters", []), *operation.get("parameters", [])]
                        if p["in"] == "path"}
            assert declared == names, (method, path)
            public = path in ("/healthz", "/readyz", "/api/v1/openapi.json")
            if not public:
                assert operation.get("security") or openapi.get("security"), (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_openapi_request_bodies_name_the_schemas_the_server_validates_with(openapi):
    schemas = openapi["components"]["schemas"]
    flag_post = openapi["paths"]["/api/v1/envs/{env}/flags"]["post"]
    patch = openapi["paths"]["/api/v1/envs/{env}/flags/{key}"]["patch"]

    body_ref = flag_post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    flag_schema = schemas[body_ref.rsplit("/", 1)[1]]
    assert {"key", "enabled", "rollout", "rules", "variants", "salt"} <= set(flag_schema["properties"])
    assert "key" in flag_schema.get("required", [])
    patch_ref = patch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "key" not in schemas[patch_ref.rsplit("/", 1)[1]]["properties"]
    assert "412" in patch["responses"] and "422" in patch["responses"]
