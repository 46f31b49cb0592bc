"""Helpers shared by the HTTP API tests: the backends to run on, what storage holds
(to prove a refused request changed nothing), and small request shortcuts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import support

# `@pytest.mark.parametrize("backend", BACKENDS, indirect=True)` runs a test on both stores.
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]

FLAGS = "/api/v1/envs/{env}/flags"
SEGMENTS = "/api/v1/envs/{env}/segments"


def store_of(app: Flask) -> Any:
    return app.extensions["flagserver.store"]


def storage_state(app: Flask) -> dict[str, Any]:
    """Everything an API write could change, read straight from storage: environments,
    each environment's config document, flag and segment records (with the fields the
    document leaves out), tokens and the audit log."""
    store = store_of(app)
    environments = store.list_environments()
    keys = [e["key"] for e in environments]
    return {
        "environments": environments,
        "configs": {env: store.config_document(env) for env in keys},
        "flags": {env: store.list_flags(env) for env in keys},
        "segments": {env: store.list_segments(env) for env in keys},
        "tokens": store.list_tokens(),
        "audit": [entry["id"] for entry in store.list_audit(limit=1000)],
    }


def audit_entries(app: Flask, **filters: Any) -> list[dict[str, Any]]:
    return list(store_of(app).list_audit(limit=1000, **filters))


def assert_error(response: Any, status: int | tuple[int, ...], field: str | None = None) -> dict[str, Any]:
    """The response is a JSON error of the house shape with `status`, naming `field`
    in `error.fields` when one is given. Returns the `error` object."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True)[:500])
    body = response.get_json(silent=True)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), response.get_data(as_text=True)[:500]
    error = body["error"]
    assert error["status"] == response.status_code
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert field in error.get("fields", {}), (field, error)
        assert all(isinstance(m, str) and m for m in error["fields"][field])
    return error


def send(client: FlaskClient, method: str, url: str, body: Any, headers: dict[str, str]) -> Any:
    """Send `body` as JSON in the order written. (The test client's `json=` sorts keys,
    which would hide whether the server keeps the declared order of variant weights.)"""
    return client.open(url, method=method.upper(), data=json.dumps(body), content_type="application/json",
                       headers=headers)


def create_flag(client: FlaskClient, headers: dict[str, str], env: str = "production", **flag: Any) -> dict[str, Any]:
    response = send(client, "post", FLAGS.format(env=env), flag, headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def create_segment(client: FlaskClient, headers: dict[str, str], env: str = "production",
                   **segment: Any) -> dict[str, Any]:
    response = send(client, "post", SEGMENTS.format(env=env), segment, headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """`tests.support.wait_for` for servers and processes: an exception from `check`
    counts as not ready yet (connection refused and the like)."""
    return support.wait_for(check, timeout, "a truthy answer", interval=interval, ignoring=(Exception,))
