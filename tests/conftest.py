"""Shared fixtures: a real Redis (CBDASH_REDIS_URL or embedded), a real database
(CBDASH_DATABASE_URL or SQLite in a temp folder), real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from cbdash import create_app
from cbdash.extensions import db
from cbdash.models import User
from cbdash.queue import get_queue, get_redis, start_embedded
from tests.receiver import Receiver


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("CBDASH_REDIS_URL") or os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server, url = start_embedded(tmp_path_factory.mktemp("redis"))
    yield url
    server.shutdown()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("CBDASH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return url or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


@pytest.fixture(scope="session")
def _schema(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    app = create_app(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
        }
    )
    with app.app_context():
        db.drop_all()
        db.create_all()
        db.engine.dispose()


def make_config(database_url: str, redis_url: str, instance: str, **overrides) -> dict:  # type: ignore[no-untyped-def]
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "INSTANCE_PATH": instance,
        "SECRET_KEY": "test-secret",
        "WTF_CSRF_ENABLED": False,
        "ALLOWED_TARGETS": "127.0.0.1/32",
        "RETRY_JITTER": 0.0,
        "QUEUE_NAME": "cbdash-test",
        **overrides,
    }


@pytest.fixture
def app_config() -> dict:
    """Per-test config overrides (tests may update it before using ``app``)."""
    return {}


@pytest.fixture
def app(_schema, database_url: str, redis_url: str, tmp_path, app_config):  # type: ignore[no-untyped-def]
    app = create_app(make_config(database_url, redis_url, str(tmp_path / "instance"), **app_config))
    with app.app_context():
        get_redis(app).flushdb()
        yield app
        db.session.remove()
        _wipe()
        get_redis(app).flushdb()
        db.engine.dispose()


def _wipe() -> None:
    tables = list(reversed(db.metadata.sorted_tables))
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            names = ", ".join(t.name for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def runner(app):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


def create_user(
    email: str = "admin@example.com", role: str = "admin", password: str = "password-123"
) -> User:
    user = User(email=email, role=role)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def login(client, email: str = "admin@example.com", role: str = "admin"):  # type: ignore[no-untyped-def]
    """Create a user with ``role`` and sign the test client in as them."""
    if not db.session.query(User).filter_by(email=email).first():
        create_user(email, role)
    response = client.post("/login", data={"email": email, "password": "password-123"})
    assert response.status_code == 302, response.data[:500]
    return client


@pytest.fixture
def admin(client):  # type: ignore[no-untyped-def]
    return login(client)


@pytest.fixture
def token(app) -> str:  # type: ignore[no-untyped-def]
    """An admin API token."""
    from cbdash.services import tokens

    _row, plaintext = tokens.create("tests", "admin")
    db.session.commit()
    return plaintext


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def run_worker(app) -> None:  # type: ignore[no-untyped-def]
    """Run queued jobs in process until the queue is empty (RQ SimpleWorker, burst)."""
    from cbdash.worker import QuickStopWorker, drain_all_ready

    drain_all_ready(app)  # what a worker's dispatcher thread does with the API's ready list
    queue = get_queue(app)
    QuickStopWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")


def make_callback(url: str, definition: str = "order.created", **fields):  # type: ignore[no-untyped-def]
    from cbdash.services import callbacks

    cb = callbacks.create(
        {"definition": definition, "url": url, "timeout": fields.pop("timeout", 5), **fields}
    )
    db.session.commit()
    return cb
