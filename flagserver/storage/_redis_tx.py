"""How `RedisStore` talks to Redis: failures become `StoreUnavailable`, reads go
in one round trip, and every write is one optimistic transaction with its audit
entry, its config-version bumps and its config-channel messages."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from ._redis_keys import Keys
from ._redis_scripts import APPEND_AUDIT
from .base import Record, StoreUnavailable

T = TypeVar("T")

# A write that loses the race this many times in a row gives up (each lost race
# means another write succeeded, so this takes a storm of concurrent writes).
MAX_ATTEMPTS = 100
_AUDIT_BATCH = 200


def dumps(value: Any) -> str:
    # No sort_keys: the order of a weights rollout is its meaning.
    return json.dumps(value, separators=(",", ":"))


def translated(method: Callable[..., T]) -> Callable[..., T]:
    """Turn every Redis failure into `StoreUnavailable`; `StoreError`s pass through."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


@dataclass
class Write:
    """A planned write: the commands for MULTI, its audit entry (without id), the
    environments whose config document it changes, and what the store returns."""

    result: Any
    audit: Record | None  # None: a routine state update that is not audited
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    changed_envs: list[str] = field(default_factory=list)


class Transactor:
    """Commands on one client, for keys laid out by `keys`."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    def call(self, *command: Any) -> Any:
        """One command, answered as redis-py parses it (decoded strings)."""
        return self._redis.execute_command(*command)

    def read(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Read commands in one round trip (a plain pipeline). Inside a write plan
        the keys are WATCHed already, so these reads need not be on the watching
        connection: a change after the WATCH fails the EXEC whoever reads."""
        with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()  # type: ignore[no-any-return]

    def snapshot(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Read commands in one MULTI/EXEC: one round trip, one point in time."""
        with self._redis.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()  # type: ignore[no-any-return]

    def write(self, watch: list[str], plan: Callable[[Pipeline], Write]) -> Any:
        """WATCH `watch`; let `plan` read and decide (it may WATCH more keys before
        reading them, and raises a `StoreError` to refuse); then EXEC its commands
        with the config-version INCRs, the audit entry and the PUBLISHes. Plans
        again when a watched key changed in between."""
        keys = self._keys
        with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(*watch)
                    write = plan(pipe)
                    pipe.multi()
                    for command in write.commands:
                        pipe.execute_command(*command)
                    for env in write.changed_envs:
                        pipe.incr(keys.config_version(env))
                    entry = write.audit
                    if entry is not None:
                        audit_keys = [keys.audit_seq, keys.audit, keys.audit_by_target(entry["target_key"])]
                        if entry["environment"] is not None:
                            audit_keys.append(keys.audit_by_env(entry["environment"]))
                        pipe.eval(APPEND_AUDIT, len(audit_keys), *audit_keys, dumps(entry))
                    for env in write.changed_envs:
                        pipe.publish(keys.config_channel, env)
                    pipe.execute()
                    return write.result
                except redis.WatchError as exc:
                    # redis-py also raises WatchError when the connection fails while
                    # watching, EXEC included: then the write may or may not have
                    # landed, and planning it again would misreport our own write
                    # as a conflict. Say what is known: Redis failed.
                    if isinstance(exc.__context__, (redis.ConnectionError, redis.TimeoutError)):
                        raise StoreUnavailable(f"Redis: {exc.__context__}") from exc
                    continue
        raise StoreUnavailable(f"gave up after {MAX_ATTEMPTS} attempts: the data kept changing meanwhile")

    def audit_page(self, environment: str | None, target_key: str | None, limit: int,
                   before_id: int | None) -> list[Record]:
        """Audit entries, newest first. With a filter one audit index is walked (by
        target when both are given, checking the environment here); without, the
        ids below the sequence, which has no gaps."""
        keys = self._keys
        index = (keys.audit_by_target(target_key) if target_key is not None
                 else keys.audit_by_env(environment) if environment is not None else None)
        batch = max(limit, _AUDIT_BATCH) if environment is not None and target_key is not None else limit
        upper = None if before_id is None else before_id - 1  # the highest id still wanted
        if index is None:
            top = int(self.call("GET", keys.audit_seq) or 0)
            upper = top if upper is None else min(upper, top)
        out: list[Record] = []
        while len(out) < limit and (upper is None or upper >= 1):
            if index is None:
                assert upper is not None
                ids: list[Any] = list(range(upper, max(upper - batch, 0), -1))
            else:
                ids = self.call("ZREVRANGEBYSCORE", index, "+inf" if upper is None else upper, 1, "LIMIT", 0, batch)
            if not ids:
                break
            raws = self.call("HMGET", keys.audit, *ids)
            if not any(raws):
                break  # the entries were trimmed by hand: nothing older is left
            for raw in raws:
                entry = None if raw is None else json.loads(raw)
                if entry is not None and (environment is None or entry["environment"] == environment):
                    out.append(entry)
            upper = int(ids[-1]) - 1
        return out[:limit]
