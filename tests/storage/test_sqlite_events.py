"""What the SQLite backend promises about events beyond the contract: a failure
after rows were written rolls the whole batch back, old batch ids are pruned,
a database from before stages gets a first stage per flag, and the hot queries
use their indexes."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from flagserver.storage import StoreUnavailable, _sqlite_events
from flagserver.storage._sqlite_schema import MIGRATIONS
from flagserver.storage.events import BATCH_ID_RETENTION, Conversion, Exposure
from flagserver.storage.sqlite_store import SQLiteStore

T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flags.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(str(db))
    store.initialize()
    store.create_environment("production", "Production", actor="t")
    store.create_flag("production", {"key": "f", "enabled": True, "rollout": 50}, actor="t")
    yield store
    store.close()


def raw(db: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(db, isolation_level=None))


def exposure(user: str, variant: str = "on", at: float = T0) -> Exposure:
    return Exposure(flag="f", variant=variant, rule_id=None, reason="SPLIT", randomized=True, flag_version=1,
                    user=user, at=at)


def rows(db: Path, table: str) -> int:
    with raw(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_failure_after_the_rows_are_written_rolls_the_whole_batch_back(
        store: SQLiteStore, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.record_events("production", "batch-1", [exposure("u1")], [Conversion("buy", "u1", 2.0, T0 + 1)])
    before = store.stage_counts("production", "f", 1)
    write = _sqlite_events._BatchCount._write

    def write_then_fail(self: _sqlite_events._BatchCount) -> None:
        write(self)  # every row and counter of the batch is in the transaction now
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_sqlite_events._BatchCount, "_write", write_then_fail)
    batch = [exposure("u2"), exposure("u1", "off")], [Conversion("buy", "u1", 3.0, T0 + 2)]
    with pytest.raises(Exception, match="disk I/O error"):
        store.record_events("production", "batch-2", *batch)

    assert store.stage_counts("production", "f", 1) == before
    assert (rows(db, "exposures"), rows(db, "conversions"), rows(db, "event_batches")) == (1, 1, 1)
    monkeypatch.undo()
    assert store.record_events("production", "batch-2", *batch) is True
    assert store.stage_counts("production", "f", 1)["on"]["all"]["mixed"] == 1


def test_batch_ids_older_than_the_retention_are_pruned(store: SQLiteStore, db: Path) -> None:
    store.record_events("production", "old-batch", [exposure("u1")], [])
    store.record_events("production", "recent-batch", [exposure("u2")], [])
    with raw(db) as conn:
        conn.execute("UPDATE event_batches SET recorded_at = ? WHERE batch_id = 'old-batch'",
                     (time.time() - BATCH_ID_RETENTION - 60,))
        conn.execute("UPDATE event_batches SET recorded_at = ? WHERE batch_id = 'recent-batch'",
                     (time.time() - BATCH_ID_RETENTION + 3600,))

    other = SQLiteStore(str(db))  # a process starting up prunes on its first batch
    try:
        assert other.record_events("production", "new-batch", [], []) is True
        with raw(db) as conn:
            kept = {row[0] for row in conn.execute("SELECT batch_id FROM event_batches")}
        assert kept == {"recent-batch", "new-batch"}
        assert other.record_events("production", "recent-batch", [], []) is False
    finally:
        other.close()


def test_flags_of_a_database_from_before_stages_get_a_first_stage(db: Path) -> None:
    old = SQLiteStore(str(db), migrations=MIGRATIONS[:1])
    old.initialize()
    old.create_environment("production", "Production", actor="t")
    with raw(db) as conn:  # what migration 1's code wrote (it knew no stages)
        conn.execute("INSERT INTO flags VALUES ('f', '', '[]', NULL, '[\"off\",\"on\"]', 'f', 'key', 1, 1.0)")
        conn.execute("INSERT INTO flag_states VALUES ('production', 'f', 1, '[]', '30', 7, 123.0)")
    old.close()

    store = SQLiteStore(str(db))
    store.initialize()
    try:
        assert store.list_stages("production", "f") == [
            {"stage": 1, "start_version": 1, "started_at": 123.0, "rollout": 30, "enabled": True}]
        store.update_flag("production", "f", {"rollout": 40}, expected_version=7, actor="t")
        assert [s["start_version"] for s in store.list_stages("production", "f")] == [1, 8]
    finally:
        store.close()


def _plan(db: Path, sql: str, params: tuple[object, ...]) -> str:
    with raw(db) as conn:
        return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_the_hot_queries_use_their_indexes(store: SQLiteStore, db: Path) -> None:
    store.record_events("production", "batch-1", [exposure(f"u{i}") for i in range(50)], [])
    with raw(db) as conn:
        conn.execute("ANALYZE")

    # the rows of a batch's users (a conversion looks for every stage its user saw)
    users = _plan(db, _sqlite_events.user_rows_sql(2), ("u1", "u2", "production"))
    assert users.startswith("SEARCH e USING INDEX exposures_by_user (user_key=?)") and "SCAN" not in users
    # stage_counts reads counter rows by stage, never the users
    counts = _plan(db, "SELECT arm, population, exposed, mixed FROM arm_counts WHERE stage_id = ? ORDER BY arm",
                   (1,))
    assert "USING PRIMARY KEY (stage_id=?)" in counts and "SCAN" not in counts
    prune = _plan(db, "DELETE FROM event_batches WHERE recorded_at < ?", (0.0,))
    assert "USING COVERING INDEX event_batches_by_time" in prune


def test_deleting_a_flag_leaves_no_row_of_it(store: SQLiteStore, db: Path) -> None:
    store.record_events("production", "batch-1", [exposure("u1"), exposure("u2", "off")],
                        [Conversion("buy", "u1", 1.0, T0 + 1)])
    store.put_rollout("production", "f", {"stages": []}, {}, expected_version=None, actor="t", action="start")
    store.record_decision("production", "f", {"action": "hold"}, replace_last=False)

    store.delete_flag("production", "f", expected_version=None, actor="t")

    for table in ("stages", "exposures", "conversions", "arm_counts", "event_counts", "rollouts", "decisions"):
        assert rows(db, table) == 0, table
    assert rows(db, "event_batches") == 1  # the id stays: a resend is still a duplicate


def test_writers_of_one_process_take_turns_and_a_turn_not_coming_is_store_unavailable(db: Path) -> None:
    # The threads of a process queue on the pool's own lock before SQLite's (whose
    # busy handler sleeps up to 100 ms between tries); the busy timeout still holds.
    store = SQLiteStore(str(db), busy_timeout=0.05)
    store.initialize()
    writer = store._pool._writer_lock()
    try:
        with writer:  # another thread of this process is writing
            with pytest.raises(StoreUnavailable, match="no turn to write"):
                store.create_environment("production", "Production", actor="t")
        store.create_environment("production", "Production", actor="t")  # its turn came
        assert [e["key"] for e in store.list_environments()] == ["production"]
    finally:
        store.close()


def test_a_forked_child_does_not_wait_for_a_turn_its_parent_held(db: Path) -> None:
    store = SQLiteStore(str(db), busy_timeout=0.5)
    store.initialize()
    writer = store._pool._writer_lock()
    try:
        with writer:  # held while forking, as a writing thread of the parent would
            pid = os.fork()
            if pid == 0:  # the child: writes at once, or exits 1
                code = 1
                try:
                    store.create_environment("child", "Child", actor="t")
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [e["key"] for e in store.list_environments()] == ["child"]
    finally:
        store.close()
