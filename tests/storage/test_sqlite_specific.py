"""What only the SQLite backend promises: WAL, migrations, locking between
processes, its URLs, and errors when the file cannot be used."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING

import pytest

from flagserver.storage import StoreError, StoreUnavailable, VersionConflict, open_store
from flagserver.storage._sqlite_schema import MIGRATIONS, Migration
from flagserver.storage.sqlite_store import SQLiteStore

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

PROBE = Migration(
    "a probe table, as a later migration would add", ("CREATE TABLE probe (n INTEGER)", "INSERT INTO probe VALUES (1)")
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flags.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(str(db))
    store.initialize()
    yield store
    store.close()


def raw(db: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(db, isolation_level=None))


def test_the_file_is_in_wal_mode(store: SQLiteStore, db: Path) -> None:
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_run_once_and_reopening_is_idempotent(db: Path) -> None:
    first = SQLiteStore(str(db))
    first.initialize()
    first.create_environment("production", "Production", actor="t")
    first.initialize()
    first.close()
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)

    # A later release appends a migration: it runs once, however often the file is opened.
    for _ in range(3):
        later = SQLiteStore(str(db), migrations=(*MIGRATIONS, PROBE))
        later.initialize()
        later.initialize()
        assert [e["key"] for e in later.list_environments()] == ["production"]
        later.close()
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert conn.execute("SELECT count(*) FROM probe").fetchone()[0] == 1


def test_a_failing_migration_changes_nothing(db: Path) -> None:
    store = SQLiteStore(str(db))
    store.initialize()
    store.close()
    broken = Migration("half good", ("CREATE TABLE half (n INTEGER)", "CREATE TABLE environments (x)"))
    failing = SQLiteStore(str(db), migrations=(*MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        failing.initialize()
    failing.close()
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_a_database_newer_than_the_code_is_refused(db: Path) -> None:
    newer = SQLiteStore(str(db), migrations=(*MIGRATIONS, PROBE))
    newer.initialize()
    newer.close()
    older = SQLiteStore(str(db))
    with pytest.raises(StoreError, match="newer"):
        older.initialize()
    older.close()


def test_a_write_lock_held_past_the_busy_timeout_is_store_unavailable(db: Path) -> None:
    store = SQLiteStore(str(db), busy_timeout=0.05)
    store.initialize()
    store.create_environment("production", "Production", actor="t")
    try:
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked"):
                store.create_environment("staging", "Staging", actor="t")
            # WAL: readers go on while another process writes.
            assert store.config_version("production") == 1
            other.execute("ROLLBACK")
        store.create_environment("staging", "Staging", actor="t")  # the pool's connection is fine again
        assert [e["key"] for e in store.list_environments()] == ["production", "staging"]
    finally:
        store.close()


def test_a_file_that_cannot_be_opened_is_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "missing-dir" / "flags.db"))
    with pytest.raises(StoreUnavailable):
        store.initialize()
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()


def test_a_file_that_is_not_a_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    path.write_bytes(b"this is no SQLite database, " * 100)
    store = SQLiteStore(str(path))
    with pytest.raises(StoreUnavailable, match="not a database"):
        store.ping()
    store.close()


def test_a_closed_store_is_unavailable_and_close_is_idempotent(store: SQLiteStore) -> None:
    store.ping()
    store.close()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.ping()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative/flags.db", "relative/flags.db"),
        ("sqlite:////abs/flags.db", "/abs/flags.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///with%20space.db?timeout=2.5", "with space.db"),
    ],
)
def test_urls(url: str, path: str) -> None:
    store = SQLiteStore.from_url(url)
    assert store.path == path
    store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/flags.db", "sqlite:///f.db?journal=off"])
def test_bad_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        SQLiteStore.from_url(url)


def test_open_store_gives_an_sqlite_store(db: Path) -> None:
    store = open_store(f"sqlite:///{db}")
    assert isinstance(store, SQLiteStore)
    store.initialize()
    store.create_environment("production", "Production", actor="t")
    store.close()
    assert db.exists()


def test_memory_database_is_one_database_shared_by_threads() -> None:
    store = SQLiteStore.from_url("sqlite:///:memory:")
    store.initialize()
    store.create_environment("production", "Production", actor="t")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            for n in range(5):
                store.create_segment("production", {"key": f"s{i}-{n}"}, actor=f"t{i}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == [] and not any(t.is_alive() for t in threads)
        assert len(store.list_segments("production")) == 20
    finally:
        store.close()


def test_many_threads_writing_one_file_all_land(store: SQLiteStore) -> None:
    store.create_environment("production", "Production", actor="t")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            for n in range(10):
                store.create_segment("production", {"key": f"s{i}-{n}"}, actor=f"t{i}")
                store.list_segments("production")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert len(store.list_segments("production")) == 80
    assert store.config_version("production") == 81


def _race_update(path: str, barrier: Barrier, results: Queue[str]) -> None:
    """In a spawned process: open the file, wait for the other, update at version 1."""
    store = SQLiteStore(path)
    try:
        store.initialize()
        barrier.wait(timeout=60)
        store.update_flag(
            "production", "new-checkout", {"rollout": os.getpid() % 100}, expected_version=1, actor=str(os.getpid())
        )
        results.put("won")
    except VersionConflict as exc:
        results.put(f"conflict at {exc.current_version}")
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(f"error: {exc!r}")
    finally:
        store.close()


def test_two_processes_racing_a_versioned_update_exactly_one_wins(store: SQLiteStore, db: Path) -> None:
    store.create_environment("production", "Production", actor="t")
    store.create_flag("production", {"key": "new-checkout"}, actor="t")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results: Queue[str] = context.Queue()
    processes = [context.Process(target=_race_update, args=(str(db), barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    try:
        outcomes = sorted(results.get(timeout=120) for _ in processes)
    except Empty:
        outcomes = ["a process gave no answer"]
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    assert outcomes == ["conflict at 2", "won"]
    flag = store.get_flag("production", "new-checkout")
    assert flag is not None and flag["version"] == 2
    assert [e["action"] for e in store.list_audit(target_key="new-checkout")] == ["update", "create"]
