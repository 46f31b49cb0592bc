"""Storage: one protocol (`Store`), an SQLite and a Redis backend, `open_store(url)`."""

from __future__ import annotations

from .base import (
    AlreadyExists,
    InvalidReference,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from .documents import build_config_document


def open_store(url: str, *, redis_prefix: str = "flagserver:") -> Store:
    """A store for `url`: `sqlite:///path/to/file.db` or `redis://host:port/db`
    (keys under `redis_prefix`). Raises ValueError for any other scheme."""
    if url.startswith("sqlite:"):
        from .sqlite_store import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("redis:", "rediss:", "unix:")):
        from .redis_store import RedisStore

        return RedisStore.from_url(url, prefix=redis_prefix)
    raise ValueError(f"unsupported storage URL {url!r}: use sqlite:///path or redis://host:port/db")


__all__ = [
    "AlreadyExists",
    "InvalidReference",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "VersionConflict",
    "build_config_document",
    "open_store",
]
