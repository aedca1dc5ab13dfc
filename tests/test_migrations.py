"""Migrations: one head, and upgrading an empty database yields exactly the models' schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from cbdash import ROOT, create_app
from cbdash.extensions import db
from tests.conftest import make_config

MIGRATIONS = Path(ROOT) / "migrations"


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database with no tables, of the same kind as the suite's (SQLite or PostgreSQL)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        return
    name = f"{url.database}_mig_{os.getpid()}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def migrated_app(empty_database: str, redis_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    app = create_app(make_config(empty_database, redis_url, str(tmp_path / "instance")))
    with app.app_context():
        upgrade()
        yield app
        db.session.remove()
        db.engine.dispose()


def _differences(app) -> list:  # type: ignore[no-untyped-def]
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_migrations_have_exactly_one_head():
    heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
    assert len(heads) == 1, f"several migration heads {heads}: re-point a down_revision"


def test_every_revision_has_a_descriptive_docstring():
    for revision in ScriptDirectory(str(MIGRATIONS)).walk_revisions():
        assert (revision.doc or "").strip(), f"migration {revision.revision} has no description"


def test_upgrade_on_an_empty_database_matches_the_models(migrated_app):
    assert _differences(migrated_app) == []
    tables = set(inspect(db.engine).get_table_names())
    assert {t.name for t in db.metadata.sorted_tables} <= tables
    assert "alembic_version" in tables


def test_downgrade_to_base_and_upgrade_again(migrated_app):
    downgrade(revision="base")
    left = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert left == set(), f"downgrade left tables behind: {left}"
    upgrade()
    assert _differences(migrated_app) == []
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with db.engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
