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
    for command in (up, worker, create_user, create_token, demo, export_cmd, import_cmd, prune, bench):
        app.cli.add_command(command)
    from .bench_scale import bench_scale  # page speed at size (cbdash bench --scale runs it too)

    app.cli.add_command(bench_scale)
    from .bench_flood import bench_flood  # does a flood on /hooks/<slug> slow the dashboard?

    app.cli.add_command(bench_flood)


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


def _role_option():  # type: ignore[no-untyped-def]
    return click.option(
        "--role",
        type=click.Choice([r.value for r in Role]),
        default=Role.ADMIN.value,
        show_default=True,
    )


@click.command("create-user")
@click.option("--email", required=True, help="Login email (stored lowercase).")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="At least 10 characters (prompted when omitted).",
)
@_role_option()
@with_appcontext
def create_user(email: str, password: str, role: str) -> None:
    """Create a login."""
    from .extensions import db
    from .services import audit, users

    if not password:
        raise click.BadParameter("enter a password", param_hint="--password")
    clean, errors = users.validate_new(email, role, password)
    if errors:
        hint = {"email": "--email", "role": "--role", "password": "--password"}
        name = next(iter(errors))
        raise click.BadParameter(errors[name], param_hint=hint.get(name, name))
    user = users.create(clean["email"], clean["role"], password)
    db.session.flush()
    audit.record("user.create", "user", user.id, {"email": user.email, "role": user.role})
    db.session.commit()
    click.echo(f"Created {user.role} {user.email}.")


@click.command("create-token")
@click.option("--name", required=True, help="What uses the token, e.g. storefront-prod.")
@_role_option()
@with_appcontext
def create_token(name: str, role: str) -> None:
    """Create an API token; it is printed once, alone on the last line."""
    from .extensions import db
    from .services import audit, tokens

    errors = tokens.validate(name, role)
    if errors:
        field = next(iter(errors))
        raise click.BadParameter(errors[field], param_hint=f"--{field}")
    name = name.strip()
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


EXPORT_VERSION = 1
# Configuration that defines a callback; runtime state (health, breaker) starts fresh.
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
    "previous_secret",
    "priority",
    "failure_policy",
    "fallback_response",
)
EXPORT_TIMES = ("created_at", "disabled_at", "previous_secret_expires_at")


def _exact_iso(dt: datetime | None) -> str | None:
    # Microseconds kept: an export must import back to the same values.
    return None if dt is None else dt.isoformat(timespec="microseconds") + "Z"


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not an ISO 8601 time")
    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def _valid_secret(value: object) -> bool:
    import base64
    import binascii

    from .services.signing import SECRET_PREFIX

    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX) or len(value) > 128:
        return False
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(key) >= 24  # SPEC §7: at least 24 random bytes


@click.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="File to write (default: standard output).",
)
@with_appcontext
def export_cmd(output: str) -> None:
    """Write all callbacks as JSON (includes signing secrets: keep the file safe)."""
    from .extensions import db
    from .models import Callback

    rows = db.session.scalars(select(Callback).where(Callback.deleted_at.is_(None)).order_by(Callback.id))
    data = {
        "version": EXPORT_VERSION,
        "callbacks": [
            {
                **{f: getattr(cb, f) for f in EXPORT_FIELDS},
                **{f: _exact_iso(getattr(cb, f)) for f in EXPORT_TIMES},
            }
            for cb in rows
        ],
    }
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if output == "-":
        click.echo(text)
        return
    try:
        Path(output).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    click.echo(f"Exported {len(data['callbacks'])} callbacks to {output}.", err=True)


def _import_item(item: object) -> tuple[dict | None, list[str]]:  # type: ignore[type-arg]
    """Validate one exported callback; return (values to apply, problems)."""
    from .services import callbacks

    if not isinstance(item, dict):
        return None, ["not an object"]
    fields = {k: item[k] for k in callbacks.FIELDS if k in item}
    clean, errors = callbacks.validate(fields)
    problems = [f"{k}: {v}" for k, v in errors.items()]
    extra: dict[str, object] = {}
    for name in ("secret", "previous_secret"):
        value = item.get(name)
        if value is None and name == "previous_secret":
            continue
        if value is None or not _valid_secret(value):
            problems.append(f"{name}: must be a whsec_ secret of at least 24 bytes")
        else:
            extra[name] = value
    for name in EXPORT_TIMES:
        if item.get(name) is None:
            continue
        try:
            extra[name] = _parse_time(item[name])
        except ValueError:
            problems.append(f"{name}: {item[name]!r} is not an ISO 8601 time")
    if "priority" in item:
        if isinstance(item["priority"], int) and not isinstance(item["priority"], bool):
            extra["priority"] = item["priority"]
        else:
            problems.append("priority: must be a whole number")
    if "failure_policy" in item:
        if item["failure_policy"] in ("fail", "fallback"):
            extra["failure_policy"] = item["failure_policy"]
            extra["fallback_response"] = item.get("fallback_response")
        else:
            problems.append("failure_policy: must be fail or fallback")
    reason = item.get("inactive_reason")
    if reason is not None and not isinstance(reason, str):
        problems.append("inactive_reason: must be text")
    elif reason and clean.get("active") is False:
        extra["inactive_reason"] = reason[:255]
    return ({**clean, **extra} if not problems else None), problems


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@with_appcontext
def import_cmd(file: str) -> None:
    """Create callbacks from an export file (all validated first; nothing is written on error).

    Callbacks already present (same definition, URL and secret) are skipped, so an
    import can be repeated safely.
    """
    from .extensions import db
    from .models import Callback
    from .services import callbacks

    try:
        data = json.loads(Path(file).read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file} is not a cbdash export (invalid JSON: {exc})") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from exc
    items = data.get("callbacks") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise click.ClickException(f'{file} is not a cbdash export (expected {{"callbacks": [...]}})')
    version = data.get("version", EXPORT_VERSION) if isinstance(data, dict) else EXPORT_VERSION
    if version != EXPORT_VERSION:
        raise click.ClickException(
            f"{file} has export version {version!r}; this cbdash reads {EXPORT_VERSION}"
        )
    problems: list[str] = []
    ready: list[dict] = []  # type: ignore[type-arg]
    for n, item in enumerate(items, 1):
        values, errors = _import_item(item)
        if errors:
            problems.append(f"callback #{n}: " + "; ".join(errors))
        elif values is not None:
            ready.append(values)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise click.ClickException(f"nothing imported; fix these and run again:\n  {shown}{more}")
    existing = {
        (r.definition, r.url, r.secret)
        for r in db.session.execute(
            select(Callback.definition, Callback.url, Callback.secret).where(Callback.deleted_at.is_(None))
        )
    }
    created = skipped = 0
    for values in ready:
        key = (values["definition"], values["url"], values["secret"])
        if key in existing:
            skipped += 1
            continue
        existing.add(key)
        cb = callbacks.create(values)
        for name in ("secret", "previous_secret", "priority", "failure_policy", "fallback_response"):
            if name in values:
                setattr(cb, name, values[name])
        for name in EXPORT_TIMES:
            if name in values:
                setattr(cb, name, values[name])
        if not cb.active:
            cb.inactive_reason = values.get("inactive_reason") or cb.inactive_reason
            cb.disabled_at = values.get("disabled_at") or cb.disabled_at
        created += 1
    db.session.commit()
    click.echo(
        f"Imported {created} callbacks" + (f" ({skipped} already present, skipped)." if skipped else ".")
    )


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
        f"{counts['events']} events, {counts['inbound_messages']} inbound messages "
        f"older than {days} days."
    )


@click.command()
@click.option("--deliveries", default=2000, show_default=True, type=click.IntRange(100, 1_000_000))
@click.option("--requests", "requests_", default=1000, show_default=True, type=click.IntRange(50, 1_000_000))
@click.option("--latency-events", default=100, show_default=True, type=click.IntRange(10, 10_000))
@click.option(
    "--clients", default=4, show_default=True, type=click.IntRange(1, 64), help="API client threads."
)
@click.option("--web-workers", default=2, show_default=True, type=click.IntRange(1, 32))
@click.option("--web-threads", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--database-url", default=None, help="Database to measure (default: configured, else a temp SQLite)."
)
@click.option("--redis-url", default=None, help="Redis to use (default: configured, else an embedded one).")
@click.option("--scale", is_flag=True, help="Run the page-speed-at-size benchmark instead.")
def bench(
    deliveries: int,
    requests_: int,
    latency_events: int,
    clients: int,
    web_workers: int,
    web_threads: int,
    database_url: str | None,
    redis_url: str | None,
    scale: bool,
) -> None:
    """Measure delivery throughput, latency and ingestion against plain baselines (SPEC §12)."""
    if scale:
        _bench_scale(redis_url)
        return
    from . import bench as bench_mod

    options = bench_mod.Options(
        deliveries=deliveries,
        requests=requests_,
        latency_events=latency_events,
        clients=clients,
        web_workers=web_workers,
        web_threads=web_threads,
        database_url=database_url,
        redis_url=redis_url,
    )
    try:
        result = bench_mod.run(options, echo=click.echo)
    except Exception as exc:  # noqa: BLE001 - a failed run explains itself, no traceback
        raise click.ClickException(f"bench failed: {type(exc).__name__}: {exc}") from exc
    bench_mod.report(result, echo=click.echo)
    if result.problems:
        raise SystemExit(1)


def _bench_scale(redis_url: str | None) -> None:
    import inspect

    try:
        from .bench_scale import run_scale
    except ImportError as exc:
        raise click.ClickException(
            f"the scale benchmark is not available in this version (cbdash.bench_scale: {exc})"
        ) from exc
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    offered = {"app": app, "echo": click.echo, "redis_url": redis_url}
    params = inspect.signature(run_scale).parameters
    with app.app_context():
        run_scale(**{k: v for k, v in offered.items() if k in params})
