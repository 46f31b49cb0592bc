"""The Redis backend: several server processes (or machines) share one truth.

Every write is one optimistic transaction: WATCH the keys the write depends on,
read them, decide, then MULTI/EXEC the change together with its audit entry, the
INCR of each touched environment's config version and a PUBLISH on the config
channel. A concurrent change to a watched key makes EXEC fail, and the write is
planned again from fresh reads; so version checks, "create only if absent" and
reference checks hold across processes. docs/redis.md describes the key layout.
Events and stages (`_redis_events`) and rollouts (`_redis_rollouts`) are mixins
sharing the client and the steps of `_redis_base`; the flag writes here keep
every flag's stage list in step in their own transactions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.commands.core import Script
from redis.retry import Retry

from . import _records as records
from ._redis_events import RedisEvents, first_stage, new_stage_ids, next_stage, stage_keys
from ._redis_keys import SCHEMA_VERSION, Keys
from ._redis_rollouts import RedisRollouts
from ._redis_tx import Transactor, Write, dumps, translated
from .base import (
    GLOBAL_FLAG_FIELDS,
    AlreadyExists,
    InvalidReference,
    NotFound,
    Record,
    StoreError,
    VersionConflict,
)
from .documents import build_config_document

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "flagserver:"


def _record(key: str, raw: str) -> Record:
    return {"key": key, **json.loads(raw)}


def _flag(key: str, global_raw: str | None, state_raw: str | None) -> Record | None:
    if global_raw is None or state_raw is None:
        return None
    return {"key": key, **json.loads(global_raw), **json.loads(state_raw)}


class RedisStore(RedisEvents, RedisRollouts):
    """A `Store`, an `EventStore` and a `RolloutStore` in one Redis database,
    every key under `prefix` (docs/redis.md, docs/storage-events.md).

    Methods raise the errors of `base.py`; any failure of Redis itself (refused,
    timed out, loading, read-only replica, out of memory) is `StoreUnavailable`.
    The client reconnects by itself: the same object works again once Redis is back.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] = time.time) -> None:
        """`client` must decode responses (`decode_responses=True`)."""
        self._redis = client
        self._keys = Keys(prefix)
        self._tx = Transactor(client, self._keys)
        self._clock = clock
        self._scripts: dict[str, Script] = {}

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

    @translated
    def initialize(self) -> None:
        """Record the key layout's version, or move a prefix of layout 1 to this one
        (its flags get their stage 1); raise `StoreError` for a prefix that a newer
        layout wrote. Warns when Redis may evict keys. Idempotent."""
        self._redis.set(self._keys.schema, SCHEMA_VERSION, nx=True)
        found = int(self._tx.call("GET", self._keys.schema) or SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            raise StoreError(f"Redis prefix {self.prefix!r} holds key layout {found}; this server knows "
                             f"{SCHEMA_VERSION}: upgrade the server")
        if found < SCHEMA_VERSION:
            self._migrate_to_stages()
        try:
            policy = self._tx.call("CONFIG", "GET", "maxmemory-policy").get("maxmemory-policy", "noeviction")
        except redis.ResponseError:  # managed Redis services often refuse CONFIG
            return
        if policy != "noeviction":
            log.warning("Redis maxmemory-policy is %s: when memory runs out Redis may delete flags, "
                        "segments or tokens; set it to noeviction (docs/redis.md)", policy)

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._redis.close()

    @translated
    def ping(self) -> None:
        self._redis.ping()

    # environments

    @translated
    def list_environments(self) -> list[Record]:
        """Sorted by key."""
        raw = self._tx.call("HGETALL", self._keys.environments)
        return [_record(key, value) for key, value in sorted(raw.items())]

    @translated
    def get_environment(self, key: str) -> Record | None:
        raw = self._tx.call("HGET", self._keys.environments, key)
        return None if raw is None else _record(key, raw)

    @translated
    def create_environment(self, key: str, name: str, *, actor: str) -> Record:
        """Also creates every existing flag there, disabled and at 0% (version 1).
        Raises `AlreadyExists`."""
        keys = self._keys

        def plan(pipe: Pipeline) -> Write:
            exists, globals_, envs = self._tx.read(
                ("HEXISTS", keys.environments, key), ("HGETALL", keys.flag_globals), ("HKEYS", keys.environments))
            if exists:
                raise AlreadyExists("environment", key)
            # A weights rollout stays a weights rollout: look at the flags somewhere.
            like: dict[str, Any] = {}
            if envs and globals_:
                pipe.watch(keys.flags(min(envs)))
                like = self._tx.call("HGETALL", keys.flags(min(envs)))
            now = self._clock()
            record = {"key": key, "name": name, "created_at": now}
            commands: list[tuple[Any, ...]] = [
                ("HSET", keys.environments, key, dumps({"name": name, "created_at": now})),
                ("SET", keys.config_version(key), 0),  # the INCR of this write makes it 1
            ]
            states, stages = [], []
            stage_ids = new_stage_ids(self._tx, keys, len(globals_))
            for (flag_key, raw), stage_id in zip(sorted(globals_.items()), stage_ids, strict=True):
                rollout = json.loads(like[flag_key])["rollout"] if flag_key in like else 0
                state = records.placeholder_state(json.loads(raw)["variants"], rollout)
                states += [flag_key, dumps({**state, "version": 1, "updated_at": now})]
                stages += [flag_key, first_stage(stage_id, now, state)]
            if states:
                commands += [("HSET", keys.flags(key), *states), ("HSET", keys.stages(key), *stages)]
            audit = self._audit(actor, "create", key, "environment", key, None, record)
            return Write(record, audit, commands, [key])

        # The flag definitions are watched: a flag created meanwhile must reach the new environment.
        return self._tx.write([keys.environments, keys.flag_globals], plan)  # type: ignore[no-any-return]

    # flags

    @translated
    def list_flags(self, env: str) -> list[Record]:
        """Sorted by key, in one round trip. Raises `NotFound` for an unknown environment."""
        keys = self._keys
        exists, globals_, states = self._tx.snapshot(
            ("HEXISTS", keys.environments, env), ("HGETALL", keys.flag_globals), ("HGETALL", keys.flags(env)))
        self._require_env(exists, env)
        flags = (_flag(k, globals_.get(k), states[k]) for k in sorted(states))
        return [f for f in flags if f is not None]

    @translated
    def get_flag(self, env: str, key: str) -> Record | None:
        """None for an unknown flag; raises `NotFound` for an unknown environment."""
        keys = self._keys
        exists, global_raw, state_raw = self._tx.snapshot(
            ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key), ("HGET", keys.flags(env), key))
        self._require_env(exists, env)
        return _flag(key, global_raw, state_raw)

    @translated
    def create_flag(self, env: str, flag: Record, *, actor: str) -> Record:
        """Creates the flag in every environment. Raises `NotFound` (environment),
        `AlreadyExists`, or `InvalidReference` (a rule naming a segment `env` lacks
        or a variant the flag lacks)."""
        keys = self._keys
        key = flag["key"]
        glob = records.flag_globals(key, flag)
        state = records.flag_state(flag)

        def plan(pipe: Pipeline) -> Write:
            env_exists, flag_exists, segments, envs = self._tx.read(
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
            commands: list[tuple[Any, ...]] = [("HSET", keys.flag_globals, key, dumps(glob))]
            for other, stage_id in zip(envs, new_stage_ids(self._tx, keys, len(envs)), strict=True):
                there = here if other == env else elsewhere
                commands += [("HSET", keys.flags(other), key, dumps(there)),
                             ("HSET", keys.stages(other), key, first_stage(stage_id, now, there))]
            after = {"key": key, **glob, **here}
            return Write(after, self._audit(actor, "create", env, "flag", key, None, after), commands, envs)

        watch = [keys.environments, keys.flag_globals, keys.segments(env)]
        return self._tx.write(watch, plan)  # type: ignore[no-any-return]

    @translated
    def update_flag(self, env: str, key: str, flag: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `flag` replace the stored ones, absent ones are kept; a
        changed global field bumps the flag's version in every environment. Raises
        `NotFound`, `VersionConflict`, or `InvalidReference` (a rule naming a missing
        segment or variant; field `variants` when removing a variant that another
        environment still uses)."""
        keys = self._keys

        def plan(pipe: Pipeline) -> Write:
            env_exists, global_raw, state_raw, segments, envs, stages_raw = self._tx.read(
                ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key),
                ("HGET", keys.flags(env), key), ("HKEYS", keys.segments(env)), ("HKEYS", keys.environments),
                ("HGET", keys.stages(env), key))
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
            commands: list[tuple[Any, ...]] = [("HSET", keys.flags(env), key, dumps(here))]
            if records.starts_stage(before, state):
                (stage_id,) = new_stage_ids(self._tx, keys, 1)
                stages = next_stage(stages_raw, stage_id, here["version"], now, state)
                commands.append(("HSET", keys.stages(env), key, stages))
            changed = [env]
            if any(glob[name] != before[name] for name in GLOBAL_FLAG_FIELDS):
                # The flag changes in every environment: rewrite its state there
                # too, watching those hashes first so no concurrent write is lost.
                others = sorted(set(envs) - {env})
                if others:
                    pipe.watch(*[keys.flags(other) for other in others])
                    raws = self._tx.read(*[("HGET", keys.flags(other), key) for other in others])
                    for other, raw in zip(others, raws, strict=True):
                        if raw is None:
                            continue
                        there = json.loads(raw)
                        if glob["variants"] != before["variants"]:
                            records.check_variants(other, there["rules"], there["rollout"], glob["variants"],
                                                   field="variants")
                        there.update(version=there["version"] + 1, updated_at=now)
                        commands.append(("HSET", keys.flags(other), key, dumps(there)))
                        changed.append(other)
                commands.append(("HSET", keys.flag_globals, key, dumps(glob)))
            after = {"key": key, **glob, **here}
            return Write(after, self._audit(actor, "update", env, "flag", key, before, after), commands, changed)

        watch = [keys.environments, keys.flag_globals, keys.flags(env), keys.segments(env), keys.stages(env)]
        return self._tx.write(watch, plan)  # type: ignore[no-any-return]

    @translated
    def delete_flag(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Deletes from every environment, with its stages, their counters, its
        rollouts and their decisions; `expected_version` (if not None) is the
        version in `env`. Raises `NotFound` or `VersionConflict`. Users' entries
        for the deleted stages in `exposed:<env>` go when those users are next
        counted (docs/storage-events.md)."""
        keys = self._keys

        def plan(pipe: Pipeline) -> Write:
            env_exists, global_raw, state_raw, envs = self._tx.read(
                ("HEXISTS", keys.environments, env), ("HGET", keys.flag_globals, key),
                ("HGET", keys.flags(env), key), ("HKEYS", keys.environments))
            self._require_env(env_exists, env)
            before = _flag(key, global_raw, state_raw)
            if before is None:
                raise NotFound("flag", key)
            if expected_version is not None and before["version"] != expected_version:
                raise VersionConflict("flag", key, before["version"])
            commands: list[tuple[Any, ...]] = [("HDEL", keys.flag_globals, key)]
            # Only flag writes change stage lists, but not all of them watch this
            # environment's flags: watch the lists before reading which stages to drop.
            pipe.watch(*[keys.stages(other) for other in envs])
            counters = stage_keys(keys, self._tx.read(*[("HGET", keys.stages(other), key) for other in envs]))
            for other in envs:
                commands += [("HDEL", keys.flags(other), key), ("HDEL", keys.stages(other), key),
                             ("HDEL", keys.rollouts(other), key)]
            commands.append(("UNLINK", *counters, *[keys.decisions(other, key) for other in envs]))
            return Write(None, self._audit(actor, "delete", env, "flag", key, before, None), commands, envs)

        self._tx.write([keys.environments, keys.flag_globals, keys.flags(env)], plan)

    # segments

    @translated
    def list_segments(self, env: str) -> list[Record]:
        """Sorted by key. Raises `NotFound` for an unknown environment."""
        exists, raw = self._tx.snapshot(("HEXISTS", self._keys.environments, env),
                                     ("HGETALL", self._keys.segments(env)))
        self._require_env(exists, env)
        return [_record(key, value) for key, value in sorted(raw.items())]

    @translated
    def get_segment(self, env: str, key: str) -> Record | None:
        """None for an unknown segment; raises `NotFound` for an unknown environment."""
        exists, raw = self._tx.snapshot(("HEXISTS", self._keys.environments, env),
                                     ("HGET", self._keys.segments(env), key))
        self._require_env(exists, env)
        return None if raw is None else _record(key, raw)

    def _segment_write(self, action: str, env: str, key: str, expected_version: int | None, actor: str,
                       fields: Callable[[Record | None], Record]) -> Any:
        """Create, update or delete one segment; `fields(before)` gives the new writable fields."""
        keys = self._keys

        def plan(pipe: Pipeline) -> Write:
            env_exists, raw = self._tx.read(("HEXISTS", keys.environments, env), ("HGET", keys.segments(env), key))
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
                for flag_key, state in sorted(self._tx.call("HGETALL", keys.flags(env)).items()):
                    used = records.rules_using(json.loads(state)["rules"], key)
                    if used:
                        raise InvalidReference(
                            "key", f"segment {key!r} is used by flag {flag_key!r} (rules[{used[0]}]) in {env!r}")
                audit = self._audit(actor, "delete", env, "segment", key, before, None)
                return Write(None, audit, [("HDEL", keys.segments(env), key)], [env])
            stored = {**fields(before), "version": 1 if before is None else before["version"] + 1,
                      "updated_at": self._clock()}
            after = {"key": key, **stored}
            audit = self._audit(actor, action, env, "segment", key, before, after)
            return Write(after, audit, [("HSET", keys.segments(env), key, dumps(stored))], [env])

        watch = [keys.environments, keys.segments(env)]
        return self._tx.write(watch + [keys.flags(env)] if action == "delete" else watch, plan)

    @translated
    def create_segment(self, env: str, segment: Record, *, actor: str) -> Record:
        """Raises `NotFound` (environment) or `AlreadyExists`."""
        fields = records.segment_fields(segment)
        return self._segment_write(  # type: ignore[no-any-return]
            "create", env, segment["key"], None, actor, lambda _: fields)

    @translated
    def update_segment(self, env: str, key: str, segment: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `segment` replace the stored ones. Raises `NotFound`
        or `VersionConflict`."""
        return self._segment_write(  # type: ignore[no-any-return]
            "update", env, key, expected_version, actor, lambda before: records.segment_fields(segment, before))

    @translated
    def delete_segment(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Raises `NotFound`, `VersionConflict`, or `InvalidReference` (field `key`)
        while a flag rule in `env` names the segment."""
        self._segment_write("delete", env, key, expected_version, actor, lambda _: {})

    # the SDK's view

    @translated
    def config_version(self, env: str) -> int:
        """One GET. Raises `NotFound` for an unknown environment."""
        raw = self._tx.call("GET", self._keys.config_version(env))
        if raw is None:
            raise NotFound("environment", env)
        return int(raw)

    @translated
    def config_document(self, env: str) -> Record:
        """Read in one MULTI/EXEC, so the version matches the content. Raises `NotFound`."""
        keys = self._keys
        version, globals_, states, segments = self._tx.snapshot(
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

    @translated
    def create_token(self, token: Record, secret_hash: str, *, actor: str) -> Record:
        """Raises `AlreadyExists` (same id) or `NotFound` (an sdk token's environment).
        An admin token's environment is stored as None."""
        keys = self._keys
        token_id = token["id"]
        env = token.get("environment") if token["kind"] == "sdk" else None

        def plan(pipe: Pipeline) -> Write:
            token_exists, env_exists = self._tx.read(
                ("HEXISTS", keys.tokens, token_id), ("HEXISTS", keys.environments, env or ""))
            if token_exists:
                raise AlreadyExists("token", token_id)
            if env is not None:
                self._require_env(env_exists, env)
            stored = {"name": token["name"], "kind": token["kind"], "environment": env,
                      "created_at": self._clock()}
            record = {"id": token_id, **stored}
            command = ("HSET", keys.tokens, token_id, dumps({**stored, "secret_hash": secret_hash}))
            return Write(record, self._audit(actor, "create", env, "token", token_id, None, record), [command])

        return self._tx.write([keys.environments, keys.tokens], plan)  # type: ignore[no-any-return]

    @translated
    def find_token(self, token_id: str) -> tuple[Record, str] | None:
        raw = self._tx.call("HGET", self._keys.tokens, token_id)
        return None if raw is None else self._token(token_id, raw)

    @translated
    def list_tokens(self) -> list[Record]:
        """Sorted by id."""
        raw = self._tx.call("HGETALL", self._keys.tokens)
        return [self._token(k, v)[0] for k, v in sorted(raw.items())]

    @translated
    def delete_token(self, token_id: str, *, actor: str) -> None:
        """Raises `NotFound`."""
        keys = self._keys

        def plan(pipe: Pipeline) -> Write:
            raw = self._tx.call("HGET", keys.tokens, token_id)
            if raw is None:
                raise NotFound("token", token_id)
            before, _ = self._token(token_id, raw)
            audit = self._audit(actor, "delete", before["environment"], "token", token_id, before, None)
            return Write(None, audit, [("HDEL", keys.tokens, token_id)])

        self._tx.write([keys.tokens], plan)

    # audit

    @translated
    def list_audit(
        self,
        *,
        environment: str | None = None,
        target_key: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Record]:
        """Newest first; `before_id` pages to older entries."""
        return [] if limit <= 0 else self._tx.audit_page(environment, target_key, limit, before_id)
