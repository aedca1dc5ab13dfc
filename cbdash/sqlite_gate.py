"""One SQLite writer at a time across processes, handed over at once instead of polled.

SQLite lets one connection write at a time. A connection that finds the file
locked sleeps in SQLite's busy handler (1, 2, 5, 10, 15… ms) and tries again, so
with web processes and a worker writing together most of the time goes to
sleeping while nobody holds the lock. cbdash's SQLite connections take an
advisory ``flock`` on a file beside the database before their first write in a
transaction and release it when the transaction ends; a waiting process polls
that lock every fraction of a millisecond. SQLite's own locking still guards the
data: the gate only decides who tries first. PostgreSQL needs none of this.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

# Statements that take SQLite's write lock (SQLAlchemy emits them unprefixed).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
WAIT_LIMIT = 30.0  # seconds; then write anyway and let SQLite's busy timeout decide


class WriteGate:
    """A process-wide lock (threads) plus an advisory file lock (processes) for one database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        # A forked child must not share the parent's open file (flock is per open file).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self) -> bool:
        """Wait for the gate (at most ``WAIT_LIMIT``); False when it could not be had."""
        deadline = time.monotonic() + WAIT_LIMIT
        if not self._threads.acquire(timeout=WAIT_LIMIT):
            return False
        pause = 0.00005
        try:
            fd = self._file()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(pause)  # another process writes: a short, growing pause
                    pause = min(pause * 1.5, 0.001)
        except OSError:
            pass
        self._threads.release()
        return False

    def release(self) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class GatedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        self.connection._before(sql)  # type: ignore[attr-defined]
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        self.connection._before(sql)  # type: ignore[attr-defined]
        return super().executemany(sql, parameters)


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's gate from its first write to commit/rollback."""

    gate: WriteGate
    _holding = False

    def cursor(self, factory: Any = GatedCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def _before(self, sql: str) -> None:
        if not self._holding and sql.lstrip()[:7].upper().startswith(_WRITES):
            self._holding = self.gate.acquire()

    def _after(self) -> None:
        if self._holding:
            self._holding = False
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._after()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._after()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._after()


_gates: dict[str, WriteGate] = {}
_gates_lock = threading.Lock()


def connection_factory(database: str) -> type[GatedConnection]:
    """The ``sqlite3.connect(factory=...)`` class for ``database`` (one gate per file per process)."""
    path = os.path.abspath(database) + "-writer.lock"
    with _gates_lock:
        gate = _gates.get(path)
        if gate is None:
            gate = _gates[path] = WriteGate(path)
    return type("GatedConnection", (GatedConnection,), {"gate": gate})
