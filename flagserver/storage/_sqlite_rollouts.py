"""Rollout plans, their decisions and the controller's lease in SQLite: the
`RolloutStore` protocol of `rollouts.py` for `SQLiteStore`.

A rollout row is versioned like a flag (`UPDATE ... WHERE version = ?` under
`BEGIN IMMEDIATE`) and audited in the same transaction. Decisions are numbered
per rollout (`seq`), the newest highest; the oldest beyond `DECISIONS_KEPT` are
deleted as new ones come. A lease is one row taken, renewed or refused in one
write transaction, so two processes never both hold it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time

from ._sqlite_base import SQLiteBase
from ._sqlite_schema import dump
from .base import AlreadyExists, NotFound, Record, VersionConflict
from .rollouts import DECISIONS_KEPT

_ROLLOUT_SELECT = "SELECT environment, flag, plan, state, version, updated_at FROM rollouts"


def _rollout_record(row: sqlite3.Row) -> Record:
    return {
        "environment": row["environment"],
        "flag": row["flag"],
        "plan": json.loads(row["plan"]),
        "state": json.loads(row["state"]),
        "version": row["version"],
        "updated_at": row["updated_at"],
    }


class SQLiteRollouts(SQLiteBase):
    """The rollout methods of `SQLiteStore`."""

    @staticmethod
    def _rollout(conn: sqlite3.Connection, env: str, flag: str) -> Record | None:
        row = conn.execute(_ROLLOUT_SELECT + " WHERE environment = ? AND flag = ?", (env, flag)).fetchone()
        return None if row is None else _rollout_record(row)

    def get_rollout(self, env: str, flag: str) -> Record | None:
        """None when the flag has no rollout. Raises `NotFound` (environment, flag)."""
        with self._pool.transaction(write=False) as conn:
            self._require_flag(conn, env, flag)
            return self._rollout(conn, env, flag)

    def put_rollout(self, env: str, flag: str, plan: Record, state: Record, *,
                    expected_version: int | None, actor: str, action: str | None) -> Record:
        """Create (`expected_version` None) or replace at `expected_version`, with
        its audit entry. Raises `NotFound` (environment, flag; rollout when
        replacing none), `AlreadyExists` or `VersionConflict`, writing nothing."""
        now = time.time()
        plan_json, state_json = dump(plan), dump(state)
        with self._pool.transaction(write=True) as conn:
            self._require_flag(conn, env, flag)
            before = self._rollout(conn, env, flag)
            if expected_version is None:
                if before is not None:
                    raise AlreadyExists("rollout", flag)
                conn.execute(
                    "INSERT INTO rollouts (environment, flag, plan, state, version, updated_at)"
                    " VALUES (?, ?, ?, ?, 1, ?)",
                    (env, flag, plan_json, state_json, now),
                )
            else:
                if before is None:
                    raise NotFound("rollout", flag)
                cursor = conn.execute(
                    "UPDATE rollouts SET plan = ?, state = ?, version = version + 1, updated_at = ?"
                    " WHERE environment = ? AND flag = ? AND version = ?",
                    (plan_json, state_json, now, env, flag, expected_version),
                )
                if cursor.rowcount != 1:
                    raise VersionConflict("rollout", flag, before["version"])
            after = self._rollout(conn, env, flag)
            if action is not None:
                self._audit(conn, actor, action, env, ("rollout", flag), before, after)
        assert after is not None
        return after

    def list_rollouts(self, env: str | None = None) -> list[Record]:
        """Sorted by (environment, flag). Raises `NotFound` for an unknown `env`."""
        with self._pool.transaction(write=False) as conn:
            if env is None:
                rows = conn.execute(_ROLLOUT_SELECT + " ORDER BY environment, flag").fetchall()
            else:
                self._require_env(conn, env)
                rows = conn.execute(_ROLLOUT_SELECT + " WHERE environment = ? ORDER BY flag", (env,)).fetchall()
        return [_rollout_record(row) for row in rows]

    def record_decision(self, env: str, flag: str, decision: Record, *, replace_last: bool) -> None:
        """Append `decision` (or overwrite the newest, `replace_last`), keeping the
        newest `DECISIONS_KEPT`. Raises `NotFound` (environment, flag, rollout)."""
        text = dump(decision)
        with self._pool.transaction(write=True) as conn:
            self._require_flag(conn, env, flag)
            if self._rollout(conn, env, flag) is None:
                raise NotFound("rollout", flag)
            last = conn.execute(
                "SELECT MAX(seq) FROM decisions WHERE environment = ? AND flag = ?", (env, flag)
            ).fetchone()[0]
            if replace_last and last is not None:
                conn.execute(
                    "UPDATE decisions SET decision = ? WHERE environment = ? AND flag = ? AND seq = ?",
                    (text, env, flag, last),
                )
                return
            seq = (last or 0) + 1
            conn.execute(
                "INSERT INTO decisions (environment, flag, seq, decision) VALUES (?, ?, ?, ?)", (env, flag, seq, text)
            )
            conn.execute(
                "DELETE FROM decisions WHERE environment = ? AND flag = ? AND seq <= ?",
                (env, flag, seq - DECISIONS_KEPT),
            )

    def list_decisions(self, env: str, flag: str, limit: int = 100) -> list[Record]:
        """Newest first, at most `limit`. Raises `NotFound` (environment, flag)."""
        with self._pool.transaction(write=False) as conn:
            self._require_flag(conn, env, flag)
            rows = conn.execute(
                "SELECT decision FROM decisions WHERE environment = ? AND flag = ? ORDER BY seq DESC LIMIT ?",
                (env, flag, max(limit, 0)),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def acquire_lease(self, name: str, holder: str, ttl_seconds: float, *, now: float | None = None) -> bool:
        """True when `holder` now holds `name` until `now + ttl_seconds`; False,
        changing nothing, while another holder's lease runs. Raises ValueError for
        a `ttl_seconds` that is not positive and finite."""
        if not (math.isfinite(ttl_seconds) and ttl_seconds > 0):
            raise ValueError(f"a lease needs a positive, finite ttl (got {ttl_seconds!r})")
        now = time.time() if now is None else now
        with self._pool.transaction(write=True) as conn:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row["holder"] != holder and row["expires_at"] > now:
                return False
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (name, holder, now + ttl_seconds),
            )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Delete the lease if `holder` holds it (expired or not); otherwise nothing."""
        with self._pool.transaction(write=True) as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
