"""Connections to one SQLite file, shared by the threads of one process.

Each operation borrows a connection of its own and gives it back when done, so
a connection is never used by two threads at once; idle ones are kept for
reuse. SQLite's own locking (WAL, `busy_timeout`) does the rest between
connections, threads and processes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from .base import StoreUnavailable

# Primary result codes meaning "the database cannot be used right now", as
# opposed to a mistake in a statement (SQLITE_ERROR, constraint violations):
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def is_unavailable(exc: sqlite3.Error) -> bool:
    """Whether `exc` says the database is unusable for now rather than that a
    statement is wrong."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return (code & 0xFF) in _UNAVAILABLE_CODES
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "disk", "i/o", "unable to open", "readonly"))


class ConnectionPool:
    """Connections to `path` in autocommit mode (transactions are explicit).

    `":memory:"` is a separate database per connection, so there the pool holds
    exactly one connection and operations take turns on it.
    """

    def __init__(self, path: str, *, busy_timeout: float, max_idle: int = 16) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self._busy_timeout = busy_timeout
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._turn = threading.Lock()  # the one ":memory:" connection's
        self._writer = threading.Lock()  # this process's writers queue here (see transaction)
        self._writer_pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            # Durable at checkpoints rather than at every commit: WAL's usual trade.
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot set up SQLite database {self.path!r}: {exc}") from exc
        return conn

    def _checkout(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if os.getpid() != self._pid:
                # A forked child must not touch its parent's connections, not even
                # to close them: closing could release locks the parent holds.
                self._inherited.extend(self._idle)
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._open()

    def _checkin(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            usable = not self._closed and os.getpid() == self._pid and not conn.in_transaction
            if usable and (self.memory or len(self._idle) < self._max_idle):
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this operation alone. SQLite errors meaning the file
        is unusable (locked past the busy timeout, I/O, full, corrupt) become
        `StoreUnavailable`; others propagate. Raises `StoreUnavailable` once closed."""
        turn: AbstractContextManager[object] = self._turn if self.memory else nullcontext()
        with turn:
            conn = self._checkout()
            try:
                yield conn
            except sqlite3.Error as exc:
                if is_unavailable(exc):
                    raise StoreUnavailable(f"SQLite database {self.path!r}: {exc}") from exc
                raise
            finally:
                self._checkin(conn)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection inside a transaction, committed when the block ends and
        rolled back when it raises. A write transaction is `BEGIN IMMEDIATE`: it
        holds the database's write lock from the start, waiting for it up to the
        busy timeout; a read transaction sees one snapshot throughout.

        The threads of one process take turns at writing on a lock of their own
        first: SQLite's busy handler polls with growing sleeps (up to 100 ms), so
        many threads waiting on the file lock leave it idle between holders, while
        a thread waiting on this lock is woken as soon as it is free. Other
        processes still meet at SQLite's lock. Waiting past the busy timeout here
        is `StoreUnavailable`, as it is there."""
        if not write:
            with self._transaction("BEGIN") as conn:
                yield conn
            return
        writer = self._writer_lock()
        if not writer.acquire(timeout=self._busy_timeout):
            raise StoreUnavailable(f"SQLite database {self.path!r}: no turn to write within {self._busy_timeout} s")
        try:
            with self._transaction("BEGIN IMMEDIATE") as conn:
                yield conn
        finally:
            writer.release()

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """A borrowed connection inside `begin` ... COMMIT, rolled back on any exception."""
        with self.connection() as conn:
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _writer_lock(self) -> threading.Lock:
        with self._lock:
            if self._writer_pid != os.getpid():
                # A forked child: a thread of the parent may have held the lock at
                # the fork, and that thread does not exist here to release it.
                self._writer = threading.Lock()
                self._writer_pid = os.getpid()
            return self._writer

    def close(self) -> None:
        """Close the idle connections now and the busy ones as they come back.
        Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
