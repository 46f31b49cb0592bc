"""The embedded SQLite backend: one file, shared safely by threads and processes.

The file is in WAL mode, so readers never wait for the writer. Every write runs
in `BEGIN IMMEDIATE`, which takes the database's single write lock up front
(waiting up to the busy timeout), so a versioned write reads, compares and
updates with no other writer in between, in this process or any other; its
audit entry and config-version bumps commit with it. Each operation borrows its
own connection (`_sqlite_pool`); the schema and its migrations are in
`_sqlite_schema`. Events and stages (`_sqlite_events`) and rollouts
(`_sqlite_rollouts`) are mixins sharing the pool and the steps of `_sqlite_base`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from . import _records as records
from ._sqlite_events import SQLiteEvents, open_stage
from ._sqlite_pool import ConnectionPool
from ._sqlite_rollouts import SQLiteRollouts
from ._sqlite_schema import (
    FLAG_SELECT,
    MIGRATIONS,
    SEGMENT_SELECT,
    Migration,
    audit_record,
    dump,
    flag_record,
    migrate,
    segment_record,
    token_record,
)
from .base import (
    GLOBAL_FLAG_FIELDS,
    AlreadyExists,
    InvalidReference,
    NotFound,
    Record,
    VersionConflict,
)
from .documents import build_config_document

log = logging.getLogger(__name__)

_GLOBAL_COLUMNS = ", ".join(GLOBAL_FLAG_FIELDS)


def _global_values(glob: Record) -> tuple[Any, ...]:
    """`glob`'s fields in `GLOBAL_FLAG_FIELDS` order, lists as JSON."""
    return tuple(dump(glob[n]) if n in ("tags", "variants") else glob[n] for n in GLOBAL_FLAG_FIELDS)


def _segment_values(fields: Record) -> tuple[Any, ...]:
    return (
        fields["description"],
        dump(fields["included"]),
        dump(fields["excluded"]),
        dump(fields["conditions"]),
        dump(fields["percentage"]),
        fields["bucket_by"],
    )


class SQLiteStore(SQLiteEvents, SQLiteRollouts):
    """A `Store`, an `EventStore` and a `RolloutStore` in one SQLite file.
    Construction does no I/O; call `initialize()` first. Besides the errors of
    `base.py`, every method raises `StoreUnavailable` when the file stays locked
    past `busy_timeout` seconds, cannot be opened, is full or corrupt, and after
    `close()`."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self.path = path
        self._pool = ConnectionPool(path, busy_timeout=busy_timeout)
        self._migrations = tuple(migrations)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or
        `sqlite:///:memory:`, optionally with `?timeout=SECONDS` (the busy timeout).
        Raises ValueError for anything else."""
        prefix = "sqlite:///"
        if not url.startswith(prefix):
            raise ValueError(f"not an SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////absolute/path")
        path, _, query = url[len(prefix) :].partition("?")
        path = unquote(path)
        if not path:
            raise ValueError(f"SQLite URL {url!r} names no file")
        options: dict[str, Any] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name != "timeout":
                raise ValueError(f"unknown option {name!r} in SQLite URL {url!r}")
            options["busy_timeout"] = float(value)
        return cls(path, **options)

    # lifecycle

    def initialize(self) -> None:
        """Put the file in WAL mode and apply pending migrations. Idempotent, and
        safe when several processes start at once. Raises `StoreError` when the
        file's schema is newer than this code."""
        with self._pool.connection() as conn:
            if not self._pool.memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("SQLite database %s stays in %s journal mode", self.path, mode)
            migrate(conn, self._migrations)

    def close(self) -> None:
        """Idempotent; operations still running finish first."""
        self._pool.close()

    def ping(self) -> None:
        """Read the file's header; `StoreUnavailable` when it cannot be opened or is not a database."""
        with self._pool.connection() as conn:
            conn.execute("PRAGMA user_version").fetchone()

    # steps shared by the operations, all inside a caller's transaction

    @staticmethod
    def _flag(conn: sqlite3.Connection, env: str, key: str) -> Record | None:
        row = conn.execute(FLAG_SELECT + " AND f.key = ?", (env, key)).fetchone()
        return None if row is None else flag_record(row)

    @staticmethod
    def _segment(conn: sqlite3.Connection, env: str, key: str) -> Record | None:
        row = conn.execute(SEGMENT_SELECT + " AND key = ?", (env, key)).fetchone()
        return None if row is None else segment_record(row)

    @staticmethod
    def _check_rules(conn: sqlite3.Connection, env: str, state: Record, variants: list[str]) -> None:
        keys = {row[0] for row in conn.execute("SELECT key FROM segments WHERE environment = ?", (env,))}
        records.check_rule_segments(env, state["rules"], keys)
        records.check_variants(env, state["rules"], state["rollout"], variants)

    @staticmethod
    def _insert_state(conn: sqlite3.Connection, env: str, key: str, state: Record, now: float) -> None:
        """The flag's state in `env` at version 1, and its first stage."""
        conn.execute(
            "INSERT INTO flag_states (environment, flag, enabled, rules, rollout, version, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?)",
            (env, key, int(bool(state["enabled"])), dump(state["rules"]), dump(state["rollout"]), now),
        )
        open_stage(conn, env, key, 1, state, now)

    @staticmethod
    def _bump(conn: sqlite3.Connection, env: str | None) -> None:
        """Bump the config version of `env`, or of every environment when None."""
        if env is None:
            conn.execute("UPDATE environments SET config_version = config_version + 1")
        else:
            conn.execute("UPDATE environments SET config_version = config_version + 1 WHERE key = ?", (env,))

    # environments

    def list_environments(self) -> list[Record]:
        """Sorted by key."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT key, name, created_at FROM environments ORDER BY key").fetchall()
        return [dict(row) for row in rows]

    def get_environment(self, key: str) -> Record | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT key, name, created_at FROM environments WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(row)

    def create_environment(self, key: str, name: str, *, actor: str) -> Record:
        """Also creates every existing flag there, disabled and at 0% (or all weight
        on the first variant), at version 1. Raises `AlreadyExists`."""
        now = time.time()
        with self._pool.transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM environments WHERE key = ?", (key,)).fetchone() is not None:
                raise AlreadyExists("environment", key)
            conn.execute(
                "INSERT INTO environments (key, name, created_at, config_version) VALUES (?, ?, ?, 1)",
                (key, name, now),
            )
            # The new state's rollout takes the shape (number or weights) of the
            # flag's rollout in some existing environment.
            flags = conn.execute(
                "SELECT f.key, f.variants, (SELECT s.rollout FROM flag_states AS s WHERE s.flag = f.key LIMIT 1)"
                " AS rollout FROM flags AS f"
            ).fetchall()
            for row in flags:
                like = json.loads(row["rollout"]) if row["rollout"] is not None else 0
                self._insert_state(
                    conn, key, row["key"], records.placeholder_state(json.loads(row["variants"]), like), now
                )
            record = {"key": key, "name": name, "created_at": now}
            self._audit(conn, actor, "create", key, ("environment", key), None, record)
        return record

    # flags

    def list_flags(self, env: str) -> list[Record]:
        """Sorted by key. Raises `NotFound` for an unknown environment."""
        with self._pool.transaction(write=False) as conn:
            self._require_env(conn, env)
            rows = conn.execute(FLAG_SELECT + " ORDER BY f.key", (env,)).fetchall()
        return [flag_record(row) for row in rows]

    def get_flag(self, env: str, key: str) -> Record | None:
        """None for an unknown flag; raises `NotFound` for an unknown environment."""
        with self._pool.transaction(write=False) as conn:
            self._require_env(conn, env)
            return self._flag(conn, env, key)

    def create_flag(self, env: str, flag: Record, *, actor: str) -> Record:
        """Missing fields take their defaults. Raises `NotFound` (environment),
        `AlreadyExists`, or `InvalidReference` when a rule names a segment `env`
        lacks or a variant the flag lacks."""
        key = flag["key"]
        now = time.time()
        glob = records.flag_globals(key, flag)
        state = records.flag_state(flag)
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            if conn.execute("SELECT 1 FROM flags WHERE key = ?", (key,)).fetchone() is not None:
                raise AlreadyExists("flag", key)
            self._check_rules(conn, env, state, glob["variants"])
            conn.execute(
                f"INSERT INTO flags (key, {_GLOBAL_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, *_global_values(glob), now),
            )
            elsewhere = records.placeholder_state(glob["variants"], state["rollout"])
            for (other,) in conn.execute("SELECT key FROM environments").fetchall():
                self._insert_state(conn, other, key, state if other == env else elsewhere, now)
            self._bump(conn, None)
            after = self._flag(conn, env, key)
            self._audit(conn, actor, "create", env, ("flag", key), None, after)
        assert after is not None
        return after

    def update_flag(self, env: str, key: str, flag: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `flag` replace the stored ones; absent ones are kept.
        A changed global field bumps the flag's version in every environment.
        Raises `NotFound`, `VersionConflict`, or `InvalidReference` (a rule naming a
        missing segment or variant; field `variants` when another environment
        still uses a variant being removed)."""
        now = time.time()
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            before = self._flag(conn, env, key)
            if before is None:
                raise NotFound("flag", key)
            if before["version"] != expected_version:
                raise VersionConflict("flag", key, before["version"])
            glob = records.flag_globals(key, flag, before)
            state = records.flag_state(flag, before)
            self._check_rules(conn, env, state, glob["variants"])
            if glob["variants"] != before["variants"]:
                others = conn.execute(
                    "SELECT environment, rules, rollout FROM flag_states WHERE flag = ? AND environment <> ?",
                    (key, env),
                )
                for row in others.fetchall():
                    rules, rollout = json.loads(row["rules"]), json.loads(row["rollout"])
                    records.check_variants(row["environment"], rules, rollout, glob["variants"], field="variants")
            cursor = conn.execute(
                "UPDATE flag_states SET enabled = ?, rules = ?, rollout = ?, version = version + 1, updated_at = ?"
                " WHERE environment = ? AND flag = ? AND version = ?",
                (
                    int(bool(state["enabled"])),
                    dump(state["rules"]),
                    dump(state["rollout"]),
                    now,
                    env,
                    key,
                    expected_version,
                ),
            )
            if cursor.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; never write blind all the same
                raise VersionConflict("flag", key, before["version"])
            if records.starts_stage(before, state):
                open_stage(conn, env, key, expected_version + 1, state, now)
            global_changed = any(glob[name] != before[name] for name in GLOBAL_FLAG_FIELDS)
            if global_changed:
                assignments = ", ".join(f"{name} = ?" for name in GLOBAL_FLAG_FIELDS)
                conn.execute(f"UPDATE flags SET {assignments} WHERE key = ?", (*_global_values(glob), key))
                conn.execute(
                    "UPDATE flag_states SET version = version + 1, updated_at = ? WHERE flag = ? AND environment <> ?",
                    (now, key, env),
                )
            self._bump(conn, None if global_changed else env)
            after = self._flag(conn, env, key)
            self._audit(conn, actor, "update", env, ("flag", key), before, after)
        assert after is not None
        return after

    def delete_flag(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Delete from every environment, with its stages, counts, rollouts and
        decisions (the schema's cascades); `expected_version`, unless None, is
        compared with the version in `env`. Raises `NotFound` or `VersionConflict`."""
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            before = self._flag(conn, env, key)
            if before is None:
                raise NotFound("flag", key)
            if expected_version is not None and before["version"] != expected_version:
                raise VersionConflict("flag", key, before["version"])
            conn.execute("DELETE FROM flag_states WHERE flag = ?", (key,))
            conn.execute("DELETE FROM flags WHERE key = ?", (key,))
            self._bump(conn, None)
            self._audit(conn, actor, "delete", env, ("flag", key), before, None)

    # segments

    def list_segments(self, env: str) -> list[Record]:
        """Sorted by key. Raises `NotFound` for an unknown environment."""
        with self._pool.transaction(write=False) as conn:
            self._require_env(conn, env)
            rows = conn.execute(SEGMENT_SELECT + " ORDER BY key", (env,)).fetchall()
        return [segment_record(row) for row in rows]

    def get_segment(self, env: str, key: str) -> Record | None:
        """None for an unknown segment; raises `NotFound` for an unknown environment."""
        with self._pool.transaction(write=False) as conn:
            self._require_env(conn, env)
            return self._segment(conn, env, key)

    def create_segment(self, env: str, segment: Record, *, actor: str) -> Record:
        """Missing fields take their defaults. Raises `NotFound` (environment) or
        `AlreadyExists`."""
        key = segment["key"]
        fields = records.segment_fields(segment)
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            if self._segment(conn, env, key) is not None:
                raise AlreadyExists("segment", key)
            conn.execute(
                "INSERT INTO segments (environment, key, description, included, excluded, conditions, percentage,"
                " bucket_by, version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (env, key, *_segment_values(fields), time.time()),
            )
            self._bump(conn, env)
            after = self._segment(conn, env, key)
            self._audit(conn, actor, "create", env, ("segment", key), None, after)
        assert after is not None
        return after

    def update_segment(self, env: str, key: str, segment: Record, *, expected_version: int, actor: str) -> Record:
        """Fields present in `segment` replace the stored ones; absent ones are
        kept. Raises `NotFound` or `VersionConflict`."""
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            before = self._segment(conn, env, key)
            if before is None:
                raise NotFound("segment", key)
            if before["version"] != expected_version:
                raise VersionConflict("segment", key, before["version"])
            fields = records.segment_fields(segment, before)
            cursor = conn.execute(
                "UPDATE segments SET description = ?, included = ?, excluded = ?, conditions = ?, percentage = ?,"
                " bucket_by = ?, version = version + 1, updated_at = ? WHERE environment = ? AND key = ?"
                " AND version = ?",
                (*_segment_values(fields), time.time(), env, key, expected_version),
            )
            if cursor.rowcount != 1:  # as in update_flag
                raise VersionConflict("segment", key, before["version"])
            self._bump(conn, env)
            after = self._segment(conn, env, key)
            self._audit(conn, actor, "update", env, ("segment", key), before, after)
        assert after is not None
        return after

    def delete_segment(self, env: str, key: str, *, expected_version: int | None, actor: str) -> None:
        """Raises `NotFound`, `VersionConflict`, or `InvalidReference` (field `key`)
        while a flag rule in `env` names the segment."""
        with self._pool.transaction(write=True) as conn:
            self._require_env(conn, env)
            before = self._segment(conn, env, key)
            if before is None:
                raise NotFound("segment", key)
            if expected_version is not None and before["version"] != expected_version:
                raise VersionConflict("segment", key, before["version"])
            rows = conn.execute("SELECT flag, rules FROM flag_states WHERE environment = ? ORDER BY flag", (env,))
            for row in rows.fetchall():
                used = records.rules_using(json.loads(row["rules"]), key)
                if used:
                    raise InvalidReference(
                        "key", f"segment {key!r} is used by flag {row['flag']!r} (rules[{used[0]}]) in {env!r}"
                    )
            conn.execute("DELETE FROM segments WHERE environment = ? AND key = ?", (env, key))
            self._bump(conn, env)
            self._audit(conn, actor, "delete", env, ("segment", key), before, None)

    # the SDK's view

    def config_version(self, env: str) -> int:
        """One primary-key read. Raises `NotFound` for an unknown environment."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT config_version FROM environments WHERE key = ?", (env,)).fetchone()
        if row is None:
            raise NotFound("environment", env)
        return int(row[0])

    def config_document(self, env: str) -> Record:
        """Read in one snapshot, so the version matches the contents. Raises `NotFound`."""
        with self._pool.transaction(write=False) as conn:
            row = conn.execute("SELECT config_version FROM environments WHERE key = ?", (env,)).fetchone()
            if row is None:
                raise NotFound("environment", env)
            flags = [flag_record(r) for r in conn.execute(FLAG_SELECT, (env,)).fetchall()]
            segments = [segment_record(r) for r in conn.execute(SEGMENT_SELECT, (env,)).fetchall()]
        return build_config_document(env, int(row[0]), flags, segments)

    # tokens

    def create_token(self, token: Record, secret_hash: str, *, actor: str) -> Record:
        """Stores `secret_hash`, never a secret. An admin token's environment is
        None. Raises `AlreadyExists` (the id) or `NotFound` (an sdk token's environment)."""
        env = token.get("environment") if token["kind"] == "sdk" else None
        record = {"id": token["id"], "name": token["name"], "kind": token["kind"], "environment": env}
        record["created_at"] = time.time()
        with self._pool.transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (record["id"],)).fetchone() is not None:
                raise AlreadyExists("token", record["id"])
            if env is not None:
                self._require_env(conn, env)
            conn.execute(
                "INSERT INTO tokens (id, name, kind, environment, secret_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (record["id"], record["name"], record["kind"], env, secret_hash, record["created_at"]),
            )
            self._audit(conn, actor, "create", env, ("token", record["id"]), None, record)
        return record

    def find_token(self, token_id: str) -> tuple[Record, str] | None:
        """The record and secret hash of `token_id`, or None."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else (token_record(row), row["secret_hash"])

    def list_tokens(self) -> list[Record]:
        """Sorted by id."""
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT * FROM tokens ORDER BY id").fetchall()
        return [token_record(row) for row in rows]

    def delete_token(self, token_id: str, *, actor: str) -> None:
        """Raises `NotFound`."""
        with self._pool.transaction(write=True) as conn:
            row = conn.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFound("token", token_id)
            conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
            before = token_record(row)
            self._audit(conn, actor, "delete", before["environment"], ("token", token_id), before, None)

    # audit

    def list_audit(
        self,
        *,
        environment: str | None = None,
        target_key: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Record]:
        """Newest first; pass the last id seen as `before_id` for the next page.
        Filters that match nothing give an empty list."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("environment = ?", environment), ("target_key = ?", target_key), ("id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT * FROM audit{where} ORDER BY id DESC LIMIT ?", (*params, max(limit, 0)))
            return [audit_record(row) for row in rows.fetchall()]
