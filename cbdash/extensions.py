"""Flask extensions, created unbound and initialised in create_app."""

import os
import sqlite3
import threading
import time

from flask import Flask
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import event, exc
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()


# A pooled connection back in use after this long idle is pinged before it is handed out.
IDLE_PING = 1.0


def ping_when_idle(app: Flask) -> None:
    """Check a database connection before use only when it has been idle a while.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout: a third of
    a small request's database time. A connection checked in less than
    ``IDLE_PING`` seconds ago was working then; one that sat in the pool longer
    (the server may have restarted, a proxy may have dropped it) is pinged, and a
    dead one is replaced before anyone uses it. Should the server go away within
    that second, the first statement fails, SQLAlchemy recognises the disconnect
    and empties the pool, and the next request connects afresh.
    """
    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: object, record: object) -> None:
        record.info["cbdash_checkin"] = time.monotonic()  # type: ignore[attr-defined]

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: object, record: object, _proxy: object) -> None:
        since = record.info.get("cbdash_checkin")  # type: ignore[attr-defined]
        if since is None or time.monotonic() - since < IDLE_PING:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)  # what pool_pre_ping runs (outside any transaction)
        except Exception as error:  # noqa: BLE001 - any failure: the pool connects afresh
            raise exc.DisconnectionError(f"idle connection is gone: {error}") from error


# A commit that finds the write-ahead log over SQLite's checkpoint threshold copies
# it into the database file there and then, with two fsyncs, while holding the
# write lock: a third of a small write's cost, paid by whichever web request was
# unlucky. A thread per process does it instead, without blocking writers
# (PASSIVE); SQLite's own threshold stays as a safety net at ten times the size.
CHECKPOINT_PAGES = 1000
CHECKPOINT_EVERY = 0.5  # seconds between looks at the log's size
_checkpointers: dict[str, int] = {}  # database path -> pid whose thread checkpoints it
_checkpointers_lock = threading.Lock()


def tune_sqlite(app: Flask) -> None:
    """WAL journal for SQLite: web, worker and reconciler read while one writes.

    synchronous=NORMAL is safe in WAL mode (a crash never corrupts; only a power
    cut may lose the last commits) and avoids an fsync per commit, which is what
    limits SQLite throughput. Temporary b-trees (RETURNING, sorts) stay in memory
    instead of a file created and unlinked per statement. Checkpoints run in the
    background (above). Production uses PostgreSQL.
    """
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    path = engine.url.database
    background = bool(path) and path != ":memory:" and not path.startswith("file:")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA temp_store=MEMORY")
        if background:
            cursor.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES * 10}")
        cursor.close()
        if background:
            _start_checkpointer(os.path.abspath(path))


def _start_checkpointer(path: str) -> None:
    """One checkpoint thread per database file per process (started again in a forked child)."""
    with _checkpointers_lock:
        if _checkpointers.get(path) == os.getpid():
            return
        _checkpointers[path] = os.getpid()
    threading.Thread(
        target=_checkpoint_loop, args=(path,), daemon=True, name="cbdash-sqlite-checkpoint"
    ).start()


def _checkpoint_loop(path: str) -> None:
    wal = path + "-wal"
    limit = CHECKPOINT_PAGES * 4096
    conn: sqlite3.Connection | None = None
    while True:
        time.sleep(CHECKPOINT_EVERY)
        try:
            if os.path.getsize(wal) < limit:
                continue
            if conn is None:
                conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
            # PASSIVE: copies what it can without waiting for readers or blocking writers;
            # another process's checkpointer at work makes this one a no-op (busy).
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (OSError, sqlite3.Error):
            if conn is not None:
                conn.close()
                conn = None
