"""A table of bad requests: each gets its exact status, a JSON error naming the bad
field, and leaves storage exactly as it was (every environment's config document,
the flag and segment records, tokens, and the length of the audit log).

Never a 500: a request a client can send is answered with a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flagserver.auth import create_token
from tests.api_helpers import BACKENDS, assert_error, create_flag, create_segment, send, storage_state
from tests.conftest import dispose_app, make_app

F = "/api/v1/envs/production/flags"
S = "/api/v1/envs/production/segments"
ENVS = "/api/v1/envs"
TOKENS = "/api/v1/tokens"
EVALUATE = "/api/v1/envs/production/evaluate"
MISSING = object()
MIB = 1024 * 1024


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    body: Any = MISSING  # sent as JSON, keys in the order written
    raw: bytes | None = None  # sent as it is, as application/json
    headers: dict[str, str] = field(default_factory=dict)
    status: int | tuple[int, ...] = 422
    field: str | None = None  # must appear in error.fields

    @property
    def reaches_storage(self) -> bool:
        """Whether the answer depends on what storage holds or does (then both backends
        run the row); the other rows are refused by validation before any storage call."""
        return self.id.startswith(STORAGE_ROWS)


def flag(**fields: Any) -> dict[str, Any]:
    """A valid new flag with `fields` changed."""
    return {"key": "new-flag", **fields}


def rule(**fields: Any) -> dict[str, Any]:
    """A flag whose one rule is a valid rule with `fields` changed (None removes a field)."""
    r = {"id": "r1", "serve": "on", **fields}
    return flag(rules=[{k: v for k, v in r.items() if v is not None}])


def condition(**fields: Any) -> dict[str, Any]:
    """A flag whose one rule has one valid condition with `fields` changed (None removes a field)."""
    c = {"attribute": "email", "op": "ends_with", "values": ["@company.com"], **fields}
    return rule(conditions=[{k: v for k, v in c.items() if v is not None}])


def segment(**fields: Any) -> dict[str, Any]:
    return {"key": "new-segment", **fields}


def huge_int(prefix: str, suffix: str) -> bytes:
    return (prefix + "1" + "0" * 400 + suffix).encode()


C0 = "rules[0].conditions[0]"
STORAGE_ROWS = ("rule-unknown-segment", "patch-", "put-", "segment-patch", "segment-put", "token-sdk-unknown",
                "lone-surrogate", "unknown-", "duplicate-", "delete-segment", "if-match", "audit-before")

TABLE: list[Bad] = [
    # --- flags: wrong types, missing and unknown fields --------------------------------------
    Bad("flag-key-missing", "post", F, {}, field="key"),
    Bad("flag-key-int", "post", F, {"key": 5}, field="key"),
    Bad("flag-key-null", "post", F, {"key": None}, field="key"),
    Bad("flag-key-with-space", "post", F, {"key": "new flag"}, field="key"),
    Bad("flag-key-too-long", "post", F, {"key": "k" * 101}, field="key"),
    Bad("flag-description-int", "post", F, flag(description=5), field="description"),
    Bad("flag-description-too-long", "post", F, flag(description="d" * 2001), field="description"),
    Bad("flag-tags-string", "post", F, flag(tags="checkout"), field="tags"),
    Bad("flag-tags-of-ints", "post", F, flag(tags=[5]), field="tags[0]"),
    Bad("flag-owner-int", "post", F, flag(owner=5), field="owner"),
    Bad("flag-variants-string", "post", F, flag(variants="on"), field="variants"),
    Bad("flag-variants-one", "post", F, flag(variants=["on"]), field="variants"),
    Bad("flag-variants-duplicate", "post", F, flag(variants=["on", "on"]), field="variants"),
    Bad("flag-variants-empty-name", "post", F, flag(variants=["", "on"]), field="variants[0]"),
    Bad("flag-salt-int", "post", F, flag(salt=5), field="salt"),
    Bad("flag-salt-empty", "post", F, flag(salt=""), field="salt"),
    Bad("flag-bucket-by-list", "post", F, flag(bucket_by=["key"]), field="bucket_by"),
    Bad("flag-hash-version-string", "post", F, flag(hash_version="1"), field="hash_version"),
    Bad("flag-hash-version-float", "post", F, flag(hash_version=1.5), field="hash_version"),
    Bad("flag-hash-version-bool", "post", F, flag(hash_version=True), field="hash_version"),
    Bad("flag-hash-version-unknown", "post", F, flag(hash_version=2), field="hash_version"),
    Bad("flag-enabled-null", "post", F, flag(enabled=None), field="enabled"),
    Bad("flag-enabled-word", "post", F, flag(enabled="maybe"), field="enabled"),
    Bad("flag-enabled-string-yes", "post", F, flag(enabled="yes"), field="enabled"),
    Bad("flag-enabled-int", "post", F, flag(enabled=1), field="enabled"),
    Bad("flag-rules-object", "post", F, flag(rules={}), field="rules"),
    Bad("flag-rules-string", "post", F, flag(rules="staff"), field="rules"),
    Bad("flag-rule-not-object", "post", F, flag(rules=[5]), field="rules[0]"),
    Bad("flag-unknown-field", "post", F, flag(colour="blue"), field="colour"),
    Bad("flag-read-only-version", "post", F, flag(version=3), field="version"),
    # --- rules ---------------------------------------------------------------------------------
    Bad("rule-id-missing", "post", F, rule(id=None), field="rules[0].id"),
    Bad("rule-id-int", "post", F, rule(id=5), field="rules[0].id"),
    Bad("rule-id-with-space", "post", F, rule(id="rule one"), field="rules[0].id"),
    Bad("rule-ids-duplicate", "post", F,
        flag(rules=[{"id": "r", "serve": "on"}, {"id": "r", "serve": "off"}]), field="rules"),
    Bad("rule-segments-string", "post", F, rule(segments="beta"), field="rules[0].segments"),
    Bad("rule-segments-of-ints", "post", F, rule(segments=[5]), field="rules[0].segments[0]"),
    Bad("rule-conditions-object", "post", F, rule(conditions={}), field="rules[0].conditions"),
    Bad("rule-serve-int", "post", F, rule(serve=5), field="rules[0].serve"),
    Bad("rule-serve-not-a-variant", "post", F, rule(serve="blue"), field="rules[0].serve"),
    Bad("rule-serve-and-rollout", "post", F, rule(rollout=50), field="rules[0].serve"),
    Bad("rule-neither-serve-nor-rollout", "post", F, rule(serve=None), field="rules[0].serve"),
    Bad("rule-rollout-over-100", "post", F, rule(serve=None, rollout=100.001), field="rules[0].rollout"),
    Bad("rule-weights-not-summing", "post", F,
        rule(serve=None, rollout={"off": 5000, "on": 4999}), field="rules[0].rollout"),
    Bad("rule-unknown-segment", "post", F, rule(segments=["ghost"]), field="rules[0].segments"),
    Bad("rule-unknown-field", "post", F, rule(colour="blue"), field="rules[0].colour"),
    # --- conditions ------------------------------------------------------------------------------
    Bad("condition-not-object", "post", F, rule(conditions=["email"]), field=C0),
    Bad("condition-attribute-missing", "post", F, condition(attribute=None), field=f"{C0}.attribute"),
    Bad("condition-attribute-int", "post", F, condition(attribute=5), field=f"{C0}.attribute"),
    Bad("condition-attribute-empty", "post", F, condition(attribute=""), field=f"{C0}.attribute"),
    Bad("condition-op-missing", "post", F, condition(op=None), field=f"{C0}.op"),
    Bad("condition-op-unknown", "post", F, condition(op="regex"), field=f"{C0}.op"),
    Bad("condition-values-missing", "post", F, condition(values=None), field=f"{C0}.values"),
    Bad("condition-values-string", "post", F, condition(values="@company.com"), field=f"{C0}.values"),
    Bad("condition-values-empty", "post", F, condition(values=[]), field=f"{C0}.values"),
    Bad("condition-values-objects", "post", F, condition(op="in", values=[{"a": 1}]), field=f"{C0}.values"),
    Bad("condition-values-numbers-for-ends-with", "post", F, condition(values=[5]), field=f"{C0}.values"),
    Bad("condition-ignore-case-word", "post", F, condition(ignore_case="maybe"), field=f"{C0}.ignore_case"),
    Bad("condition-negate-int", "post", F, condition(negate=5), field=f"{C0}.negate"),
    Bad("condition-unknown-field", "post", F, condition(colour="blue"), field=f"{C0}.colour"),
    Bad("regex-malformed", "post", F, condition(op="matches", values=["(unclosed"]), field=f"{C0}.values"),
    Bad("regex-nested-repeat", "post", F, condition(op="matches", values=["^(a+)+$"]), field=f"{C0}.values"),
    Bad("regex-back-reference", "post", F, condition(op="matches", values=[r"(a)\1"]), field=f"{C0}.values"),
    Bad("regex-too-long", "post", F, condition(op="matches", values=["a" * 300]), field=f"{C0}.values"),
    Bad("number-op-with-words", "post", F, condition(op="lt", values=["ten"]), field=f"{C0}.values"),
    Bad("semver-op-with-non-version", "post", F, condition(op="semver_gte", values=["two"]), field=f"{C0}.values"),
    Bad("time-op-with-non-time", "post", F, condition(op="before", values=["yesterday"]), field=f"{C0}.values"),
    Bad("number-op-with-huge-int", "post", F,
        raw=huge_int('{"key":"new-flag","rules":[{"id":"r","serve":"on","conditions":'
                     '[{"attribute":"age","op":"lt","values":[', "]}]}]}"), field=f"{C0}.values"),
    Bad("time-op-with-huge-int", "post", F,
        raw=huge_int('{"key":"new-flag","rules":[{"id":"r","serve":"on","conditions":'
                     '[{"attribute":"at","op":"after","values":[', "]}]}]}"), field=f"{C0}.values"),
    # --- rollout: percentages and weights --------------------------------------------------------
    Bad("percentage-100.001", "post", F, flag(rollout=100.001), field="rollout"),
    Bad("percentage-minus-1", "post", F, flag(rollout=-1), field="rollout"),
    Bad("percentage-12.345", "post", F, flag(rollout=12.345), field="rollout"),
    Bad("percentage-string-25", "post", F, flag(rollout="25"), field="rollout"),
    Bad("percentage-true", "post", F, flag(rollout=True), field="rollout"),
    Bad("percentage-null", "post", F, flag(rollout=None), field="rollout"),
    Bad("percentage-list", "post", F, flag(rollout=[25]), field="rollout"),
    Bad("percentage-nan", "post", F, raw=b'{"key":"new-flag","rollout":NaN}', field="rollout"),
    Bad("percentage-infinity", "post", F, raw=b'{"key":"new-flag","rollout":1e400}', field="rollout"),
    Bad("percentage-huge-int", "post", F, raw=huge_int('{"key":"new-flag","rollout":', "}"), field="rollout"),
    Bad("weights-not-summing-to-10000", "post", F, flag(rollout={"off": 5000, "on": 4000}), field="rollout"),
    Bad("weights-naming-a-non-variant", "post", F, flag(rollout={"off": 5000, "blue": 5000}), field="rollout.blue"),
    Bad("weights-negative", "post", F, flag(rollout={"off": 11000, "on": -1000}), field="rollout.on"),
    Bad("weights-fractional", "post", F, flag(rollout={"off": 5000.5, "on": 4999.5}), field="rollout.off"),
    Bad("weights-empty", "post", F, flag(rollout={}), field="rollout"),
    # --- changing flags --------------------------------------------------------------------------
    Bad("patch-key", "patch", f"{F}/plain", {"key": "other"}, field="key"),
    Bad("patch-percentage-101", "patch", f"{F}/plain", {"rollout": 101}, field="rollout"),
    Bad("patch-percentage-12.345", "patch", f"{F}/plain", {"rollout": 12.345}, field="rollout"),
    Bad("patch-percentage-string", "patch", f"{F}/plain", {"rollout": "25"}, field="rollout"),
    Bad("patch-percentage-true", "patch", f"{F}/plain", {"rollout": True}, field="rollout"),
    Bad("patch-enabled-null", "patch", f"{F}/plain", {"enabled": None}, field="enabled"),
    Bad("patch-enabled-string-false", "patch", f"{F}/plain", {"enabled": "false"}, field="enabled"),
    Bad("patch-unknown-segment", "patch", f"{F}/plain",
        {"rules": [{"id": "r", "segments": ["ghost"], "serve": "on"}]}, field="rules[0].segments"),
    Bad("patch-variants-dropping-a-served-one", "patch", f"{F}/checkout", {"variants": ["a", "b"]},
        field="rules[0].serve"),
    Bad("patch-read-only-version", "patch", f"{F}/plain", {"version": 9}, field="version"),
    Bad("put-key-not-the-url", "put", f"{F}/plain", {"key": "other"}, field="key"),
    Bad("put-percentage-12.345", "put", f"{F}/plain", {"rollout": 12.345}, field="rollout"),
    # --- segments --------------------------------------------------------------------------------
    Bad("segment-key-missing", "post", S, {"included": ["u1"]}, field="key"),
    Bad("segment-key-int", "post", S, {"key": 5}, field="key"),
    Bad("segment-description-int", "post", S, segment(description=5), field="description"),
    Bad("segment-included-string", "post", S, segment(included="u1"), field="included"),
    Bad("segment-included-of-ints", "post", S, segment(included=[5]), field="included[0]"),
    Bad("segment-excluded-object", "post", S, segment(excluded={}), field="excluded"),
    Bad("segment-percentage-100.001", "post", S, segment(percentage=100.001), field="percentage"),
    Bad("segment-percentage-minus-1", "post", S, segment(percentage=-1), field="percentage"),
    Bad("segment-percentage-12.345", "post", S, segment(percentage=12.345), field="percentage"),
    Bad("segment-percentage-string-25", "post", S, segment(percentage="25"), field="percentage"),
    Bad("segment-percentage-true", "post", S, segment(percentage=True), field="percentage"),
    Bad("segment-bucket-by-empty", "post", S, segment(bucket_by=""), field="bucket_by"),
    Bad("segment-op-unknown", "post", S,
        segment(conditions=[{"attribute": "plan", "op": "like", "values": ["free"]}]), field="conditions[0].op"),
    Bad("segment-regex-unsafe", "post", S,
        segment(conditions=[{"attribute": "email", "op": "matches", "values": ["(x*)*y"]}]),
        field="conditions[0].values"),
    Bad("segment-unknown-field", "post", S, segment(colour="blue"), field="colour"),
    Bad("segment-patch-key", "patch", f"{S}/spare", {"key": "other"}, field="key"),
    Bad("segment-patch-percentage-12.345", "patch", f"{S}/spare", {"percentage": 12.345}, field="percentage"),
    Bad("segment-put-key-not-the-url", "put", f"{S}/spare", {"key": "other"}, field="key"),
    # --- environments, tokens, evaluate ----------------------------------------------------------
    Bad("env-key-missing", "post", ENVS, {"name": "QA"}, field="key"),
    Bad("env-key-int", "post", ENVS, {"key": 5}, field="key"),
    Bad("env-key-with-slash", "post", ENVS, {"key": "qa/1"}, field="key"),
    Bad("env-name-int", "post", ENVS, {"key": "qa", "name": 5}, field="name"),
    Bad("env-unknown-field", "post", ENVS, {"key": "qa", "colour": "blue"}, field="colour"),
    Bad("token-kind-unknown", "post", TOKENS, {"kind": "root", "name": "x"}, field="kind"),
    Bad("token-name-missing", "post", TOKENS, {"kind": "admin"}, field="name"),
    Bad("token-name-int", "post", TOKENS, {"kind": "admin", "name": 5}, field="name"),
    Bad("token-sdk-without-environment", "post", TOKENS, {"kind": "sdk", "name": "web"}, field="environment"),
    Bad("token-admin-with-environment", "post", TOKENS,
        {"kind": "admin", "name": "ops", "environment": "production"}, field="environment"),
    Bad("token-secret-given", "post", TOKENS, {"kind": "admin", "name": "ops", "token": "mine"}, field="token"),
    Bad("token-sdk-unknown-environment", "post", TOKENS, {"kind": "sdk", "name": "web", "environment": "nope"},
        status=404),
    Bad("evaluate-flag-missing", "post", EVALUATE, {"user": {"key": "u"}}, field="flag"),
    Bad("evaluate-user-missing", "post", EVALUATE, {"flag": "plain"}, field="user"),
    Bad("evaluate-flag-int", "post", EVALUATE, {"flag": 5, "user": {"key": "u"}}, field="flag"),
    Bad("evaluate-default-int", "post", EVALUATE, {"flag": "plain", "user": {"key": "u"}, "default": 5},
        field="default"),
    # --- bodies that are not a JSON object -------------------------------------------------------
    Bad("body-not-json", "post", F, raw=b'{"key": new-flag}', status=400),
    Bad("body-empty", "post", F, raw=b"", status=400),
    Bad("body-not-utf8", "post", F, raw=b'{"key": "\xff\xfe"}', status=400),
    Bad("body-truncated", "patch", f"{F}/plain", raw=b'{"rollout": 2', status=400),
    Bad("body-array", "post", F, [{"key": "new-flag"}], field="_schema"),
    Bad("body-string", "post", F, "new-flag", field="_schema"),
    Bad("body-number", "patch", f"{F}/plain", 25, field="_schema"),
    Bad("body-true", "post", S, True, field="_schema"),
    Bad("body-null", "post", F, None, field="_schema"),
    Bad("body-too-large", "post", F, raw=b'{"key":"new-flag","description":"' + b"x" * MIB + b'"}', status=413),
    Bad("body-too-large-patch", "patch", f"{F}/plain", raw=b'{"tags":["' + b"t" * MIB + b'"]}', status=413),
    Bad("body-too-large-segment", "post", S,
        raw=b'{"key":"s","included":[' + b",".join([b'"user-000000"'] * (MIB // 13 + 1)) + b"]}", status=413),
    # Past the parser's nesting limit: refused as unreadable (400) or as not a flag (422), never a 500.
    Bad("body-nested-too-deep", "post", F,
        raw=b'{"key":"new-flag","description":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001, status=(400, 422)),
    # A lone UTF-16 surrogate is valid JSON but not text: refused, never stored, never a 500.
    Bad("lone-surrogate-flag-description", "post", F, raw=b'{"key":"new-flag","description":"\\ud800"}',
        status=(400, 422)),
    Bad("lone-surrogate-segment-description", "post", S, raw=b'{"key":"s","description":"x\\udfff"}',
        status=(400, 422)),
    Bad("lone-surrogate-environment-name", "post", ENVS, raw=b'{"key":"qa","name":"\\ud83d"}', status=(400, 422)),
    Bad("lone-surrogate-token-name", "post", TOKENS, raw=b'{"kind":"admin","name":"\\ud800"}', status=(400, 422)),
    # --- unknown things: 404 ---------------------------------------------------------------------
    Bad("unknown-env-flag-create", "post", "/api/v1/envs/nope/flags", flag(), status=404),
    Bad("unknown-env-flag-list", "get", "/api/v1/envs/nope/flags", status=404),
    Bad("unknown-env-flag-get", "get", "/api/v1/envs/nope/flags/plain", status=404),
    Bad("unknown-env-flag-patch", "patch", "/api/v1/envs/nope/flags/plain", {"rollout": 5}, status=404),
    Bad("unknown-env-flag-delete", "delete", "/api/v1/envs/nope/flags/plain", status=404),
    Bad("unknown-env-segment-create", "post", "/api/v1/envs/nope/segments", segment(), status=404),
    Bad("unknown-env-segment-list", "get", "/api/v1/envs/nope/segments", status=404),
    Bad("unknown-env-get", "get", "/api/v1/envs/nope", status=404),
    Bad("unknown-env-config", "get", "/api/v1/envs/nope/config", status=404),
    Bad("unknown-env-evaluate", "post", "/api/v1/envs/nope/evaluate", {"flag": "plain", "user": {"key": "u"}},
        status=404),
    Bad("unknown-env-sdk-config", "get", "/api/v1/sdk/config?environment=nope", status=404),
    Bad("unknown-flag-get", "get", f"{F}/ghost", status=404),
    Bad("unknown-flag-patch", "patch", f"{F}/ghost", {"rollout": 5}, status=404),
    Bad("unknown-flag-put", "put", f"{F}/ghost", {"rollout": 5}, status=404),
    Bad("unknown-flag-delete", "delete", f"{F}/ghost", status=404),
    Bad("unknown-segment-get", "get", f"{S}/ghost", status=404),
    Bad("unknown-segment-patch", "patch", f"{S}/ghost", {"percentage": 5}, status=404),
    Bad("unknown-segment-delete", "delete", f"{S}/ghost", status=404),
    Bad("unknown-token-delete", "delete", f"{TOKENS}/0123456789abcdef", status=404),
    Bad("unknown-url", "get", "/api/v1/nothing-here", status=404),
    Bad("method-not-allowed", "post", f"{F}/plain", flag(), status=405),
    # --- conflicts: 409 --------------------------------------------------------------------------
    Bad("duplicate-flag", "post", F, {"key": "plain"}, status=409, field="key"),
    Bad("duplicate-flag-from-another-env", "post", "/api/v1/envs/staging/flags", {"key": "plain"}, status=409,
        field="key"),
    Bad("duplicate-segment", "post", S, {"key": "beta"}, status=409, field="key"),
    Bad("duplicate-environment", "post", ENVS, {"key": "staging"}, status=409, field="key"),
    Bad("delete-segment-in-use", "delete", f"{S}/beta", status=409, field="key"),
    # --- If-Match: 412 (plain and spare are at version 2) ----------------------------------------
    Bad("if-match-stale-patch", "patch", f"{F}/plain", {"rollout": 5}, headers={"If-Match": '"1"'}, status=412),
    Bad("if-match-future-patch", "patch", f"{F}/plain", {"rollout": 5}, headers={"If-Match": '"3"'}, status=412),
    Bad("if-match-stale-put", "put", f"{F}/plain", {"rollout": 5}, headers={"If-Match": '"1"'}, status=412),
    Bad("if-match-stale-flag-delete", "delete", f"{F}/plain", headers={"If-Match": '"1"'}, status=412),
    Bad("if-match-stale-segment-patch", "patch", f"{S}/spare", {"percentage": 5}, headers={"If-Match": '"1"'},
        status=412),
    Bad("if-match-stale-segment-delete", "delete", f"{S}/spare", headers={"If-Match": '"1"'}, status=412),
    Bad("if-match-not-a-version", "patch", f"{F}/plain", {"rollout": 5}, headers={"If-Match": '"abc"'},
        status=412),
    Bad("if-match-weak-stale", "patch", f"{F}/plain", {"rollout": 5}, headers={"If-Match": 'W/"1"'}, status=412),
    Bad("if-match-huge-number", "patch", f"{F}/plain", {"rollout": 5},
        headers={"If-Match": '"1' + "0" * 5000 + '"'}, status=412),
    # --- query strings ---------------------------------------------------------------------------
    Bad("audit-limit-zero", "get", "/api/v1/audit?limit=0", status=400),
    Bad("audit-limit-too-big", "get", "/api/v1/audit?limit=1001", status=400),
    Bad("audit-limit-word", "get", "/api/v1/audit?limit=ten", status=400),
    Bad("audit-before-word", "get", "/api/v1/audit?before=yesterday", status=400),
    # Past every id: all entries, or refused; never a 500.
    Bad("audit-before-huge", "get", "/api/v1/audit?before=1" + "0" * 30, status=(200, 400)),
    Bad("sdk-config-admin-without-environment", "get", "/api/v1/sdk/config", status=400),
]


def seed(app) -> dict[str, str]:
    """Segments `beta` (used by flag `checkout`) and `spare` (at version 2); flags
    `checkout` and `plain` (at version 2). Returns the admin's headers."""
    token = create_token(app.extensions["flagserver.store"], "admin", "test-admin", None, "test")["token"]
    admin = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    create_segment(client, admin, key="beta", included=["user-1"])
    create_segment(client, admin, key="spare", included=["user-2"])
    assert client.patch(f"{S}/spare", json={"included": ["user-3"]}, headers=admin).status_code == 200
    create_flag(client, admin, key="checkout", enabled=True, rollout=25,
                rules=[{"id": "beta", "segments": ["beta"], "serve": "on"}])
    create_flag(client, admin, key="plain", rollout=10)
    assert client.patch(f"{F}/plain", json={"rollout": 20}, headers=admin).status_code == 200
    return admin


class SeededApps:
    """One seeded app per backend, shared by the rows while they leave it as it was.

    Every row checks that storage is unchanged; a row that fails (or changes anything)
    throws its app away, so the next row starts from a freshly seeded one and a bug in
    one row can never make another fail."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._apps: dict[str, tuple[Any, dict[str, str]]] = {}

    def get(self, backend: str) -> tuple[Any, dict[str, str]]:
        if backend not in self._apps:
            app = make_app(self._tmp.mktemp(f"bad-{backend}"), backend)
            self._apps[backend] = (app, seed(app))
        return self._apps[backend]

    def discard(self, backend: str) -> None:
        app, _ = self._apps.pop(backend)
        dispose_app(app)

    def close(self) -> None:
        for backend in list(self._apps):
            self.discard(backend)


@pytest.fixture(scope="module")
def seeded_apps(tmp_path_factory) -> Iterator[SeededApps]:
    apps = SeededApps(tmp_path_factory)
    yield apps
    apps.close()


def request(client, admin, bad: Bad):
    headers = {**admin, **bad.headers}
    if bad.raw is not None:
        return client.open(bad.path, method=bad.method.upper(), data=bad.raw, content_type="application/json",
                           headers=headers)
    if bad.body is MISSING:
        return client.open(bad.path, method=bad.method.upper(), headers=headers)
    return send(client, bad.method, bad.path, bad.body, headers)


CASES = [
    pytest.param(bad, backend, id=f"{bad.id}-{backend}",
                 marks=[pytest.mark.redis] if backend == "redis" else [])
    for bad in TABLE
    for backend in (("sqlite", "redis") if bad.reaches_storage else ("sqlite",))
]


@pytest.mark.parametrize(("bad", "store_backend"), CASES)
def test_bad_request(seeded_apps, bad, store_backend):
    app, admin = seeded_apps.get(store_backend)
    before = storage_state(app)
    passed = False
    try:
        response = request(app.test_client(), admin, bad)

        assert response.status_code != 500, response.get_data(as_text=True)[:300]
        if response.status_code == 200 and bad.status == (200, 400):  # the one read that may simply answer
            assert isinstance(response.get_json(), dict)
        else:
            assert_error(response, bad.status, bad.field)
        assert storage_state(app) == before
        passed = True
    finally:
        if not passed:
            seeded_apps.discard(store_backend)


def test_the_table_has_no_duplicate_ids():
    ids = [b.id for b in TABLE]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_every_bad_field_is_named_at_once(app, client, admin):
    body = {"key": 5, "tags": "checkout", "owner": 7, "rollout": "25", "colour": "blue"}

    response = send(client, "post", F, body, admin)

    error = assert_error(response, 422)
    assert set(error["fields"]) == {"key", "tags", "owner", "rollout", "colour"}


def test_bad_fields_the_engine_finds_are_named_at_once_too(app, client, admin):
    """Both fields are wrong; a client fixing one should not be told about the other only on
    its next attempt ("422 with a JSON body naming each bad field")."""
    body = {"key": "new-flag", "rollout": 101, "rules": [{"id": "r1", "serve": "blue"}]}

    error = assert_error(send(client, "post", F, body, admin), 422)

    assert {"rollout", "rules[0].serve"} <= set(error["fields"])


def test_error_bodies_are_json_with_the_house_shape(client, admin):
    response = send(client, "post", F, {"key": "new flag"}, admin)

    assert response.mimetype == "application/json"
    error = json.loads(response.get_data())["error"]
    assert set(error) >= {"status", "code", "message", "fields"}
    assert error["code"] == "validation_error"
    assert error["message"].startswith("key: ")
