"""Rollout stages, exposures and conversions in SQLite: the `EventStore` protocol
of `events.py` for `SQLiteStore`.

A batch is counted in one `BEGIN IMMEDIATE` transaction: its batch id is noted
(a repeated id stops there), the rows of every user it names are read once,
the events are applied in time order to those rows in memory, and the changed
rows and the counter deltas are written back, all before the commit. So a batch
counts entirely or not at all, and another process never sees half of one.

`stage_counts` reads counter rows (`arm_counts`, `event_counts`) that every
batch keeps up to date in its own transaction: its cost depends on the number of
arms and events of the stage, not on the number of users (docs/storage-events.md
has the figures). Schema: `_sqlite_schema`, migration 2.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence, Sized
from operator import itemgetter
from typing import Any

from ._sqlite_base import SQLiteBase
from ._sqlite_schema import dump
from .base import NotFound, Record
from .events import ALL, BATCH_ID_RETENTION, RANDOMIZED, Conversion, Exposure, check_batch, empty_counts

# How often one store object deletes batch ids past their retention, at most (seconds).
PRUNE_INTERVAL = 300.0
# Values per `IN (...)` list, well under SQLite's limit on host parameters.
_CHUNK = 500


def open_stage(conn: sqlite3.Connection, env: str, flag: str, start_version: int, state: Record, now: float) -> None:
    """Begin the next stage of `flag` in `env` at flag version `start_version`, with
    `state`'s rollout and enabled, inside the caller's write transaction."""
    conn.execute(
        "INSERT INTO stages (environment, flag, stage, start_version, started_at, rollout, enabled)"
        " SELECT ?, ?, COALESCE(MAX(stage), 0) + 1, ?, ?, ?, ? FROM stages WHERE environment = ? AND flag = ?",
        (env, flag, start_version, now, dump(state["rollout"]), int(bool(state["enabled"])), env, flag),
    )




def _populations(randomized: bool) -> tuple[str, ...]:
    return (ALL, RANDOMIZED) if randomized else (ALL,)


class _Seen:
    """A user's row in one stage, as this batch leaves it."""

    __slots__ = ("arm", "randomized", "mixed", "first_at", "stored", "dirty")

    def __init__(self, arm: str, randomized: bool, mixed: bool, first_at: float, stored: bool) -> None:
        self.arm = arm
        self.randomized = randomized
        self.mixed = mixed
        self.first_at = first_at
        self.stored = stored  # in the database before this batch
        self.dirty = False  # stored, and changed by this batch


class _BatchCount:
    """One batch being counted, inside the caller's write transaction."""

    def __init__(self, conn: sqlite3.Connection, env: str) -> None:
        self._conn = conn
        self._env = env
        self._stages: dict[str, tuple[list[int], list[int]]] = {}  # flag -> (start versions, stage ids)
        self._resolved: dict[tuple[str, int], int | None] = {}  # (flag, version) -> stage id
        self._seen: dict[str, dict[int, _Seen]] = {}  # user -> stage id -> row
        self._converted: set[tuple[int, str, str]] = set()  # (stage id, user, event) known to have converted
        self._new_conversions: list[tuple[int, str, str]] = []
        self._arm_deltas: defaultdict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._newly_exposed: defaultdict[tuple[int, str, bool], int] = defaultdict(int)  # (stage, arm, randomized)
        self._event_deltas: defaultdict[tuple[int, str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])

    def count(self, exposures: Sequence[Exposure], conversions: Sequence[Conversion]) -> None:
        self._load_stages({e.flag for e in exposures})
        self._load_users({e.user for e in exposures} | {c.user for c in conversions})
        timeline: list[tuple[float, int, int, Any]] = [(e.at, 0, i, e) for i, e in enumerate(exposures)]
        timeline += [(c.at, 1, i, c) for i, c in enumerate(conversions)]
        # Exposures (kind 0) before conversions (kind 1) at equal times; else as given.
        timeline.sort(key=itemgetter(0, 1, 2))
        for _, kind, _, event in timeline:
            if kind == 0:
                self._expose(event)
            else:
                self._convert(event)
        self._write()

    # reading

    def _load_stages(self, flags: set[str]) -> None:
        for chunk in _chunks(sorted(flags)):
            rows = self._conn.execute(
                f"SELECT flag, id, start_version FROM stages WHERE environment = ? AND flag IN ({_marks(chunk)})"
                " ORDER BY flag, stage",
                (self._env, *chunk),
            )
            for flag, stage_id, start_version in rows.fetchall():
                starts, ids = self._stages.setdefault(flag, ([], []))
                starts.append(start_version)
                ids.append(stage_id)

    def _load_users(self, users: set[str]) -> None:
        for chunk in _chunks(sorted(users)):
            rows = self._conn.execute(user_rows_sql(len(chunk)), (*chunk, self._env))
            for user, stage_id, arm, randomized, mixed, first_at in rows.fetchall():
                seen = _Seen(arm, bool(randomized), bool(mixed), first_at, stored=True)
                self._seen.setdefault(user, {})[stage_id] = seen

    def _stage_of(self, flag: str, version: int) -> int | None:
        """The stage holding `version`: the last to start at or below it (the first
        for older versions); None when the flag no longer exists."""
        found = self._stages.get(flag)
        if found is None:
            return None
        starts, ids = found
        return ids[max(bisect.bisect_right(starts, version) - 1, 0)]

    # applying, in time order

    def _expose(self, exposure: Exposure) -> None:
        # The hot loop of ingestion: one dict lookup per step where it can.
        version_key = (exposure.flag, exposure.flag_version)
        if version_key in self._resolved:
            stage_id = self._resolved[version_key]
        else:
            stage_id = self._resolved[version_key] = self._stage_of(*version_key)
        if stage_id is None:
            return
        rows = self._seen.get(exposure.user)
        if rows is None:
            rows = self._seen[exposure.user] = {}
        row = rows.get(stage_id)
        if row is None:
            randomized = exposure.comparable
            rows[stage_id] = _Seen(exposure.variant, randomized, False, exposure.at, stored=False)
            self._newly_exposed[stage_id, exposure.variant, randomized] += 1
            return
        changed = False
        if exposure.variant != row.arm and not row.mixed:
            row.mixed = changed = True
            for population in _populations(row.randomized):
                self._arm_deltas[stage_id, row.arm, population][1] += 1
        if exposure.at < row.first_at:
            row.first_at = exposure.at
            changed = True
        row.dirty = row.dirty or (changed and row.stored)

    def _convert(self, conversion: Conversion) -> None:
        for stage_id, row in self._seen.get(conversion.user, {}).items():
            if row.first_at > conversion.at:
                continue
            key = (stage_id, conversion.user, conversion.event)
            new = key not in self._converted and not (row.stored and self._converted_before(key))
            self._converted.add(key)
            if new:
                self._new_conversions.append(key)
            elif conversion.value is None:
                continue
            for population in _populations(row.randomized):
                delta = self._event_deltas[stage_id, row.arm, population, conversion.event]
                delta[0] += new
                if conversion.value is not None:
                    delta[1] += conversion.value

    def _converted_before(self, key: tuple[int, str, str]) -> bool:
        query = "SELECT 1 FROM conversions WHERE stage_id = ? AND user_key = ? AND event = ?"
        return self._conn.execute(query, key).fetchone() is not None

    # writing

    def _write(self) -> None:
        for (stage_id, arm, randomized), n in self._newly_exposed.items():
            for population in _populations(randomized):
                self._arm_deltas[stage_id, arm, population][0] += n
        new_rows = []
        changed_rows = []
        for user, rows in self._seen.items():
            for stage_id, row in rows.items():
                if not row.stored:
                    new_rows.append((stage_id, user, row.arm, int(row.randomized), int(row.mixed), row.first_at))
                elif row.dirty:
                    changed_rows.append((int(row.mixed), row.first_at, stage_id, user))
        new_rows.sort(key=itemgetter(0, 1))  # in key order: fewer pages touched
        conn = self._conn
        conn.executemany(
            "INSERT INTO exposures (stage_id, user_key, arm, randomized, mixed, first_at) VALUES (?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        conn.executemany("UPDATE exposures SET mixed = ?, first_at = ? WHERE stage_id = ? AND user_key = ?",
                         changed_rows)
        conn.executemany("INSERT INTO conversions (stage_id, user_key, event) VALUES (?, ?, ?)",
                         sorted(self._new_conversions))
        conn.executemany(
            "INSERT INTO arm_counts (stage_id, arm, population, exposed, mixed) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (stage_id, arm, population)"
            " DO UPDATE SET exposed = exposed + excluded.exposed, mixed = mixed + excluded.mixed",
            [(*key, exposed, mixed) for key, (exposed, mixed) in self._arm_deltas.items()],
        )
        conn.executemany(
            "INSERT INTO event_counts (stage_id, arm, population, event, users, value_sum) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (stage_id, arm, population, event)"
            " DO UPDATE SET users = users + excluded.users, value_sum = value_sum + excluded.value_sum",
            [(*key, int(users), value_sum) for key, (users, value_sum) in self._event_deltas.items()],
        )


def user_rows_sql(n_users: int) -> str:
    """The exposure rows of `n_users` users in an environment (parameters: the
    users, then the environment). CROSS JOIN keeps exposures first, found through
    `exposures_by_user`, then each row's stage by id: a probe per user, where
    stages first would probe every stage of the environment for every user."""
    return (
        "SELECT e.user_key, e.stage_id, e.arm, e.randomized, e.mixed, e.first_at"
        " FROM exposures AS e CROSS JOIN stages AS s ON s.id = e.stage_id"
        f" WHERE e.user_key IN ({_marks(range(n_users))}) AND s.environment = ?"
    )


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(items: Sized) -> str:
    return ", ".join("?" * len(items))




class SQLiteEvents(SQLiteBase):
    """`record_events`, `list_stages` and `stage_counts` of `SQLiteStore`."""

    _batches_pruned_at = 0.0  # when this store object last deleted old batch ids

    def record_events(
        self, env: str, batch_id: str, exposures: list[Exposure], conversions: list[Conversion]
    ) -> bool:
        """Count a batch, all or nothing; False (counting nothing) when `env` has
        recorded `batch_id` before. Raises `NotFound` (environment) and ValueError
        (an `at` or `value` that is not finite) before counting anything."""
        check_batch(exposures, conversions)
        now = time.time()
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO event_batches (environment, batch_id, recorded_at) VALUES (?, ?, ?)",
                (env, batch_id, now),
            )
            if cursor.rowcount != 1:
                return False
            if now - self._batches_pruned_at >= PRUNE_INTERVAL:
                # Opportunistic and cheap (an index range); ids are kept at least the retention.
                conn.execute("DELETE FROM event_batches WHERE recorded_at < ?", (now - BATCH_ID_RETENTION,))
                self._batches_pruned_at = now
            _BatchCount(conn, env).count(exposures, conversions)
        return True

    def list_stages(self, env: str, flag: str) -> list[dict[str, Any]]:
        """Oldest first. Raises `NotFound` for an unknown environment or flag."""
        with self._pool.transaction(write=False) as conn:
            self._require_flag(conn, env, flag)
            rows = conn.execute(
                "SELECT stage, start_version, started_at, rollout, enabled FROM stages"
                " WHERE environment = ? AND flag = ? ORDER BY stage",
                (env, flag),
            ).fetchall()
        return [
            {
                "stage": row["stage"],
                "start_version": row["start_version"],
                "started_at": row["started_at"],
                "rollout": json.loads(row["rollout"]),
                "enabled": bool(row["enabled"]),
            }
            for row in rows
        ]

    def stage_counts(self, env: str, flag: str, stage: int) -> dict[str, Any]:
        """Two reads of counter rows (no scan of users). Raises `NotFound` for an
        unknown environment, flag or stage."""
        with self._pool.transaction(write=False) as conn:
            self._require_flag(conn, env, flag)
            found = conn.execute(
                "SELECT id FROM stages WHERE environment = ? AND flag = ? AND stage = ?", (env, flag, stage)
            ).fetchone()
            if found is None:
                raise NotFound("stage", f"{flag} stage {stage}")
            arms = conn.execute(
                "SELECT arm, population, exposed, mixed FROM arm_counts WHERE stage_id = ? ORDER BY arm",
                (found[0],),
            ).fetchall()
            events = conn.execute(
                "SELECT arm, population, event, users, value_sum FROM event_counts WHERE stage_id = ?"
                " ORDER BY arm, event",
                (found[0],),
            ).fetchall()
        out: dict[str, Any] = {}
        for arm, population, exposed, mixed in arms:
            counts = out.setdefault(arm, {ALL: empty_counts(), RANDOMIZED: empty_counts()})[population]
            counts["exposed"], counts["mixed"] = exposed, mixed
        for arm, population, event, users, value_sum in events:
            out[arm][population]["events"][event] = {"users": users, "value_sum": float(value_sum)}
        return out
