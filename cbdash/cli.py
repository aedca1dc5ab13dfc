"""The ``cbdash`` command (also ``flask --app cbdash ...``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import select

from .constants import Role


def main() -> None:
    from . import create_app

    cli = FlaskGroup(
        create_app=create_app,
        add_default_commands=False,
        help="cbdash: callbacks dashboard and delivery engine.",
    )
    cli.main(prog_name="cbdash")


def upgrade_db(app: Flask) -> None:
    """Apply migrations (``flask db upgrade``)."""
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()


def register_cli(app: Flask) -> None:
    for command in (up, worker, create_user, create_token, demo, export_cmd, import_cmd, prune):
        app.cli.add_command(command)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16))
def up(host: str, port: int, workers: int) -> None:
    """Web + worker + scheduler in one process group, for a laptop."""
    from werkzeug.serving import make_server

    from .queue import start_embedded

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    upgrade_db(app)
    env = dict(os.environ)
    env["CBDASH_INSTANCE_PATH"] = app.instance_path
    embedded = None
    if not app.config.get("REDIS_URL"):
        embedded, url = start_embedded(app.instance_path)
        app.config["REDIS_URL"] = url
        env["CBDASH_REDIS_URL"] = url
        click.echo(f"Embedded Redis: {Path(app.instance_path) / 'redis.db'}")
    procs = [
        subprocess.Popen([sys.executable, "-m", "cbdash", "worker"], env=env, start_new_session=False)
        for _ in range(workers)
    ]
    server = make_server(host, port, app, threaded=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    click.echo(f"Database: {app.config['SQLALCHEMY_DATABASE_URI'].split('@')[-1]}")
    click.echo(f"{workers} worker(s) with the scheduler started.")
    click.echo(f"cbdash is running. Open http://{shown}:{port}/ (Ctrl-C stops everything)")

    def _stop(*_args: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell may start us with SIGINT ignored (background jobs).
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("Stopping…")
        server.server_close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        if embedded is not None:
            try:
                embedded.shutdown()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
        click.echo("Stopped.")


@click.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@with_appcontext
def worker(burst: bool) -> None:
    """An RQ worker (always with the scheduler and the reconciler)."""
    from . import worker as worker_mod

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker_mod.run(app, burst=burst)


@click.command("create-user")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.ADMIN.value,
    show_default=True,
)
@with_appcontext
def create_user(email: str, password: str, role: str) -> None:
    """Create a login."""
    from .extensions import db
    from .models import User
    from .services import audit

    email = email.strip().lower()
    if "@" not in email or len(email) > 254:
        raise click.BadParameter("enter a valid email", param_hint="--email")
    if len(password) < 10:
        raise click.BadParameter("use at least 10 characters", param_hint="--password")
    if db.session.scalar(select(User).where(User.email == email)):
        raise click.ClickException(f"a user with email {email} already exists")
    user = User(email=email, role=role)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    audit.record("user.create", "user", user.id, {"email": email, "role": role})
    db.session.commit()
    click.echo(f"Created {role} {email}.")


@click.command("create-token")
@click.option("--name", required=True)
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.ADMIN.value,
    show_default=True,
)
@with_appcontext
def create_token(name: str, role: str) -> None:
    """Create an API token; it is printed once, alone on the last line."""
    from .extensions import db
    from .services import audit, tokens

    name = name.strip()
    if not name or len(name) > 100:
        raise click.BadParameter("1–100 characters", param_hint="--name")
    row, plaintext = tokens.create(name, role)
    db.session.flush()
    audit.record("token.create", "token", row.id, {"name": name, "role": role})
    db.session.commit()
    click.echo(f"API token {name!r} ({role}). Store it now; it is not shown again:")
    click.echo(plaintext)


DEMO = [
    (
        "redirect_cart_payment",
        "https://webhook.test/123",
        True,
        "2025-06-19 12:48",
        "Handles payment processing redirections and confirmations.",
    ),
    (
        "test_callback_system",
        "https://webhook.test/131",
        True,
        "2025-05-28 10:18",
        "System testing and validation callback for development and QA.",
    ),
    (
        "test_callback_system",
        "https://webhook.test/123",
        False,
        "2025-05-28 10:17",
        "System testing and validation callback for development and QA.",
    ),
]


@click.command()
@with_appcontext
def demo() -> None:
    """Load the help page's example callbacks."""
    from .extensions import db
    from .models import Callback
    from .services import callbacks, settings

    tz = settings.current().timezone
    added = 0
    for definition, url, active, created, description in DEMO:
        local = datetime.strptime(created, "%Y-%m-%d %H:%M").replace(tzinfo=tz)
        created_at = local.astimezone(UTC).replace(tzinfo=None)
        exists = db.session.scalar(
            select(Callback.id).where(
                Callback.definition == definition,
                Callback.url == url,
                Callback.created_at == created_at,
                Callback.deleted_at.is_(None),
            )
        )
        if exists:
            continue
        cb = callbacks.create(
            {
                "definition": definition,
                "url": url,
                "timeout": 5,
                "active": active,
                "description": description,
            }
        )
        cb.created_at = created_at
        if not active:
            cb.disabled_at = created_at
        added += 1
    db.session.commit()
    click.echo(f"Demo callbacks loaded ({added} added).")


EXPORT_FIELDS = (
    "definition",
    "url",
    "timeout",
    "active",
    "inactive_reason",
    "description",
    "headers",
    "retry_schedule",
    "secret",
    "priority",
    "failure_policy",
    "fallback_response",
)


@click.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-")
@with_appcontext
def export_cmd(output: str) -> None:
    """Write all callbacks as JSON (includes signing secrets: keep the file safe)."""
    from .extensions import db
    from .formatting import iso
    from .models import Callback

    rows = db.session.scalars(select(Callback).where(Callback.deleted_at.is_(None)).order_by(Callback.id))
    data = {
        "version": 1,
        "callbacks": [
            {**{f: getattr(cb, f) for f in EXPORT_FIELDS}, "created_at": iso(cb.created_at)} for cb in rows
        ],
    }
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if output == "-":
        click.echo(text)
    else:
        Path(output).write_text(text + "\n", encoding="utf-8")
        click.echo(f"Exported {len(data['callbacks'])} callbacks to {output}.", err=True)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_appcontext
def import_cmd(file: str) -> None:
    """Create callbacks from an export file (validated; nothing is written on error)."""
    from .extensions import db
    from .services import callbacks, signing

    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
        items = data["callbacks"] if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError("expected a list of callbacks")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file} is not a cbdash export: {exc}") from exc
    problems = []
    created = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            problems.append(f"#{n}: not an object")
            continue
        fields = {k: item[k] for k in callbacks.FIELDS if k in item}
        clean, errors = callbacks.validate(fields)
        secret = item.get("secret")
        if secret is not None and not (isinstance(secret, str) and secret.startswith(signing.SECRET_PREFIX)):
            errors["secret"] = "must be a whsec_ secret"
        if errors:
            problems.append(f"#{n}: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
            continue
        cb = callbacks.create(clean)
        if secret:
            cb.secret = secret
        if item.get("inactive_reason") and not cb.active:
            cb.inactive_reason = str(item["inactive_reason"])[:255]
        for extra in ("priority",):
            if isinstance(item.get(extra), int):
                setattr(cb, extra, item[extra])
        if item.get("failure_policy") in ("fail", "fallback"):
            cb.failure_policy = item["failure_policy"]
            cb.fallback_response = item.get("fallback_response")
        if isinstance(item.get("created_at"), str):
            try:
                when = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
                cb.created_at = when.astimezone(UTC).replace(tzinfo=None)
            except ValueError:
                pass
        created.append(cb)
    if problems:
        db.session.rollback()
        raise click.ClickException("nothing imported:\n  " + "\n  ".join(problems[:50]))
    db.session.commit()
    click.echo(f"Imported {len(created)} callbacks.")


@click.command()
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(0, 36500),
    default=None,
    help="Days to keep (default: CBDASH_RETENTION_DAYS).",
)
@with_appcontext
def prune(days: int | None) -> None:
    """Delete attempts, finished deliveries and payloads older than the retention age."""
    from .services import retention

    days = current_app.config["RETENTION_DAYS"] if days is None else days
    counts = retention.prune(timedelta(days=days))
    click.echo(
        f"Pruned {counts['attempts']} attempts, {counts['deliveries']} deliveries, "
        f"{counts['events']} events older than {days} days."
    )
