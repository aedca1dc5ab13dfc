"""The operations CLI (SPEC §10): users, tokens, demo, export/import, prune, worker --burst, bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, func, select, text
from sqlalchemy.engine import make_url

from cbdash import ROOT
from cbdash.extensions import db
from cbdash.models import ApiToken, Attempt, AuditEntry, Callback, Delivery, Event, User, utcnow
from cbdash.services import callbacks, delivery, signing
from tests.conftest import make_callback

EXPORTED = (
    "definition",
    "url",
    "timeout",
    "active",
    "inactive_reason",
    "disabled_at",
    "description",
    "headers",
    "retry_schedule",
    "secret",
    "previous_secret",
    "previous_secret_expires_at",
    "priority",
    "failure_policy",
    "fallback_response",
    "created_at",
)


def _snapshot() -> list[tuple]:
    db.session.expire_all()
    rows = db.session.scalars(select(Callback).where(Callback.deleted_at.is_(None)).order_by(Callback.url))
    return [tuple(getattr(cb, f) for f in EXPORTED) for cb in rows]


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output


def test_create_user_can_sign_in_with_the_role_given(runner, client):
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            " Ops@Example.com ",
            "--password",
            "long-enough-1",
            "--role",
            "support",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "Created support ops@example.com." in result.output
    user = db.session.scalar(select(User).where(User.email == "ops@example.com"))
    assert user is not None and user.role == "support"
    response = client.post("/login", data={"email": "ops@example.com", "password": "long-enough-1"})
    assert response.status_code == 302
    assert db.session.scalar(select(AuditEntry).where(AuditEntry.action == "user.create")) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "not-an-email", "--password", "long-enough-1"], "valid email"),
        (["--email", "a@example.com", "--password", "short"], "10"),
        (
            ["--email", "a@example.com", "--password", "long-enough-1", "--role", "root"],
            "'root' is not one of",
        ),
        (["--password", "long-enough-1"], "Missing option '--email'"),
    ],
)
def test_create_user_refuses_bad_input_with_a_clear_message(runner, args, message):
    result = runner.invoke(args=["create-user", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    _no_traceback(result.output)
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_create_user_refuses_a_duplicate_email(runner):
    args = ["create-user", "--email", "dup@example.com", "--password", "long-enough-1"]
    assert runner.invoke(args=args).exit_code == 0
    result = runner.invoke(args=[*args[:2], "DUP@example.com", *args[3:]])
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_create_token_prints_the_token_alone_on_the_last_line(runner, client, receiver):
    result = runner.invoke(args=["create-token", "--name", "storefront", "--role", "viewer"])
    assert result.exit_code == 0, result.output
    token = result.output.rstrip("\n").splitlines()[-1]
    assert token == token.strip() and " " not in token and len(token) > 30
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/callbacks", headers=headers).status_code == 200
    # A viewer token reads but cannot trigger events.
    response = client.post(
        "/api/v1/events", json={"definition": "order.created", "payload": {}}, headers=headers
    )
    assert response.status_code == 403
    row = db.session.scalar(select(ApiToken))
    assert row.name == "storefront" and row.role == "viewer"
    assert token not in json.dumps([row.token_hash, row.prefix])  # only a hash is stored


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bad\x01name"])
def test_create_token_refuses_bad_names(runner, name):
    result = runner.invoke(args=["create-token", "--name", name])
    assert result.exit_code == 2, result.output
    assert "--name" in result.output
    _no_traceback(result.output)
    assert db.session.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_demo_loads_the_help_page_examples_once(runner):
    result = runner.invoke(args=["demo"])
    assert result.exit_code == 0, result.output
    rows = db.session.scalars(select(Callback).order_by(Callback.created_at.desc())).all()
    assert [(cb.definition, cb.url, cb.active) for cb in rows] == [
        ("redirect_cart_payment", "https://webhook.test/123", True),
        ("test_callback_system", "https://webhook.test/131", True),
        ("test_callback_system", "https://webhook.test/123", False),
    ]
    again = runner.invoke(args=["demo"])
    assert "(0 added)" in again.output
    assert db.session.scalar(select(func.count()).select_from(Callback)) == 3


def _varied_callbacks() -> None:
    """Callbacks that use every exported field."""
    make_callback(
        "https://crm.example.com/hooks?token=abc",
        "customer.created",
        timeout=12,
        description="CRM sync — ünïcode",
        headers={"X-Api-Key": "k1", "X-Team": "growth"},
        retry_schedule="10,60",
    )
    cb = make_callback("https://pay.example.com/return", "redirect_cart_payment", active=False)
    cb.inactive_reason = "auto-disabled: receiver answered 410 Gone"
    cb.previous_secret = signing.generate_secret()
    cb.previous_secret_expires_at = utcnow() + timedelta(hours=5)
    cb.priority = 5
    cb.failure_policy = "fallback"
    cb.fallback_response = {"redirect_url": "https://shop.example.com/cart"}
    cb.created_at = utcnow() - timedelta(days=3, microseconds=123)
    db.session.commit()


def test_export_wipe_import_gives_back_the_same_callbacks(runner, tmp_path):
    assert runner.invoke(args=["demo"]).exit_code == 0
    _varied_callbacks()
    deleted = make_callback("https://gone.example.com/x")
    callbacks.soft_delete(deleted)
    db.session.commit()
    before = _snapshot()
    assert len(before) == 5

    path = tmp_path / "callbacks.json"
    result = runner.invoke(args=["export", "--output", str(path)])
    assert result.exit_code == 0, result.output
    exported = json.loads(path.read_text(encoding="utf-8"))
    assert exported["version"] == 1 and len(exported["callbacks"]) == 5  # deleted ones are not exported

    db.session.execute(delete(Callback))
    db.session.commit()
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "Imported 5 callbacks." in result.output
    assert _snapshot() == before

    # Importing the same file again adds nothing.
    again = runner.invoke(args=["import", str(path)])
    assert again.exit_code == 0
    assert "Imported 0 callbacks (5 already present, skipped)." in again.output
    assert len(_snapshot()) == 5


def test_export_to_standard_output_is_the_same_json(runner):
    make_callback("https://a.example.com/hook")
    result = runner.invoke(args=["export"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [c["url"] for c in data["callbacks"]] == ["https://a.example.com/hook"]
    assert data["callbacks"][0]["secret"].startswith("whsec_")


def test_export_to_a_missing_folder_says_so(runner, tmp_path):
    result = runner.invoke(args=["export", "-o", str(tmp_path / "nope" / "x.json")])
    assert result.exit_code != 0
    assert "x.json" in result.output
    _no_traceback(result.output)


GOOD = {"definition": "order.created", "url": "https://a.example.com/h", "secret": "whsec_" + "A" * 40}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b'{"something": 1}', "not a cbdash export"),
        (b'"text"', "not a cbdash export"),
        (json.dumps({"version": 2, "callbacks": []}).encode(), "export version 2"),
        (json.dumps({"callbacks": [GOOD, 5]}).encode(), "callback #2: not an object"),
        (json.dumps({"callbacks": [GOOD, {**GOOD, "url": "ftp://x"}]}).encode(), "callback #2: url"),
        (json.dumps({"callbacks": [{**GOOD, "secret": "whsec_short"}]}).encode(), "secret"),
        (json.dumps({"callbacks": [{**GOOD, "timeout": "soon"}]}).encode(), "timeout"),
        (json.dumps({"callbacks": [{**GOOD, "created_at": "yesterday"}]}).encode(), "created_at"),
        (json.dumps({"callbacks": [{**GOOD, "definition": "BAD NAME"}]}).encode(), "definition"),
    ],
)
def test_import_refuses_bad_files_and_writes_nothing(runner, tmp_path, content, message):
    path = tmp_path / "in.json"
    path.write_bytes(content)
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 1, result.output
    assert message in result.output
    _no_traceback(result.output)
    assert db.session.scalar(select(func.count()).select_from(Callback)) == 0


def test_import_of_a_missing_file_says_so(runner, tmp_path):
    result = runner.invoke(args=["import", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def _delivery_with_attempt(cb: Callback, age: timedelta) -> Delivery:
    event, (d,) = delivery.create_event(cb.definition, {"n": 1})
    db.session.flush()
    when = utcnow() - age
    event.created_at = d.created_at = when
    d.status, d.finished_at, d.attempt_count = "succeeded", when, 1
    db.session.add(Attempt(delivery_id=d.id, number=1, started_at=when, url=cb.url, status_code=200))
    db.session.commit()
    return d


def test_prune_deletes_only_what_is_older_than_asked(runner):
    cb = make_callback("https://a.example.com/hook")
    old = _delivery_with_attempt(cb, timedelta(days=40))
    recent = _delivery_with_attempt(cb, timedelta(days=2))
    old_id, recent_id = old.id, recent.id
    result = runner.invoke(args=["prune", "--older-than", "30"])
    assert result.exit_code == 0, result.output
    expected = "Pruned 1 attempts, 1 deliveries, 1 events, 0 inbound messages older than 30 days."
    assert expected in result.output
    db.session.expire_all()
    assert db.session.get(Delivery, old_id) is None
    assert db.session.get(Delivery, recent_id) is not None
    assert db.session.scalar(select(func.count()).select_from(Attempt)) == 1
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1


@pytest.mark.parametrize("days", ["-1", "soon", "99999999"])
def test_prune_refuses_bad_ages(runner, days):
    result = runner.invoke(args=["prune", "--older-than", days])
    assert result.exit_code == 2
    assert "--older-than" in result.output


def _env(app, database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBDASH_")}
    env.update(
        CBDASH_DATABASE_URL=database_url,
        CBDASH_REDIS_URL=redis_url,
        CBDASH_QUEUE_NAME=app.config["QUEUE_NAME"],
        CBDASH_ALLOWED_TARGETS="127.0.0.1/32",
        CBDASH_INSTANCE_PATH=str(tmp_path / "sub-instance"),
        CBDASH_SECRET_KEY="test-secret",
    )
    return env


@pytest.mark.slow
def test_worker_burst_delivers_what_is_queued_and_exits(
    app, client, auth, receiver, database_url, redis_url, tmp_path
):
    make_callback(receiver.url())
    response = client.post(
        "/api/v1/events", json={"definition": "order.created", "payload": {"n": 1}}, headers=auth
    )
    (delivery_id,) = response.get_json()["delivery_ids"]
    proc = subprocess.run(
        [sys.executable, "-m", "cbdash", "worker", "--burst"],
        env=_env(app, database_url, redis_url, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-9000:]
    assert len(receiver.requests) == 1
    db.session.expire_all()
    assert db.session.get(Delivery, delivery_id).status == "succeeded"


def test_bench_scale_says_clearly_when_it_is_missing(runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "cbdash.bench_scale", None)
    result = runner.invoke(args=["bench", "--scale"])
    assert result.exit_code == 1
    assert "scale benchmark is not available" in result.output


def test_bench_refuses_bad_options(runner):
    result = runner.invoke(args=["bench", "--deliveries", "0"])
    assert result.exit_code == 2
    assert "--deliveries" in result.output


@pytest.fixture
def scratch_database(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An empty database of the suite's kind for commands that migrate their own."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.sqlite3'}"
        return
    name = f"{url.database}_scratch_{os.getpid()}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.slow
def test_bench_runs_end_to_end_and_ends_with_the_ratio_line(app, scratch_database, redis_url, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cbdash",
            "bench",
            "--deliveries",
            "100",
            "--requests",
            "60",
            "--latency-events",
            "10",
            "--database-url",
            scratch_database,
        ],
        env=_env(app, "", redis_url, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio delivery=") and " ingestion=" in lines[-1]
    ratios = dict(part.split("=") for part in lines[-1].split()[1:])
    assert float(ratios["delivery"]) > 0 and float(ratios["ingestion"]) > 0
    assert "PROBLEM" not in proc.stdout
    # The bench removes what it created (it may run against a shared database).
    engine = create_engine(scratch_database)
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM callbacks")) == 0
            assert conn.scalar(text("SELECT count(*) FROM deliveries")) == 0
            assert conn.scalar(text("SELECT count(*) FROM api_tokens")) == 0
    finally:
        engine.dispose()


def test_bench_stop_leaves_no_orphan_of_the_web_server():
    """A gunicorn worker stuck in its own shutdown must not outlive the bench (its group is killed)."""
    import os
    import subprocess
    import sys
    import time

    from cbdash.bench import _stop

    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", leader], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    orphan = int(proc.stdout.readline())
    _stop(proc, group=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{orphan}/stat") as stat:  # a zombie awaiting init counts as gone
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        os.kill(orphan, 9)
        raise AssertionError("the web server's child outlived _stop")
