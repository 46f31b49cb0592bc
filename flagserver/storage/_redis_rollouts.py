"""Rollout plans, their decisions and the controller's lease in Redis: the
`RolloutStore` protocol of `rollouts.py` for `RedisStore`.

A rollout is one field of the hash `rollouts:<env>`, written like a flag: an
optimistic transaction (WATCH, check the version, MULTI/EXEC) with its audit
entry. Its decisions are a list, newest first, trimmed to `DECISIONS_KEPT`, each
append one Lua script that also checks the rollout still exists. A lease is one
string `<expires_at> <holder>`, taken, renewed and released by Lua scripts that
compare the holder, so two processes never both hold it.
"""

from __future__ import annotations

import json
import math
import time

from redis.client import Pipeline

from ._redis_base import RedisBase
from ._redis_scripts import ACQUIRE_LEASE, RECORD_DECISION, RELEASE_LEASE
from ._redis_tx import Write, dumps, translated
from .base import AlreadyExists, NotFound, Record, VersionConflict
from .rollouts import DECISIONS_KEPT

# A lease key outlives its lease by this long (milliseconds): the value decides
# who holds it, by the caller's clock; Redis's TTL only clears abandoned leases.
LEASE_KEY_SLACK_MS = 60_000


def _rollout(env: str, flag: str, raw: str | None) -> Record | None:
    return None if raw is None else {"environment": env, "flag": flag, **json.loads(raw)}


class RedisRollouts(RedisBase):
    """The rollout methods of `RedisStore`."""

    def _require_flag(self, env_exists: bool, flag_exists: bool, env: str, flag: str) -> None:
        self._require_env(env_exists, env)
        if not flag_exists:
            raise NotFound("flag", flag)

    @translated
    def get_rollout(self, env: str, flag: str) -> Record | None:
        """None when the flag has no rollout. Raises `NotFound` (environment, flag)."""
        keys = self._keys
        env_exists, flag_exists, raw = self._tx.snapshot(
            ("HEXISTS", keys.environments, env), ("HEXISTS", keys.flags(env), flag), ("HGET", keys.rollouts(env), flag))
        self._require_flag(env_exists, flag_exists, env, flag)
        return _rollout(env, flag, raw)

    @translated
    def put_rollout(self, env: str, flag: str, plan: Record, state: Record, *,
                    expected_version: int | None, actor: str, action: str | None) -> Record:
        """Create (`expected_version` None) or replace at `expected_version`, with
        its audit entry, in one transaction. Raises `NotFound` (environment, flag;
        rollout when replacing none), `AlreadyExists` or `VersionConflict`,
        writing nothing. Bumps no config version."""
        keys = self._keys
        plan_copy, state_copy = json.loads(dumps(plan)), json.loads(dumps(state))

        def write_plan(pipe: Pipeline) -> Write:
            env_exists, flag_exists, raw = self._tx.read(
                ("HEXISTS", keys.environments, env), ("HEXISTS", keys.flags(env), flag),
                ("HGET", keys.rollouts(env), flag))
            self._require_flag(env_exists, flag_exists, env, flag)
            before = _rollout(env, flag, raw)
            if expected_version is None and before is not None:
                raise AlreadyExists("rollout", flag)
            if expected_version is not None:
                if before is None:
                    raise NotFound("rollout", flag)
                if before["version"] != expected_version:
                    raise VersionConflict("rollout", flag, before["version"])
            stored = {"plan": plan_copy, "state": state_copy,
                      "version": 1 if before is None else before["version"] + 1, "updated_at": self._clock()}
            after = {"environment": env, "flag": flag, **stored}
            command = ("HSET", keys.rollouts(env), flag, dumps(stored))
            audit = self._audit(actor, action, env, "rollout", flag, before, after) if action is not None else None
            return Write(after, audit, [command])

        # flagdefs: a delete of the flag (which drops its rollouts) makes this plan again.
        return self._tx.write(  # type: ignore[no-any-return]
            [keys.environments, keys.flag_globals, keys.rollouts(env)], write_plan)

    @translated
    def list_rollouts(self, env: str | None = None) -> list[Record]:
        """Sorted by (environment, flag). Raises `NotFound` for an unknown `env`."""
        keys = self._keys
        if env is not None:
            exists, raw = self._tx.snapshot(("HEXISTS", keys.environments, env), ("HGETALL", keys.rollouts(env)))
            self._require_env(exists, env)
            per_env: dict[str, dict[str, str]] = {env: raw}
        else:
            envs = sorted(self._tx.call("HKEYS", keys.environments))
            per_env = dict(zip(envs, self._tx.snapshot(*[("HGETALL", keys.rollouts(e)) for e in envs]), strict=True))
        return [{"environment": e, "flag": flag, **json.loads(raw[flag])}
                for e, raw in sorted(per_env.items()) for flag in sorted(raw)]

    @translated
    def record_decision(self, env: str, flag: str, decision: Record, *, replace_last: bool) -> None:
        """Append `decision` (or overwrite the newest, `replace_last`), keeping the
        newest `DECISIONS_KEPT`: one atomic script. Raises `NotFound`
        (environment, flag, rollout)."""
        keys = self._keys
        result = self._run(
            RECORD_DECISION,
            [keys.environments, keys.flags(env), keys.rollouts(env), keys.decisions(env, flag)],
            [env, flag, dumps(decision), "1" if replace_last else "0", DECISIONS_KEPT])
        if int(result) < 0:
            kind, key = {-1: ("environment", env), -2: ("flag", flag), -3: ("rollout", flag)}[int(result)]
            raise NotFound(kind, key)

    @translated
    def list_decisions(self, env: str, flag: str, limit: int = 100) -> list[Record]:
        """Newest first, at most `limit`, in one round trip. Raises `NotFound`
        (environment, flag)."""
        keys = self._keys
        env_exists, flag_exists, raws = self._tx.snapshot(
            ("HEXISTS", keys.environments, env), ("HEXISTS", keys.flags(env), flag),
            ("LRANGE", keys.decisions(env, flag), 0, max(limit, 0) - 1))
        self._require_flag(env_exists, flag_exists, env, flag)
        return [json.loads(raw) for raw in raws] if limit > 0 else []

    @translated
    def acquire_lease(self, name: str, holder: str, ttl_seconds: float, *, now: float | None = None) -> bool:
        """True when `holder` now holds `name` until `now + ttl_seconds`; False,
        changing nothing, while another holder's lease runs. One atomic script.
        Raises ValueError for a `ttl_seconds` that is not positive and finite."""
        if not (math.isfinite(ttl_seconds) and ttl_seconds > 0):
            raise ValueError(f"a lease needs a positive, finite ttl (got {ttl_seconds!r})")
        now = time.time() if now is None else float(now)
        key_ttl_ms = math.ceil(ttl_seconds * 1000) + LEASE_KEY_SLACK_MS
        taken = self._run(ACQUIRE_LEASE, [self._keys.lease(name)], [holder, repr(now), repr(now + ttl_seconds),
                                                                    key_ttl_ms])
        return int(taken) == 1

    @translated
    def release_lease(self, name: str, holder: str) -> None:
        """Delete the lease if `holder` holds it (expired or not); otherwise nothing."""
        self._run(RELEASE_LEASE, [self._keys.lease(name)], [holder])
