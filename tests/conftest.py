"""flaskr-style fixtures: `app` on a temporary SQLite file, `client`, `runner`,
tokens, the app's `store` and injected `clock`, and `live_server` serving the real
app on a loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from flagserver import create_app
from flagserver.auth import create_token
from tests.live_server import LiveServer
from tests.rollout_helpers import Clock
from tests.support import missing

REDIS_URL = os.environ.get("FLAGSERVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_available(url: str = REDIS_URL) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def require_redis() -> None:
    """Fail in CI, skip with a reason on a developer's machine, when Redis is missing."""
    if redis_available():
        return
    missing(f"Redis does not answer at {REDIS_URL} (start one: redis-server --port 6379)")


def clear_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def make_app(tmp_path: Any, backend: str = "sqlite", **config: Any) -> Flask:
    """An app on a fresh store with the environments production and staging."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'flags.db'}"
        prefix = "flagserver:"
    else:
        require_redis()
        url = REDIS_URL
        prefix = f"flagtest:{uuid.uuid4().hex}:"
    app = create_app({"TESTING": True, "DATABASE_URL": url, "REDIS_PREFIX": prefix,
                      "SECRET_KEY": "test", **config})
    app.config["TEST_REDIS_PREFIX"] = prefix if backend == "redis" else None
    store = app.extensions["flagserver.store"]
    for env in ("production", "staging"):
        store.create_environment(env, env.capitalize(), actor="test")
    return app


def dispose_app(app: Flask) -> None:
    app.extensions["flagserver.store"].close()
    prefix = app.config.get("TEST_REDIS_PREFIX")
    if prefix:
        clear_redis_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of `app`; modules parametrise it over ["sqlite", "redis"] with
    `@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)`."""
    return str(request.param)


@pytest.fixture
def app(tmp_path: Any, backend: str) -> Iterator[Flask]:
    app = make_app(tmp_path, backend)
    yield app
    dispose_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def store(app: Flask) -> Any:
    """The app's store, for a test to arrange and inspect storage directly."""
    return app.extensions["flagserver.store"]


@pytest.fixture
def clock(app: Flask) -> Clock:
    """The app's injected CLOCK (people's actions), moved by the test by hand; the
    rollout tests give the controller the same `clock.now`."""
    clock = Clock()
    app.config["CLOCK"] = clock
    return clock


@pytest.fixture
def admin_token(app: Flask) -> str:
    return str(create_token(app.extensions["flagserver.store"], "admin", "test-admin", None, "test")["token"])


@pytest.fixture
def admin(admin_token: str) -> dict[str, str]:
    """Headers of an admin."""
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def sdk_key(app: Flask) -> str:
    """An SDK key of the production environment."""
    return str(create_token(app.extensions["flagserver.store"], "sdk", "test-sdk", "production", "test")["token"])


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    """The real app on a real loopback port; `.stop()` and `.start()` simulate outages."""
    server = LiveServer(app).start()
    yield server
    server.stop()
