"""Flask extensions, created unbound and initialised in create_app."""

import sqlite3

from flask import Flask
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()


def tune_sqlite(app: Flask) -> None:
    """WAL journal for SQLite: web, worker and reconciler read while one writes.

    synchronous=NORMAL is safe in WAL mode (a crash never corrupts; only a power
    cut may lose the last commits) and avoids an fsync per commit, which is what
    limits SQLite throughput. Production uses PostgreSQL.
    """
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
