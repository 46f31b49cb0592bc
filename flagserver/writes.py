"""Changing flags and segments with optimistic concurrency: shared by the API, the
CLI and the rollout controller, so every writer goes through the same checks."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .errors import APIError
from .schemas import check_flag, check_segment
from .storage import NotFound, Store, VersionConflict
from .storage.base import ENV_FLAG_FIELDS, GLOBAL_FLAG_FIELDS, SEGMENT_FIELDS, Record

FLAG_WRITABLE = GLOBAL_FLAG_FIELDS + ENV_FLAG_FIELDS
RETRY_SECONDS = 5.0  # how long a write without If-Match keeps re-applying itself under contention


def versioned_write(kind: str, key: str, read: Callable[[], Record], write: Callable[[Record, int], Record],
                    expected_version: int | None) -> Record:
    """Run `write(current, version)` on the record `read()` returns.

    With `expected_version` the write succeeds only at that version (else
    `VersionConflict`). Without it, a concurrent change makes us re-read and
    re-apply, so no update is lost.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    pause = 0.002
    while True:
        current = read()
        if expected_version is not None and current["version"] != expected_version:
            raise VersionConflict(kind, key, current["version"])
        try:
            return write(current, current["version"])
        except VersionConflict:
            if expected_version is not None:
                raise
        if time.monotonic() >= deadline:
            break
        time.sleep(random.uniform(0, pause))  # jitter spreads writers who collided
        pause = min(pause * 2, 0.1)
    raise APIError(503, "busy", f"{kind} {key!r} kept changing while this write was applied; try again",
                   headers={"Retry-After": "1"})


def read_flag(store: Store, env: str, key: str) -> Record:
    """The flag `key` of environment `env`. Raises NotFound (a 404) naming the
    environment or the flag that does not exist, and the store's errors."""
    if store.get_environment(env) is None:
        raise NotFound("environment", env)
    flag = store.get_flag(env, key)
    if flag is None:
        raise NotFound("flag", key)
    return flag


def change_flag(store: Store, env: str, key: str, changes: dict[str, Any], *, actor: str,
                expected_version: int | None = None) -> Record:
    """Apply `changes` (any writable fields, e.g. `{"rollout": 25}`) to a flag.
    Raises NotFound, VersionConflict, or a 422 `APIError` naming a bad field."""
    def write(current: Record, version: int) -> Record:
        merged = {**{n: current[n] for n in FLAG_WRITABLE if n in current}, **changes, "key": key}
        return store.update_flag(env, key, check_flag(merged), expected_version=version, actor=actor)
    return versioned_write("flag", key, lambda: read_flag(store, env, key), write, expected_version)


def read_segment(store: Store, env: str, key: str) -> Record:
    """The segment `key` of environment `env`. Raises NotFound (a 404) naming the
    environment or the segment that does not exist, and the store's errors."""
    if store.get_environment(env) is None:
        raise NotFound("environment", env)
    segment = store.get_segment(env, key)
    if segment is None:
        raise NotFound("segment", key)
    return segment


def change_segment(store: Store, env: str, key: str, changes: dict[str, Any], *, actor: str,
                   expected_version: int | None = None) -> Record:
    """Apply `changes` to a segment; errors as for `change_flag`."""
    def write(current: Record, version: int) -> Record:
        merged = {**{n: current[n] for n in SEGMENT_FIELDS if n in current}, **changes, "key": key}
        return store.update_segment(env, key, check_segment(merged), expected_version=version, actor=actor)
    return versioned_write("segment", key, lambda: read_segment(store, env, key), write, expected_version)
