"""Rollout stages, exposures and conversions in Redis: the `EventStore` protocol of
`events.py` for `RedisStore`.

A flag's stages in an environment are one JSON list in the hash `stages:<env>`,
written by the flag writes of `redis_store.py` in their own MULTI/EXEC (the
helpers below build those commands). Each stage has an id that is never reused;
its counters live in the hash `stage:<id>`. A batch of events is one Lua script
(`_redis_scripts.RECORD_EVENTS`): it notes the batch id, resolves every exposure
to its stage, keeps one field per exposed user in `exposed:<env>`, and updates
the counters, all in one atomic step that writes only after every check passed.
`stage_counts` is an HGETALL of one stage's counters. docs/storage-events.md has
the layout and what it costs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from ._redis_base import RedisBase
from ._redis_keys import SCHEMA_VERSION, Keys
from ._redis_scripts import RECORD_EVENTS
from ._redis_tx import MAX_ATTEMPTS, Transactor, dumps, translated
from .base import NotFound, Record, StoreUnavailable
from .events import ALL, BATCH_ID_RETENTION, RANDOMIZED, Conversion, Exposure, check_batch, empty_counts

_POPULATIONS = {"a": ALL, "r": RANDOMIZED}


# the stage writes of the flag writes (inside their MULTI/EXEC)


def new_stage_ids(tx: Transactor, keys: Keys, count: int) -> list[int]:
    """`count` fresh stage ids. Taken before the transaction: a write that is
    planned again or refused leaves a gap, which is harmless."""
    if count <= 0:
        return []
    last = int(tx.call("INCRBY", keys.stage_seq, count))
    return list(range(last - count + 1, last + 1))


def stage_record(stage_id: int, number: int, start_version: int, started_at: float, state: Mapping[str, Any]) -> Record:
    return {"id": stage_id, "stage": number, "start_version": start_version, "started_at": started_at,
            "rollout": state["rollout"], "enabled": bool(state["enabled"])}


def first_stage(stage_id: int, started_at: float, state: Mapping[str, Any]) -> str:
    """The stage list of a flag just created in an environment (version 1)."""
    return dumps([stage_record(stage_id, 1, 1, started_at, state)])


def next_stage(raw: str | None, stage_id: int, start_version: int, started_at: float,
               state: Mapping[str, Any]) -> str:
    """The stage list `raw` with a stage appended that starts at `start_version`."""
    stages = json.loads(raw) if raw else []
    stages.append(stage_record(stage_id, len(stages) + 1, start_version, started_at, state))
    return dumps(stages)


def stage_keys(keys: Keys, raws: Iterable[str | None]) -> list[str]:
    """The counter keys of every stage in the stage lists `raws`."""
    return [keys.stage_counts_of(stage["id"]) for raw in raws if raw for stage in json.loads(raw)]


# reading counters




def _split(field: str) -> tuple[str, str, str, str]:
    """(kind, population, arm, event) of a counter field `<kind><pop><#arm>:<arm><event>`;
    the length counts UTF-8 bytes, as Lua does."""
    rest = field[2:].encode()
    colon = rest.index(b":")
    end = colon + 1 + int(rest[:colon])
    return field[0], _POPULATIONS[field[1]], rest[colon + 1:end].decode(), rest[end:].decode()


def parse_counts(raw: Mapping[str, str]) -> dict[str, Any]:
    """`stage_counts`'s answer from the fields of a stage's counter hash."""
    out: dict[str, Any] = {}
    events: list[tuple[str, str, str, str, str]] = []
    for field, value in raw.items():
        kind, population, arm, event = _split(field)
        if kind in "xm":
            counts = out.setdefault(arm, {ALL: empty_counts(), RANDOMIZED: empty_counts()})[population]
            counts["exposed" if kind == "x" else "mixed"] = int(value)
        else:
            events.append((kind, population, arm, event, value))
    for kind, population, arm, event, value in events:
        entry = out[arm][population]["events"].setdefault(event, {"users": 0, "value_sum": 0.0})
        if kind == "u":
            entry["users"] = int(value)
        else:
            entry["value_sum"] = float(value)
    return out




def batch_events(exposures: list[Exposure], conversions: list[Conversion]) -> list[list[Any]]:
    """The events as RECORD_EVENTS takes them (before JSON): in the order they
    apply (time; exposures before conversions at equal times; else as given)."""
    timeline = [(e.at, 0, i) for i, e in enumerate(exposures)]
    timeline += [(c.at, 1, i) for i, c in enumerate(conversions)]
    timeline.sort()
    out: list[list[Any]] = []
    for at, kind, i in timeline:
        if kind == 0:
            e = exposures[i]
            out.append([0, e.flag, e.variant, e.comparable, e.flag_version, e.user, repr(float(at))])
        else:
            c = conversions[i]
            out.append([1, c.event, c.user, c.value, at])
    return out


class RedisEvents(RedisBase):
    """`record_events`, `list_stages` and `stage_counts` of `RedisStore`."""

    def _migrate_to_stages(self) -> None:
        """Layout 1 -> 2: every flag without stages gets stage 1 from version 1 with
        its current rollout, begun when that configuration was written (as the
        SQLite migration does). One transaction with the layout version, so
        several processes starting at once migrate once."""
        keys = self._keys
        with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(keys.schema, keys.environments)
                    if int(self._tx.call("GET", keys.schema) or 0) >= SCHEMA_VERSION:
                        return
                    envs = sorted(self._tx.call("HKEYS", keys.environments))
                    if envs:
                        pipe.watch(*[keys.flags(env) for env in envs], *[keys.stages(env) for env in envs])
                    found = self._tx.read(*[c for env in envs for c in (("HGETALL", keys.flags(env)),
                                                                         ("HGETALL", keys.stages(env)))])
                    missing = [(env, flag, json.loads(raw)) for env, states, stages in
                               zip(envs, found[::2], found[1::2], strict=True)
                               for flag, raw in sorted(states.items()) if flag not in stages]
                    pipe.multi()
                    for (env, flag, state), stage_id in zip(missing, new_stage_ids(self._tx, keys, len(missing)),
                                                            strict=True):
                        pipe.hset(keys.stages(env), flag, first_stage(stage_id, state["updated_at"], state))
                    pipe.set(keys.schema, SCHEMA_VERSION)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise StoreUnavailable(f"gave up migrating after {MAX_ATTEMPTS} attempts: the data kept changing")

    @translated
    def record_events(self, env: str, batch_id: str, exposures: list[Exposure],
                      conversions: list[Conversion]) -> bool:
        """Count a batch in one atomic script, all or nothing; False (counting
        nothing) when `env` has recorded `batch_id` within `BATCH_ID_RETENTION`.
        Raises `NotFound` (environment) and ValueError (an `at` or `value` that is
        not finite) before counting anything, `StoreUnavailable` when Redis fails
        (the batch then counted entirely or not at all)."""
        check_batch(exposures, conversions)
        keys = self._keys
        events = json.dumps(batch_events(exposures, conversions), ensure_ascii=False, separators=(",", ":"),
                            allow_nan=False)
        args = [env, BATCH_ID_RETENTION, keys.stage_prefix, events]
        script_keys = [keys.environments, keys.batch(env, batch_id), keys.stages(env), keys.exposed(env),
                       keys.names(env)]
        result = int(self._run(RECORD_EVENTS, script_keys, args))
        if result < 0:
            raise NotFound("environment", env)
        return result == 1

    def _stages(self, env: str, flag: str) -> list[Record]:
        keys = self._keys
        exists, state, raw = self._tx.snapshot(
            ("HEXISTS", keys.environments, env), ("HEXISTS", keys.flags(env), flag), ("HGET", keys.stages(env), flag))
        self._require_env(exists, env)
        if not state:
            raise NotFound("flag", flag)
        return json.loads(raw) if raw else []  # type: ignore[no-any-return]

    @translated
    def list_stages(self, env: str, flag: str) -> list[dict[str, Any]]:
        """Oldest first, in one round trip. Raises `NotFound` for an unknown
        environment or flag."""
        return [{name: stage[name] for name in ("stage", "start_version", "started_at", "rollout", "enabled")}
                for stage in self._stages(env, flag)]

    @translated
    def stage_counts(self, env: str, flag: str, stage: int) -> dict[str, Any]:
        """Two round trips (the stage list, then one HGETALL of counters), whatever
        the number of users. Raises `NotFound` for an unknown environment, flag or
        stage."""
        found = [s["id"] for s in self._stages(env, flag) if s["stage"] == stage]
        if not found:
            raise NotFound("stage", f"{flag} stage {stage}")
        return parse_counts(self._tx.call("HGETALL", self._keys.stage_counts_of(found[0])))
