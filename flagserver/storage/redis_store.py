"""The Redis backend: several server processes (or machines) share one truth.

Every write is one optimistic transaction: WATCH the keys the write depends on,
read them, decide, then MULTI/EXEC the change together with its audit entry, the
INCR of each touched environment's config version and a PUBLISH on the config
channel. A concurrent change to a watched key makes EXEC fail, and the write is
planned again from fresh reads; so version checks, "create only if absent" and
reference checks hold across processes. docs/redis.md describes the key layout.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from . import _records as records
from ._redis_keys import SCHEMA_VERSION, Keys
from ._redis_scripts import APPEND_AUDIT
from .base import (
    ENV_FLAG_FIELDS,
    GLOBAL_FLAG_FIELDS,
    AlreadyExists,
    InvalidReference,
    NotFound,
    Record,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from .documents import build_config_document

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "flagserver:"
# A write that loses the race this many times in a row gives up (each lost race
# means another write succeeded, so this takes a storm of concurrent writes).
MAX_ATTEMPTS = 100
_AUDIT_BATCH = 200


def _dumps(value: Any) -> str:
    # No sort_keys: the order of a weights rollout is its meaning.
    return json.dumps(value, separators=(",", ":"))


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """Turn every Redis failure into `StoreUnavailable`; `StoreError`s pass through."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


def _record(key: str, raw: str) -> Record:
    return {"key": key, **json.loads(raw)}


def _flag(key: str, global_raw: str | None, state_raw: str | None) -> Record | None:
    if global_raw is None or state_raw is None:
        return None
    return {"key": key, **json.loads(global_raw), **json.loads(state_raw)}


def _stored_state(flag: Record) -> Record:
    return {name: flag[name] for name in (*ENV_FLAG_FIELDS, "version", "updated_at")}


@dataclass
class _Write:
    """A planned write: the commands for MULTI, its audit entry, the environments
    whose config document it changes, and what the store method returns."""

    result: Any
    audit: Record
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    changed_envs: list[str] = field(default_factory=list)


class RedisStore:
    """A `Store` in one Redis database, every key under `prefix` (docs/redis.md).

    Methods raise the errors of `base.py`; any failure of Redis itself (refused,
    timed out, loading, read-only replica, out of memory) is `StoreUnavailable`.
    The client reconnects by itself: the same object works again once Redis is back.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] = time.time) -> None:
        """`client` must decode responses (`decode_responses=True`)."""
        self._redis = client
        self._keys = Keys(prefix)
        self._clock = clock

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.time,
                 **options: Any) -> RedisStore:
        """A store on `redis://[:password@]host:port/db` (or `rediss://`, `unix://`).

        Sockets time out after 1.5 s (connect) and 2 s (reads) so that a dead
        Redis fails a request instead of hanging it; `options` (any `redis.Redis`
        argument) and the URL's query (`?socket_timeout=5`) override that.
        """
        options.setdefault("socket_connect_timeout", 1.5)
        options.setdefault("socket_timeout", 2.0)
        # One immediate retry heals a pooled connection that a Redis restart cut;
        # more would only stretch how long a request waits on a dead server.
        options.setdefault("retry", Retry(NoBackoff(), 1))
        options["decode_responses"] = True
        return cls(redis.Redis.from_url(url, **options), prefix=prefix, clock=clock)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def config_channel(self) -> str:
        """The pub/sub channel that gets an environment's key whenever its config changes."""
        return self._keys.config_channel

    # lifecycle

    @_translated
    def initialize(self) -> None:
        """Record the key layout's version; raise `StoreError` for a prefix that a
        newer layout wrote. Warns when Redis may evict keys. Idempotent; there is
        nothing else to create."""
        self._redis.set(self._keys.schema, SCHEMA_VERSION, nx=True)
        found = int(self._call("GET", self._keys.schema) or SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            raise StoreError(f"Redis prefix {self.prefix!r} holds key layout {found}; this server knows "
                             f"{SCHEMA_VERSION}: upgrade the server")
        try:
            policy = self._call("CONFIG", "GET", "maxmemory-policy").get("maxmemory-policy", "noeviction")
        except redis.ResponseError:  # managed Redis services often refuse CONFIG
            return
        if policy != "noeviction":
            log.warning("Redis maxmemory-policy is %s: when memory runs out Redis may delete flags, "
                        "segments or tokens; set it to noeviction (docs/redis.md)", policy)

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._redis.close()

    @_translated
    def ping(self) -> None:
        self._redis.ping()

    # machinery

    def _call(self, *command: Any) -> Any:
        """One command, answered as redis-py parses it (decoded strings)."""
        return self._redis.execute_command(*command)

    def _read(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run read commands in one round trip (a plain pipeline). Inside a write
        plan the keys are WATCHed already, so these reads need not be on the
        watching connection: a change after the WATCH fails the EXEC whoever reads."""
        with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()  # type: ignore[no-any-return]

    def _snapshot(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run read commands in one MULTI/EXEC: one round trip, one point in time."""
        with self._redis.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()  # type: ignore[no-any-return]

    def _write(self, watch: list[str], plan: Callable[[Pipeline], _Write]) -> Any:
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
                    audit_keys = [keys.audit_seq, keys.audit, keys.audit_by_target(entry["target_key"])]
                    if entry["environment"] is not None:
                        audit_keys.append(keys.audit_by_env(entry["environment"]))
                    pipe.eval(APPEND_AUDIT, len(audit_keys), *audit_keys, _dumps(entry))
                    for env in write.changed_envs:
                        pipe.publish(keys.config_channel, env)
                    pipe.execute()
                    return write.result
                except redis.WatchError:
                    continue
        raise StoreUnavailable(f"gave up after {MAX_ATTEMPTS} attempts: the data kept changing meanwhile")

    def _audit(self, actor: str, action: str, env: str | None, target_type: str, target_key: str,
               before: Record | None, after: Record | None) -> Record:
        return {"at": self._clock(), "actor": actor, "action": action, "environment": env,
                "target_type": target_type, "target_key": target_key, "before": before, "after": after}

    def _require_env(self, exists: bool, env: str) -> None:
        if not exists:
            raise NotFound("environment", env)

    # environments

    @_translated
    def list_environments(self) -> list[Record]:
        """Sorted by key."""
        raw = self._call("HGETALL", self._keys.environments)
        return [_record(key, value) for key, value in sorted(raw.items())]

    @_translated
    def get_environment(self, key: str) -> Record | None:
        raw = self._call("HGET", self._keys.environments, key)
        return None if raw is None else _record(key, raw)

    @_translated
    def create_environment(self, key: str, name: str, *, actor: str) -> Record:
        """Also creates every existing flag there, disabled and at 0% (version 1).
        Raises `AlreadyExists`."""
        keys = self._keys

        def plan(pipe: Pipeline) -> _Write:
            exists, globals_, envs = self._read(
                ("HEXISTS", keys.environments, key), ("HGETALL", keys.flag_globals), ("HKEYS", keys.environments))
            if exists:
                raise AlreadyExists("environment", key)
            # A weights rollout stays a weights rollout: look at the flags somewhere.
            like: dict[str, Any] = {}
            if envs and globals_:
                pipe.watch(keys.flags(min(envs)))
                like = self._call("HGETALL", keys.flags(min(envs)))
            now = self._clock()
            record = {"key": key, "name": name, "created_at": now}
            commands: list[tuple[Any, ...]] = [
                ("HSET", keys.environments, key, _dumps({"name": name, "created_at": now})),
                ("SET", keys.config_version(key), 0),  # the INCR of this write makes it 1
            ]
            states = []
            for flag_key, raw in sorted(globals_.items()):
                rollout = json.loads(like[flag_key])["rollout"] if flag_key in like else 0
                state = records.placeholder_state(json.loads(raw)["variants"], rollout)
                states += [flag_key, _dumps({**state, "version": 1, "updated_at": now})]
            if states:
                commands.append(("HSET", keys.flags(key), *states))
            audit = self._audit(actor, "create", key, "environment", key, None, record)
            return _Write(record, audit, commands, [key])

        # The flag definitions are watched: a flag created meanwhile must reach the new environment.
        return self._write([keys.environments, keys.flag_globals], plan)  # type: ignore[no-any-return]

    # flags

    @_translated
    def list_flags(self, env: str) -> list[Record]:
        """Sorted by key, in one round trip. Raises `NotFound` for an unknown environment."""
        keys = self._keys
        exists, globals_, states = self._snapshot(
            ("HEXISTS", keys.environments, env), ("HGETALL", keys.flag_globals), ("HGETALL", keys.flags(env)))
        self._require_env(exists, env)
        flags = (_flag(k, globals_.get(k), states[k]) for k in sorted(states))
        return [f for f in flags if f is not None]

    @_translated
    def get_flag(self, env: str, key: str) -> Record | None:
        """None for an unknown flag; raises `NotFound` for an unknown environment."""
        keys = self._keys
        exists, global_raw, state_raw = self._snapshot(
            ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key), ("HGET", keys.flags(env), key))
        self._require_env(exists, env)
        return _flag(key, global_raw, state_raw)

    @_translated
    def create_flag(self, env: str, flag: Record, *, actor: str) -> Record:
        """Creates the flag in every environment. Raises `NotFound` (environment),
        `AlreadyExists`, or `InvalidReference` (a rule naming a segment `env` lacks
        or a variant the flag lacks)."""
        keys = self._keys
        key = flag["key"]
        glob = records.flag_globals(key, flag)
        state = records.flag_state(flag)

        def plan(pipe: Pipeline) -> _Write:
            env_exists, flag_exists, segments, envs = self._read(
                ("HEXISTS", keys.environments, env), ("HEXISTS", keys.flag_globals, key),
                ("HKEYS", keys.segments(env)), ("HKEYS", keys.environments))
            self._require_env(env_exists, env)
            if flag_exists:
                raise AlreadyExists("flag", key)
            records.check_rule_segments(env, state["rules"], set(segments))
            records.check_variants(env, state["rules"], state["rollout"], glob["variants"])
            now = self._clock()
            here = {**state, "version": 1, "updated_at": now}
            elsewhere = {**records.placeholder_state(glob["variants"], state["rollout"]), "version": 1,
                         "updated_at": now}
            commands: list[tuple[Any, ...]] = [("HSET", keys.flag_globals, key, _dumps(glob))]
            for other in envs:
                commands.append(("HSET", keys.flags(other), key, _dumps(here if other == env else elsewhere)))
            after = {"key": key, **glob, **here}
            return _Write(after, self._audit(actor, "create", env, "flag", key, None, after), commands, envs)

        watch = [keys.environments, keys.flag_globals, keys.segments(env)]
        return self._write(watch, plan)  # type: ignore[no-any-return]

    @_translated
    def update_flag(self, env: str, key: str, flag: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `flag` replace the stored ones, absent ones are kept; a
        changed global field bumps the flag's version in every environment. Raises
        `NotFound`, `VersionConflict`, or `InvalidReference` (a rule naming a missing
        segment or variant; field `variants` when removing a variant that another
        environment still uses)."""
        keys = self._keys

        def plan(pipe: Pipeline) -> _Write:
            env_exists, global_raw, state_raw, segments, envs = self._read(
                ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key),
                ("HGET", keys.flags(env), key), ("HKEYS", keys.segments(env)), ("HKEYS", keys.environments))
            self._require_env(env_exists, env)
            before = _flag(key, global_raw, state_raw)
            if before is None:
                raise NotFound("flag", key)
            if before["version"] != expected_version:
                raise VersionConflict("flag", key, before["version"])
            glob = records.flag_globals(key, flag, before)
            state = records.flag_state(flag, before)
            records.check_rule_segments(env, state["rules"], set(segments))
            records.check_variants(env, state["rules"], state["rollout"], glob["variants"])
            now = self._clock()
            here = {**state, "version": before["version"] + 1, "updated_at": now}
            commands: list[tuple[Any, ...]] = [("HSET", keys.flags(env), key, _dumps(here))]
            changed = [env]
            if any(glob[name] != before[name] for name in GLOBAL_FLAG_FIELDS):
                # The flag changes in every environment: rewrite its state there
                # too, watching those hashes first so no concurrent write is lost.
                others = sorted(set(envs) - {env})
                if others:
                    pipe.watch(*[keys.flags(other) for other in others])
                    raws = self._read(*[("HGET", keys.flags(other), key) for other in others])
                    for other, raw in zip(others, raws, strict=True):
                        if raw is None:
                            continue
                        there = json.loads(raw)
                        if glob["variants"] != before["variants"]:
                            records.check_variants(other, there["rules"], there["rollout"], glob["variants"],
                                                   field="variants")
                        there.update(version=there["version"] + 1, updated_at=now)
                        commands.append(("HSET", keys.flags(other), key, _dumps(there)))
                        changed.append(other)
                commands.append(("HSET", keys.flag_globals, key, _dumps(glob)))
            after = {"key": key, **glob, **here}
            return _Write(after, self._audit(actor, "update", env, "flag", key, before, after), commands, changed)

        watch = [keys.environments, keys.flag_globals, keys.flags(env), keys.segments(env)]
        return self._write(watch, plan)  # type: ignore[no-any-return]

    @_translated
    def delete_flag(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Deletes from every environment; `expected_version` (if not None) is the
        version in `env`. Raises `NotFound` or `VersionConflict`."""
        keys = self._keys

        def plan(pipe: Pipeline) -> _Write:
            env_exists, global_raw, state_raw, envs = self._read(
                ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key),
                ("HGET", keys.flags(env), key), ("HKEYS", keys.environments))
            self._require_env(env_exists, env)
            before = _flag(key, global_raw, state_raw)
            if before is None:
                raise NotFound("flag", key)
            if expected_version is not None and before["version"] != expected_version:
                raise VersionConflict("flag", key, before["version"])
            commands: list[tuple[Any, ...]] = [("HDEL", keys.flag_globals, key)]
            commands += [("HDEL", keys.flags(other), key) for other in envs]
            return _Write(None, self._audit(actor, "delete", env, "flag", key, before, None), commands, envs)

        self._write([keys.environments, keys.flag_globals, keys.flags(env)], plan)

    # segments

    @_translated
    def list_segments(self, env: str) -> list[Record]:
        """Sorted by key. Raises `NotFound` for an unknown environment."""
        exists, raw = self._snapshot(("HEXISTS", self._keys.environments, env),
                                     ("HGETALL", self._keys.segments(env)))
        self._require_env(exists, env)
        return [_record(key, value) for key, value in sorted(raw.items())]

    @_translated
    def get_segment(self, env: str, key: str) -> Record | None:
        """None for an unknown segment; raises `NotFound` for an unknown environment."""
        exists, raw = self._snapshot(("HEXISTS", self._keys.environments, env),
                                     ("HGET", self._keys.segments(env), key))
        self._require_env(exists, env)
        return None if raw is None else _record(key, raw)

    def _segment_write(self, action: str, env: str, key: str, expected_version: int | None, actor: str,
                       fields: Callable[[Record | None], Record]) -> Any:
        """Create, update or delete one segment; `fields(before)` gives the new writable fields."""
        keys = self._keys

        def plan(pipe: Pipeline) -> _Write:
            env_exists, raw = self._read(("HEXISTS", keys.environments, env), ("HGET", keys.segments(env), key))
            self._require_env(env_exists, env)
            before = None if raw is None else _record(key, raw)
            if action == "create" and before is not None:
                raise AlreadyExists("segment", key)
            if action != "create" and before is None:
                raise NotFound("segment", key)
            if before is not None and expected_version is not None and before["version"] != expected_version:
                raise VersionConflict("segment", key, before["version"])
            if action == "delete":
                # The flags of `env` are watched: a rule naming the segment that
                # arrives meanwhile fails the EXEC, and the next plan sees it.
                for flag_key, state in sorted(self._call("HGETALL", keys.flags(env)).items()):
                    used = records.rules_using(json.loads(state)["rules"], key)
                    if used:
                        raise InvalidReference(
                            "key", f"segment {key!r} is used by flag {flag_key!r} (rules[{used[0]}]) in {env!r}")
                audit = self._audit(actor, "delete", env, "segment", key, before, None)
                return _Write(None, audit, [("HDEL", keys.segments(env), key)], [env])
            stored = {**fields(before), "version": 1 if before is None else before["version"] + 1,
                      "updated_at": self._clock()}
            after = {"key": key, **stored}
            audit = self._audit(actor, action, env, "segment", key, before, after)
            return _Write(after, audit, [("HSET", keys.segments(env), key, _dumps(stored))], [env])

        watch = [keys.environments, keys.segments(env)]
        return self._write(watch + [keys.flags(env)] if action == "delete" else watch, plan)

    @_translated
    def create_segment(self, env: str, segment: Record, *, actor: str) -> Record:
        """Raises `NotFound` (environment) or `AlreadyExists`."""
        fields = records.segment_fields(segment)
        return self._segment_write(  # type: ignore[no-any-return]
            "create", env, segment["key"], None, actor, lambda _: fields)

    @_translated
    def update_segment(self, env: str, key: str, segment: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `segment` replace the stored ones. Raises `NotFound`
        or `VersionConflict`."""
        return self._segment_write(  # type: ignore[no-any-return]
            "update", env, key, expected_version, actor, lambda before: records.segment_fields(segment, before))

    @_translated
    def delete_segment(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Raises `NotFound`, `VersionConflict`, or `InvalidReference` (field `key`)
        while a flag rule in `env` names the segment."""
        self._segment_write("delete", env, key, expected_version, actor, lambda _: {})

    # the SDK's view

    @_translated
    def config_version(self, env: str) -> int:
        """One GET. Raises `NotFound` for an unknown environment."""
        raw = self._call("GET", self._keys.config_version(env))
        if raw is None:
            raise NotFound("environment", env)
        return int(raw)

    @_translated
    def config_document(self, env: str) -> Record:
        """Read in one MULTI/EXEC, so the version matches the content. Raises `NotFound`."""
        keys = self._keys
        version, globals_, states, segments = self._snapshot(
            ("GET", keys.config_version(env)), ("HGETALL", keys.flag_globals), ("HGETALL", keys.flags(env)),
            ("HGETALL", keys.segments(env)))
        if version is None:
            raise NotFound("environment", env)
        flags = (_flag(k, globals_.get(k), raw) for k, raw in states.items())
        return build_config_document(env, int(version), [f for f in flags if f is not None],
                                     [_record(k, raw) for k, raw in segments.items()])

    # tokens

    @staticmethod
    def _token(token_id: str, raw: str) -> tuple[Record, str]:
        stored = json.loads(raw)
        secret_hash = stored.pop("secret_hash")
        return {"id": token_id, **stored}, secret_hash

    @_translated
    def create_token(self, token: Record, secret_hash: str, *, actor: str) -> Record:
        """Raises `AlreadyExists` (same id) or `NotFound` (an sdk token's environment).
        An admin token's environment is stored as None."""
        keys = self._keys
        token_id = token["id"]
        env = token.get("environment") if token["kind"] == "sdk" else None

        def plan(pipe: Pipeline) -> _Write:
            token_exists, env_exists = self._read(
                ("HEXISTS", keys.tokens, token_id), ("HEXISTS", keys.environments, env or ""))
            if token_exists:
                raise AlreadyExists("token", token_id)
            if env is not None:
                self._require_env(env_exists, env)
            stored = {"name": token["name"], "kind": token["kind"], "environment": env,
                      "created_at": self._clock()}
            record = {"id": token_id, **stored}
            command = ("HSET", keys.tokens, token_id, _dumps({**stored, "secret_hash": secret_hash}))
            return _Write(record, self._audit(actor, "create", env, "token", token_id, None, record), [command])

        return self._write([keys.environments, keys.tokens], plan)  # type: ignore[no-any-return]

    @_translated
    def find_token(self, token_id: str) -> tuple[Record, str] | None:
        raw = self._call("HGET", self._keys.tokens, token_id)
        return None if raw is None else self._token(token_id, raw)

    @_translated
    def list_tokens(self) -> list[Record]:
        """Sorted by id."""
        raw = self._call("HGETALL", self._keys.tokens)
        return [self._token(k, v)[0] for k, v in sorted(raw.items())]

    @_translated
    def delete_token(self, token_id: str, *, actor: str) -> None:
        """Raises `NotFound`."""
        keys = self._keys

        def plan(pipe: Pipeline) -> _Write:
            raw = self._call("HGET", keys.tokens, token_id)
            if raw is None:
                raise NotFound("token", token_id)
            before, _ = self._token(token_id, raw)
            audit = self._audit(actor, "delete", before["environment"], "token", token_id, before, None)
            return _Write(None, audit, [("HDEL", keys.tokens, token_id)])

        self._write([keys.tokens], plan)

    # audit

    @_translated
    def list_audit(
        self,
        *,
        environment: str | None = None,
        target_key: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Record]:
        """Newest first; `before_id` pages to older entries. With a filter one audit
        index is walked (by target when both are given, filtering the environment
        here); without, the ids below the sequence, which has no gaps."""
        if limit <= 0:
            return []
        keys = self._keys
        index = (keys.audit_by_target(target_key) if target_key is not None
                 else keys.audit_by_env(environment) if environment is not None else None)
        batch = max(limit, _AUDIT_BATCH) if environment is not None and target_key is not None else limit
        upper = None if before_id is None else before_id - 1  # the highest id still wanted
        if index is None:
            top = int(self._call("GET", keys.audit_seq) or 0)
            upper = top if upper is None else min(upper, top)
        out: list[Record] = []
        while len(out) < limit and (upper is None or upper >= 1):
            if index is None:
                assert upper is not None
                ids: list[Any] = list(range(upper, max(upper - batch, 0), -1))
            else:
                ids = self._redis.zrevrangebyscore(index, "+inf" if upper is None else upper, 1, start=0, num=batch)
            if not ids:
                break
            raws = self._redis.hmget(keys.audit, ids)
            if not any(raws):
                break  # the entries were trimmed by hand: nothing older is left
            for raw in raws:
                entry = None if raw is None else json.loads(raw)
                if entry is not None and (environment is None or entry["environment"] == environment):
                    out.append(entry)
            upper = int(ids[-1]) - 1
        return out[:limit]
