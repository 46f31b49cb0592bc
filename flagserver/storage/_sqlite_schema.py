"""The SQLite schema: an ordered list of migrations, the code that applies them,
and the mapping between rows and the records of `base.py`.

The schema version is `PRAGMA user_version`: the number of migrations applied.
To change the schema, append a `Migration` to `MIGRATIONS`; never edit or
reorder one that has shipped, because databases in the field already ran it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import Record, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: SQL statements run in one transaction."""

    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "environments, flags, segments, tokens, audit",
        (
            # config_version: the counter SDKs poll; bumped by every write that
            # changes the environment's config document, read by primary key.
            """CREATE TABLE environments (
                key TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at REAL NOT NULL,
                config_version INTEGER NOT NULL
            )""",
            # Fields shared by every environment; JSON columns hold lists.
            """CREATE TABLE flags (
                key TEXT PRIMARY KEY,
                description TEXT NOT NULL,
                tags TEXT NOT NULL,
                owner TEXT,
                variants TEXT NOT NULL,
                salt TEXT NOT NULL,
                bucket_by TEXT NOT NULL,
                hash_version INTEGER NOT NULL,
                created_at REAL NOT NULL
            )""",
            # A flag as one environment has it; rules and rollout in wire form (JSON).
            """CREATE TABLE flag_states (
                environment TEXT NOT NULL REFERENCES environments(key),
                flag TEXT NOT NULL REFERENCES flags(key) ON DELETE CASCADE,
                enabled INTEGER NOT NULL,
                rules TEXT NOT NULL,
                rollout TEXT NOT NULL,
                version INTEGER NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (environment, flag)
            ) WITHOUT ROWID""",
            "CREATE INDEX flag_states_by_flag ON flag_states (flag)",
            """CREATE TABLE segments (
                environment TEXT NOT NULL REFERENCES environments(key),
                key TEXT NOT NULL,
                description TEXT NOT NULL,
                included TEXT NOT NULL,
                excluded TEXT NOT NULL,
                conditions TEXT NOT NULL,
                percentage TEXT NOT NULL,
                bucket_by TEXT NOT NULL,
                version INTEGER NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (environment, key)
            ) WITHOUT ROWID""",
            """CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                kind TEXT NOT NULL,
                environment TEXT REFERENCES environments(key),
                secret_hash TEXT NOT NULL,
                created_at REAL NOT NULL
            )""",
            # AUTOINCREMENT: audit ids are never reused, so `before_id` paging is stable.
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                environment TEXT,
                target_type TEXT NOT NULL,
                target_key TEXT NOT NULL,
                before TEXT,
                after TEXT
            )""",
            "CREATE INDEX audit_by_environment ON audit (environment, id)",
            "CREATE INDEX audit_by_target ON audit (target_key, id)",
        ),
    ),
    Migration(
        "rollout stages, exposures and conversions, rollouts, decisions, leases",
        (
            # A flag's stages in one environment (storage/events.py). AUTOINCREMENT:
            # a stage id is never reused, so nothing counted can outlive its stage
            # into another. Deleting a flag's states cascades to its stages, and
            # from there to everything counted in them.
            """CREATE TABLE stages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                environment TEXT NOT NULL,
                flag TEXT NOT NULL,
                stage INTEGER NOT NULL,
                start_version INTEGER NOT NULL,
                started_at REAL NOT NULL,
                rollout TEXT NOT NULL,
                enabled INTEGER NOT NULL,
                UNIQUE (environment, flag, stage),
                FOREIGN KEY (environment, flag) REFERENCES flag_states (environment, flag) ON DELETE CASCADE
            )""",
            # Flags of a database made before stages existed: one stage from version 1
            # with their current rollout, begun when that configuration was written.
            """INSERT INTO stages (environment, flag, stage, start_version, started_at, rollout, enabled)
               SELECT environment, flag, 1, 1, updated_at, rollout, enabled FROM flag_states""",
            # One row per user exposed in a stage: their arm and population (of their
            # first exposure there), whether they were seen with another variant
            # since, and their earliest exposure (conversions count from then on).
            # Keyed by stage for writes and deletes; by user for conversions, which
            # look for every stage their user was exposed in.
            """CREATE TABLE exposures (
                stage_id INTEGER NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
                user_key TEXT NOT NULL,
                arm TEXT NOT NULL,
                randomized INTEGER NOT NULL,
                mixed INTEGER NOT NULL,
                first_at REAL NOT NULL,
                PRIMARY KEY (stage_id, user_key)
            ) WITHOUT ROWID""",
            "CREATE INDEX exposures_by_user ON exposures (user_key)",
            # Which exposed users already sent which event in a stage (distinct counts).
            """CREATE TABLE conversions (
                stage_id INTEGER NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
                user_key TEXT NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY (stage_id, user_key, event)
            ) WITHOUT ROWID""",
            # The counts `stage_counts` reads, kept in step by `record_events` in the
            # same transaction; population is 'all' or 'randomized'.
            """CREATE TABLE arm_counts (
                stage_id INTEGER NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
                arm TEXT NOT NULL,
                population TEXT NOT NULL,
                exposed INTEGER NOT NULL,
                mixed INTEGER NOT NULL,
                PRIMARY KEY (stage_id, arm, population)
            ) WITHOUT ROWID""",
            """CREATE TABLE event_counts (
                stage_id INTEGER NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
                arm TEXT NOT NULL,
                population TEXT NOT NULL,
                event TEXT NOT NULL,
                users INTEGER NOT NULL,
                value_sum REAL NOT NULL,
                PRIMARY KEY (stage_id, arm, population, event)
            ) WITHOUT ROWID""",
            # Batch ids already counted, per environment, for de-duplication.
            """CREATE TABLE event_batches (
                environment TEXT NOT NULL REFERENCES environments (key),
                batch_id TEXT NOT NULL,
                recorded_at REAL NOT NULL,
                PRIMARY KEY (environment, batch_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX event_batches_by_time ON event_batches (recorded_at)",
            # plan and state: JSON, opaque to the store.
            """CREATE TABLE rollouts (
                environment TEXT NOT NULL,
                flag TEXT NOT NULL,
                plan TEXT NOT NULL,
                state TEXT NOT NULL,
                version INTEGER NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (environment, flag),
                FOREIGN KEY (environment, flag) REFERENCES flag_states (environment, flag) ON DELETE CASCADE
            ) WITHOUT ROWID""",
            # seq grows per rollout; the newest decision has the largest.
            """CREATE TABLE decisions (
                environment TEXT NOT NULL,
                flag TEXT NOT NULL,
                seq INTEGER NOT NULL,
                decision TEXT NOT NULL,
                PRIMARY KEY (environment, flag, seq),
                FOREIGN KEY (environment, flag) REFERENCES rollouts (environment, flag) ON DELETE CASCADE
            ) WITHOUT ROWID""",
            """CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at REAL NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
)


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of migrations applied to the database of `conn`."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations `conn`'s database has not run yet, in order, in one
    `BEGIN IMMEDIATE` transaction (so concurrent processes starting at once
    migrate once), and return the resulting schema version.

    `conn` must be in autocommit mode (`isolation_level=None`). Raises
    `StoreError` when the database is newer than `migrations` (a downgrade);
    a failing statement rolls everything back and its `sqlite3.Error` propagates.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > len(migrations):
            raise StoreError(
                f"database schema version {current} is newer than this server knows ({len(migrations)}); "
                "upgrade the server"
            )
        for number in range(current + 1, len(migrations) + 1):
            migration = migrations[number - 1]
            log.info("applying storage migration %d: %s", number, migration.description)
            for statement in migration.statements:
                conn.execute(statement)
            # user_version lives in the database header and is transactional.
            conn.execute(f"PRAGMA user_version = {number:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(migrations)


# rows <-> records

FLAG_SELECT = """
    SELECT f.key, f.description, f.tags, f.owner, f.variants, f.salt, f.bucket_by, f.hash_version,
           s.enabled, s.rules, s.rollout, s.version, s.updated_at
    FROM flags AS f JOIN flag_states AS s ON s.flag = f.key
    WHERE s.environment = ?"""
SEGMENT_SELECT = """
    SELECT key, description, included, excluded, conditions, percentage, bucket_by, version, updated_at
    FROM segments WHERE environment = ?"""
TOKEN_FIELDS = ("id", "name", "kind", "environment", "created_at")
_JSON_FLAG_COLUMNS = frozenset({"tags", "variants", "rules", "rollout"})
_JSON_SEGMENT_COLUMNS = frozenset({"included", "excluded", "conditions", "percentage"})


def dump(value: Any) -> str:
    """JSON for a column. Keys keep their order: the order of a weights rollout is its meaning."""
    return json.dumps(value, separators=(",", ":"))


def flag_record(row: sqlite3.Row) -> Record:
    """A flag record from a `FLAG_SELECT` row."""
    out = {name: json.loads(row[name]) if name in _JSON_FLAG_COLUMNS else row[name] for name in row.keys()}
    out["enabled"] = bool(out["enabled"])
    return out


def segment_record(row: sqlite3.Row) -> Record:
    """A segment record from a `SEGMENT_SELECT` row."""
    return {name: json.loads(row[name]) if name in _JSON_SEGMENT_COLUMNS else row[name] for name in row.keys()}


def token_record(row: sqlite3.Row) -> Record:
    """A token record (without its secret hash) from a `tokens` row."""
    return {name: row[name] for name in TOKEN_FIELDS}


def audit_record(row: sqlite3.Row) -> Record:
    """An audit entry from an `audit` row."""
    out = {name: row[name] for name in ("id", "at", "actor", "action", "environment", "target_type", "target_key")}
    for name in ("before", "after"):
        out[name] = None if row[name] is None else json.loads(row[name])
    return out
