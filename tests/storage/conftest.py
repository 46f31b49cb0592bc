"""The `store` fixture: every storage contract test runs once per backend.

`sqlite` uses a fresh file under pytest's tmp_path. `redis` uses the Redis at
FLAGSERVER_TEST_REDIS_URL (default redis://127.0.0.1:6379/15) under a key prefix
of its own, deleted afterwards; when Redis does not answer the test fails in CI
(CI set) and is skipped elsewhere.

For the Redis-only suites, `prefix` (such a key prefix) and `make_store` (RedisStores
on it, each with its own connection pool).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from flagserver.storage import Store
from tests.support import missing

if TYPE_CHECKING:
    from flagserver.storage.redis_store import RedisStore

REDIS_URL = os.environ.get("FLAGSERVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _require_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"Redis does not answer at {url} ({exc}); start one (redis-server --port 6379)"
                " or point FLAGSERVER_TEST_REDIS_URL at one")
    finally:
        client.close()


def _delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def _sqlite_store(tmp_path: Path) -> Iterator[Store]:
    from flagserver.storage.sqlite_store import SQLiteStore

    store = SQLiteStore.from_url(f"sqlite:///{tmp_path / 'flags.db'}")
    try:
        store.initialize()
        yield store
    finally:
        store.close()


def _redis_store() -> Iterator[Store]:
    _require_redis(REDIS_URL)
    from flagserver.storage.redis_store import RedisStore

    prefix = f"flagtest:{uuid4().hex}:"
    store = RedisStore.from_url(REDIS_URL, prefix=prefix)
    try:
        store.initialize()
        yield store
    finally:
        store.close()
        _delete_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An initialized, empty store of each backend, closed (and cleaned) afterwards."""
    if request.param == "sqlite":
        yield from _sqlite_store(tmp_path)
    else:
        yield from _redis_store()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of the test's own on the test Redis, deleted afterwards."""
    _require_redis(REDIS_URL)
    name = f"flagtest:{uuid4().hex}:"
    yield name
    _delete_prefix(REDIS_URL, name)


@pytest.fixture
def make_store(prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """RedisStores on the test prefix, each with its own connection pool (as
    separate processes would have); all closed at the end."""
    from flagserver.storage.redis_store import RedisStore

    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        store = RedisStore.from_url(REDIS_URL, prefix=prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
