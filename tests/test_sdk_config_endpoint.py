"""The SDK's config endpoint: `GET /api/v1/sdk/config` with a strong ETag, 304s, one
build per change; and the evaluation cases of tests/cases run through the server."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flagsdk.engine import Condition, Flag, Segment, Snapshot, check_condition

from flagserver import create_app
from flagserver.auth import create_token
from flagserver.schemas import KEY_PATTERN
from tests.api_helpers import BACKENDS, create_flag, create_segment, send
from tests.conftest import dispose_app, make_app
from tests.evaluation_cases import case_ids, load_cases

CONFIG = "/api/v1/sdk/config"
STRONG_ETAG = re.compile(r'^"[^"]+"$')


@pytest.fixture
def sdk(sdk_key):
    return {"Authorization": f"Bearer {sdk_key}"}


def fetch(client, headers, etag: str | None = None):
    return client.get(CONFIG, headers={**headers, **({"If-None-Match": etag} if etag else {})})


# --- ETag and 304 --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_etag_is_strong_and_stable_until_a_change(client, admin, sdk):
    create_flag(client, admin, key="f", enabled=True, rollout=10)

    first, second = fetch(client, sdk), fetch(client, sdk)

    assert first.status_code == second.status_code == 200
    assert STRONG_ETAG.match(first.headers["ETag"]), first.headers["ETag"]  # no W/ prefix
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.get_data() == first.get_data()
    assert first.mimetype == "application/json"
    assert "no-cache" in first.headers["Cache-Control"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_if_none_match_with_the_current_etag_gives_304_without_a_body(client, admin, sdk):
    create_flag(client, admin, key="f")
    etag = fetch(client, sdk).headers["ETag"]

    not_modified = fetch(client, sdk, etag)
    in_a_list = fetch(client, sdk, f'"elsewhere-1", {etag}')
    other = fetch(client, sdk, '"production-0"')

    assert not_modified.status_code == 304
    assert not_modified.get_data() == b""
    assert not_modified.headers["ETag"] == etag
    assert in_a_list.status_code == 304
    assert other.status_code == 200 and other.get_json()["flags"].keys() == {"f"}


def test_if_none_match_compares_weakly_as_rfc_9110_says(client, admin, sdk):
    """A proxy that compresses (nginx's gzip) turns the strong tag into `W/"..."`, and the
    SDK sends back what it got; If-None-Match must still match it (weak comparison),
    or every poll downloads the whole document again."""
    create_flag(client, admin, key="f")
    etag = fetch(client, sdk).headers["ETag"]

    response = fetch(client, sdk, f"W/{etag}")

    assert response.status_code == 304


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("change", [
    "create flag", "patch flag", "kill flag", "delete flag", "create flag elsewhere",
    "create segment", "patch segment", "delete segment"])
def test_a_change_in_the_environment_changes_the_etag(client, admin, sdk, change):
    create_flag(client, admin, key="f", enabled=True, rollout=10)
    create_segment(client, admin, key="s", included=["u1"])
    before = fetch(client, sdk)

    env, method, path, body = {
        "create flag": ("production", "post", "flags", {"key": "g"}),
        "patch flag": ("production", "patch", "flags/f", {"rollout": 20}),
        "kill flag": ("production", "patch", "flags/f", {"enabled": False}),
        "delete flag": ("production", "delete", "flags/f", None),
        "create flag elsewhere": ("staging", "post", "flags", {"key": "g"}),  # it appears here too, disabled
        "create segment": ("production", "post", "segments", {"key": "t", "percentage": 5}),
        "patch segment": ("production", "patch", "segments/s", {"included": ["u2"]}),
        "delete segment": ("production", "delete", "segments/s", None),
    }[change]
    assert client.open(f"/api/v1/envs/{env}/{path}", method=method.upper(), json=body,
                       headers=admin).status_code < 300
    after = fetch(client, sdk, before.headers["ETag"])

    assert after.status_code == 200
    assert after.headers["ETag"] != before.headers["ETag"]
    assert STRONG_ETAG.match(after.headers["ETag"])
    assert after.get_json() != before.get_json()
    assert after.get_json()["version"] > before.get_json()["version"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("change", ["patch flag rollout", "kill flag", "create segment", "patch segment",
                                    "delete segment"])
def test_a_change_in_another_environment_keeps_the_etag(client, admin, sdk, change):
    create_flag(client, admin, key="f", enabled=True, rollout=10)
    create_segment(client, admin, env="staging", key="s", included=["u1"])
    before = fetch(client, sdk)

    method, path, body = {
        "patch flag rollout": ("patch", "flags/f", {"rollout": 50}),
        "kill flag": ("patch", "flags/f", {"enabled": True}),
        "create segment": ("post", "segments", {"key": "t", "percentage": 5}),
        "patch segment": ("patch", "segments/s", {"included": ["u2"]}),
        "delete segment": ("delete", "segments/s", None),
    }[change]
    assert client.open(f"/api/v1/envs/staging/{path}", method=method.upper(), json=body,
                       headers=admin).status_code < 300
    after = fetch(client, sdk, before.headers["ETag"])

    assert after.status_code == 304
    assert after.headers["ETag"] == before.headers["ETag"]


def test_each_environment_has_its_own_etag(app, client, admin, sdk):
    staging_key = create_token(app.extensions["flagserver.store"], "sdk", "web", "staging", "test")["token"]
    create_flag(client, admin, key="f")

    production = fetch(client, sdk)
    staging = fetch(client, {"Authorization": f"Bearer {staging_key}"})

    assert production.headers["ETag"] != staging.headers["ETag"]
    assert fetch(client, sdk, staging.headers["ETag"]).status_code == 200


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_two_server_processes_on_one_storage_give_the_same_etag(app, client, admin, sdk):
    """Behind a load balancer an SDK's If-None-Match reaches any worker: all must agree."""
    create_flag(client, admin, key="f", enabled=True)
    other = create_app({"TESTING": True, "DATABASE_URL": app.config["DATABASE_URL"],
                        "REDIS_PREFIX": app.config["REDIS_PREFIX"], "SECRET_KEY": "test"})
    try:
        mine = fetch(client, sdk)
        theirs = fetch(other.test_client(), sdk)
        assert theirs.headers["ETag"] == mine.headers["ETag"]
        assert theirs.get_data() == mine.get_data()
        assert fetch(other.test_client(), sdk, mine.headers["ETag"]).status_code == 304
    finally:
        other.extensions["flagserver.store"].close()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_etag_and_304_over_real_http(live_server, admin, sdk):
    with requests.Session() as http:
        assert http.post(f"{live_server.url}/api/v1/envs/production/flags", json={"key": "f", "enabled": True},
                         headers=admin, timeout=10).status_code == 201
        first = http.get(f"{live_server.url}{CONFIG}", headers=sdk, timeout=10)
        again = http.get(f"{live_server.url}{CONFIG}", headers={**sdk, "If-None-Match": first.headers["ETag"]},
                         timeout=10)
        http.patch(f"{live_server.url}/api/v1/envs/production/flags/f", json={"rollout": 30}, headers=admin,
                   timeout=10).raise_for_status()
        changed = http.get(f"{live_server.url}{CONFIG}", headers={**sdk, "If-None-Match": first.headers["ETag"]},
                           timeout=10)

    assert first.status_code == 200 and STRONG_ETAG.match(first.headers["ETag"])
    assert (again.status_code, again.content) == (304, b"")
    assert changed.status_code == 200
    assert changed.json()["flags"]["f"]["rollout"] == 30


# --- one build per change, served from memory ------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_document_is_built_once_per_change(app, client, admin, sdk, monkeypatch):
    store = app.extensions["flagserver.store"]
    builds: list[str] = []
    build = store.config_document
    monkeypatch.setattr(store, "config_document", lambda env: builds.append(env) or build(env))
    create_flag(client, admin, key="f", enabled=True)

    bodies = {fetch(client, sdk).get_data() for _ in range(20)}
    client.get("/api/v1/envs/production/config", headers=admin)  # the admin view shares the cache
    assert builds == ["production"]
    client.patch("/api/v1/envs/production/flags/f", json={"rollout": 40}, headers=admin)
    bodies |= {fetch(client, sdk).get_data() for _ in range(20)}

    assert builds == ["production", "production"]
    assert len(bodies) == 2


# --- the body is what SDKs can use -----------------------------------------------------------------

@pytest.fixture
def rich(client, admin):
    """Segments and flags using every part of the data model."""
    create_segment(client, admin, key="internal", conditions=[
        {"attribute": "email", "op": "ends_with", "values": ["@company.com"], "ignore_case": True}])
    create_segment(client, admin, key="beta-testers", included=["user-1", "user-2"], excluded=["user-3"])
    create_segment(client, admin, key="random-10", percentage=10)
    create_segment(client, admin, key="accounts", percentage=33.33, bucket_by="account",
                   conditions=[{"attribute": "app_version", "op": "semver_gte", "values": ["2.1.0"]}])
    create_flag(client, admin, key="new-checkout", enabled=True, rollout=25, description="one-page checkout",
                tags=["checkout"], rules=[
                    {"id": "staff", "segments": ["internal", "beta-testers"], "serve": "on"},
                    {"id": "sample", "segments": ["random-10"], "rollout": 50},
                    {"id": "accounts", "segments": ["accounts"],
                     "conditions": [{"attribute": "country", "op": "not_in", "values": ["NL"]}], "serve": "on"}])
    create_flag(client, admin, key="layout", enabled=True, variants=["control", "blue", "green"],
                rollout={"control": 5000, "blue": 2500, "green": 2500}, salt="new-checkout", bucket_by="device")
    create_flag(client, admin, key="killed", enabled=False, rollout=100)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_body_parses_into_an_sdk_snapshot_with_nothing_invalid(client, admin, sdk, rich):
    body = fetch(client, sdk).get_data()

    snapshot = Snapshot.from_dict(json.loads(body))

    config = snapshot.config
    assert (config.environment, dict(config.invalid_flags), dict(config.invalid_segments)) == ("production", {}, {})
    assert set(config.flags) == {"new-checkout", "layout", "killed"}
    assert set(config.segments) == {"internal", "beta-testers", "random-10", "accounts"}
    assert json.loads(body) == client.get("/api/v1/envs/production/config", headers=admin).get_json()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_body_keeps_the_declared_order_of_weights(client, admin, sdk, rich):
    document = json.loads(fetch(client, sdk).get_data())  # json keeps the order of the text

    assert list(document["flags"]["layout"]["rollout"]) == ["control", "blue", "green"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_an_sdk_on_the_body_evaluates_as_the_server_does(client, admin, sdk, rich):
    snapshot = Snapshot.from_dict(json.loads(fetch(client, sdk).get_data()))
    users = [{"key": f"user-{i}", "email": f"u{i}@{'company.com' if i % 9 == 0 else 'example.com'}",
              "account": f"acct-{i % 13}", "device": f"dev-{i}", "app_version": f"2.{i % 4}.0", "country": "DE"}
             for i in range(120)]

    mismatches = []
    for flag in ("new-checkout", "layout", "killed"):
        for user in users:
            served = send(client, "post", "/api/v1/envs/production/evaluate", {"flag": flag, "user": user},
                          admin).get_json()
            if served != dataclasses.asdict(snapshot.evaluate(flag, user)):
                mismatches.append((flag, user["key"], served["variant"], snapshot.evaluate(flag, user).variant))

    assert mismatches == []


# --- the evaluation cases of tests/cases, through the server's evaluate endpoint ---------------------

CASES = load_cases()
CASE_FILES = sorted({file_name for file_name, _, _ in CASES})
COMPARED = ("variant", "reason", "rule_id", "error_code", "enabled", "randomized")


def _key_ok(key: Any) -> bool:
    return isinstance(key, str) and re.match(KEY_PATTERN, key) is not None


def _conditions_ok(conditions: Any) -> bool:
    if not isinstance(conditions, list):
        return False
    try:
        for raw in conditions:
            check_condition(Condition.from_dict(raw))
    except Exception:  # ModelError, ConditionError, or anything else the engine cannot take
        return False
    return True


def segment_must_be_refused(key: str, body: Any) -> bool:
    """What the strict server must refuse: anything the engine cannot parse, and
    conditions that cannot evaluate (unknown operators, values that do not fit)."""
    if not _key_ok(key) or not isinstance(body, dict):
        return True
    try:
        Segment.from_dict(key, body)
    except Exception:  # ModelError, or anything else the engine cannot take
        return True
    return not _conditions_ok(body.get("conditions", []))


def flag_must_be_refused(key: str, body: Any, segments_stored: set[str]) -> bool:
    """As for segments, and a rule naming a segment the server does not hold. A
    `version` left in the body is the server's to assign: refused only if malformed."""
    if not _key_ok(key) or not isinstance(body, dict):
        return True
    try:
        Flag.from_dict(key, body)
    except Exception:  # ModelError, or anything else the engine cannot take
        return True
    for rule in body.get("rules", []):
        if not _key_ok(rule.get("id")) or not _conditions_ok(rule.get("conditions", [])):
            return True
        if any(not _key_ok(name) or name not in segments_stored for name in rule.get("segments", [])):
            return True
    return False


def _server_body(body: Any) -> Any:
    """The wire form minus a well-formed `version` (the server assigns versions)."""
    if isinstance(body, dict) and type(body.get("version")) is int and body["version"] >= 0:
        return {k: v for k, v in body.items() if k != "version"}
    return body


@dataclasses.dataclass
class LoadedCaseFile:
    client: Any
    headers: dict[str, str]
    refused_flags: dict[str, int]  # key -> status
    wrongly: list[str]  # parts accepted that had to be refused, or refused that had to be accepted


def load_into_server(app, config: dict[str, Any]) -> LoadedCaseFile:
    """Create the config's segments, then its flags, through the API; note what is refused."""
    client = app.test_client()
    token = create_token(app.extensions["flagserver.store"], "admin", "cases", None, "test")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    wrongly: list[str] = []
    stored_segments: set[str] = set()
    for key, body in config.get("segments", {}).items():
        payload = {"key": key, **body} if isinstance(body, dict) else body
        response = send(client, "post", "/api/v1/envs/production/segments", payload, headers)
        must_refuse = segment_must_be_refused(key, body)
        if response.status_code == 201:
            stored_segments.add(key)
        if (response.status_code == 422) != must_refuse or response.status_code not in (201, 422):
            wrongly.append(f"segment {key!r}: {response.status_code} {response.get_data(as_text=True)[:200]}")
    refused: dict[str, int] = {}
    for key, body in config["flags"].items():
        body = _server_body(body)
        payload = {"key": key, **body} if isinstance(body, dict) else body
        response = send(client, "post", "/api/v1/envs/production/flags", payload, headers)
        must_refuse = flag_must_be_refused(key, body, stored_segments)
        if response.status_code != 201:
            refused[key] = response.status_code
        if (response.status_code == 422) != must_refuse or response.status_code not in (201, 422):
            wrongly.append(f"flag {key!r}: {response.status_code} {response.get_data(as_text=True)[:200]}")
    return LoadedCaseFile(client, headers, refused, wrongly)


@pytest.fixture(scope="module")
def case_servers(tmp_path_factory) -> Iterator[dict[tuple[str, str], LoadedCaseFile]]:
    """One server per (backend, case file) holding that file's config, loaded on first use."""
    apps: list[Any] = []

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, where: tuple[str, str]) -> LoadedCaseFile:
            backend, file_name = where
            app = make_app(tmp_path_factory.mktemp("cases"), backend)
            apps.append(app)
            config = next(config for name, _, config in CASES if name == file_name)
            self[where] = load_into_server(app, config)
            return self[where]

    yield Lazy()
    for app in apps:
        dispose_app(app)


_ENGINES: dict[int, Snapshot] = {}


def engine_of(config: dict[str, Any]) -> Snapshot:
    """The engine's snapshot of a case file's config (the cases of one file share the dict)."""
    if id(config) not in _ENGINES:
        _ENGINES[id(config)] = Snapshot.from_dict(config)
    return _ENGINES[id(config)]


def run_case(loaded: LoadedCaseFile, case: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Evaluate one case through the server; None when it agrees with the case and the engine."""
    if case["flag"] in loaded.refused_flags:
        # The strict server refused this flag's config (checked on its own), so the case
        # has nothing to evaluate there; the refusal itself is the server's answer.
        return None if loaded.refused_flags[case["flag"]] == 422 else f"refused with {loaded.refused_flags}"
    body = {"flag": case["flag"], "user": case["user"], "default": case["default"]}
    response = send(loaded.client, "post", "/api/v1/envs/production/evaluate", body, loaded.headers)
    if case["user"] is None:  # the endpoint validates its input: no user is a 422, not an evaluation
        fields = (response.get_json(silent=True) or {}).get("error", {}).get("fields", {})
        return None if (response.status_code, list(fields)) == (422, ["user"]) else response.get_data(as_text=True)
    if response.status_code != 200:
        return f"{response.status_code} {response.get_data(as_text=True)[:300]}"
    result = response.get_json()
    served = {name: result[name] for name in case["expect"]}
    if served != case["expect"]:
        return f"expected {case['expect']}, the server gave {served}"
    engine = dataclasses.asdict(engine_of(config).evaluate(case["flag"], case["user"], case["default"]))
    if any(result[name] != engine[name] for name in COMPARED):
        return f"the engine gives {engine}, the server {result}"
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("file_name", CASE_FILES)
def test_the_server_accepts_exactly_the_case_configs_it_can_serve(case_servers, backend, file_name):
    assert case_servers[backend, file_name].wrongly == []


@pytest.mark.parametrize(("file_name", "case", "config"), CASES, ids=case_ids(CASES))
def test_case_through_the_evaluate_endpoint(case_servers, file_name, case, config):
    assert run_case(case_servers["sqlite", file_name], case, config) is None


@pytest.mark.redis
@pytest.mark.parametrize("file_name", CASE_FILES)
def test_cases_through_the_evaluate_endpoint_on_redis(case_servers, file_name):
    """The same cases on a server storing in Redis (one test per file, to keep the suite quick)."""
    cases = [(case, config) for name, case, config in CASES if name == file_name]
    loaded = case_servers["redis", file_name]

    problems = {case["name"]: problem for case, config in cases
                if (problem := run_case(loaded, case, config)) is not None}

    assert problems == {}
