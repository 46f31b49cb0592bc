"""What the parts of the SQLite backend share: the connection pool and the steps
every operation takes inside its caller's transaction.

`SQLiteStore` is assembled from mixins (`_sqlite_events.SQLiteEvents`,
`_sqlite_rollouts.SQLiteRollouts`) that each inherit this base, so that each file
stays about one subject and all of them write through the same pool, the same
transactions and the same audit log.
"""

from __future__ import annotations

import sqlite3
import time

from ._sqlite_pool import ConnectionPool
from ._sqlite_schema import dump
from .base import NotFound, Record


class SQLiteBase:
    _pool: ConnectionPool  # set by SQLiteStore.__init__

    @staticmethod
    def _require_env(conn: sqlite3.Connection, env: str) -> None:
        if conn.execute("SELECT 1 FROM environments WHERE key = ?", (env,)).fetchone() is None:
            raise NotFound("environment", env)

    @staticmethod
    def _require_flag(conn: sqlite3.Connection, env: str, key: str) -> None:
        """`NotFound` for an unknown environment, then for an unknown flag."""
        SQLiteBase._require_env(conn, env)
        if conn.execute("SELECT 1 FROM flag_states WHERE environment = ? AND flag = ?", (env, key)).fetchone() is None:
            raise NotFound("flag", key)

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        env: str | None,
        target: tuple[str, str],
        before: Record | None,
        after: Record | None,
    ) -> None:
        """Append the audit entry of a write (`target` is (target_type, target_key))."""
        conn.execute(
            "INSERT INTO audit (at, actor, action, environment, target_type, target_key, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                actor,
                action,
                env,
                *target,
                None if before is None else dump(before),
                None if after is None else dump(after),
            ),
        )
