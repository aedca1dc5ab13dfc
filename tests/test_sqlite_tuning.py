"""SQLite under several processes: the write gate hands the lock over, checkpoints run in the background."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from cbdash import extensions
from cbdash.sqlite_gate import connection_factory
from tests.conftest import make_config


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, factory=connection_factory(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def test_a_writer_in_another_process_waits_at_the_gate_and_goes_as_soon_as_it_opens(tmp_path):
    path = str(tmp_path / "gate.sqlite3")
    conn = _connect(path)
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.commit()
    # Through a cursor, as SQLAlchemy does (Connection.execute bypasses the cursor class).
    conn.cursor().execute("INSERT INTO t VALUES (1)")  # holds the gate (and SQLite's lock) until commit
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sqlite3, sys, time
                sys.path.insert(0, {os.getcwd()!r})
                from cbdash.sqlite_gate import connection_factory
                c = sqlite3.connect({path!r}, timeout=30, factory=connection_factory({path!r}))
                t = time.monotonic()
                c.cursor().execute("INSERT INTO t VALUES (2)")
                c.commit()
                print(time.monotonic() - t, time.time())
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # the child starts and reaches the gate
    assert child.poll() is None  # waiting at the gate
    opened = time.time()
    conn.commit()
    waited, finished = map(float, child.communicate(timeout=30)[0].split())
    assert waited >= 0.2
    assert finished - opened < 0.05  # not one of SQLite's 25-100 ms sleeps
    assert [r[0] for r in conn.execute("SELECT n FROM t ORDER BY n")] == [1, 2]


def test_threads_of_one_process_take_turns_and_a_rollback_opens_the_gate(tmp_path):
    path = str(tmp_path / "gate.sqlite3")
    first, second = _connect(path), _connect(path)
    first.execute("CREATE TABLE t (n INTEGER)")
    first.commit()
    first.cursor().execute("INSERT INTO t VALUES (1)")
    done = threading.Event()

    def write() -> None:
        second.cursor().execute("INSERT INTO t VALUES (2)")
        second.commit()
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert not done.wait(0.3)
    first.rollback()
    assert done.wait(5)
    thread.join()
    assert [r[0] for r in first.execute("SELECT n FROM t")] == [2]


def test_the_write_ahead_log_is_checkpointed_in_the_background(tmp_path, redis_url):
    """Checked on SQLite whatever database the suite runs on: it is SQLite's behaviour."""
    from cbdash import create_app
    from cbdash.extensions import db

    path = str(tmp_path / "wal.sqlite3")
    app = create_app(make_config(f"sqlite:///{path}", redis_url, str(tmp_path / "instance")))
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE filler (blob TEXT)")
            for _ in range(60):
                conn.exec_driver_sql("INSERT INTO filler VALUES (?)", ("x" * 100_000,))
        assert os.path.getsize(path + "-wal") >= extensions.CHECKPOINT_PAGES * 4096  # over the threshold
        assert extensions._checkpointers.get(os.path.abspath(path)) == os.getpid()
        deadline = time.monotonic() + 10
        copied = False
        while time.monotonic() < deadline and not copied:
            time.sleep(0.2)
            check = sqlite3.connect(path)
            # A PASSIVE checkpoint here reports (busy, frames in the log, frames copied); had
            # the background thread not copied them, this call would be the one doing it.
            before = _db_size(path)
            _busy, frames, done = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            check.close()
            copied = frames > 0 and frames == done and before > 6_000_000
        assert copied  # the database file already held the rows before this test checkpointed
        db.engine.dispose()


def _db_size(path: str) -> int:
    return os.path.getsize(path)
