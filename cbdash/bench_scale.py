"""``cbdash bench --scale`` (also ``cbdash bench-scale``): page speed at size (SPEC §12).

Two throw-away databases are seeded side by side: a small install (1,000 attempts)
and a large one (10,000 callbacks, 1,000,000 attempts), with the rollups the
worker would have written. The four pages a person uses most -- the Callbacks
page, a tab switch, the monitoring page and a filtered delivery log -- are then
requested in turn against both, server-side through the Flask test client (the
app, SQLite included, runs in this process), and their best times compared. The
ratio uses CPU time: on a shared, busy machine wall time mostly measures how long
other processes held the CPU (best wall times and their ratio are printed too; on
an idle machine the two agree). The last line reads ``ratio scale=<largest ratio>``.

Never touches the configured database: everything lives in a temporary folder
(or ``--dir``, reused on the next run so a schema change can be measured fast).
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, Table, func, select, text

DEFINITIONS = (
    "order.created",
    "order.paid",
    "order.shipped",
    "order.cancelled",
    "order.refunded",
    "inventory.updated",
    "customer.created",
    "customer.updated",
    "redirect_cart_payment",
    "shipment.delivered",
    "cart.abandoned",
    "product.updated",
    "payment.failed",
    "subscription.renewed",
    "test_callback_system",
)
# Failure reasons as (error_class, status_code), weighted roughly as real receivers fail.
FAILURES = (
    ("http_status", 500),
    ("http_status", 503),
    ("http_status", 502),
    ("timeout", None),
    ("timeout", None),
    ("connect", None),
    ("http_status", 404),
    ("http_status", 400),
    ("dns", None),
    ("tls", None),
    ("redirect", 302),
)
RETRY_OFFSETS = (0, 5, 305, 2105, 9305, 27305, 63305, 99305)  # seconds since creation, per attempt
BATCH = 5000
PAGES = (
    ("Callbacks page", "/settings/callbacks", {}),
    (
        "Tab switch",
        "/settings/callbacks/table?status=inactive",
        {"HX-Request": "true", "HX-Target": "callbacks-panel"},
    ),
    ("Monitoring page", "/settings/callbacks/monitoring", {}),
    ("Filtered delivery log", "/settings/callbacks/deliveries?status=failed&window=7d", {}),
)
Echo = Callable[[str], None]


@dataclass
class Dataset:
    name: str
    callbacks: int
    attempts: int
    path: Path


def _chunks(rows: Iterator[dict[str, Any]], size: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ts(value: datetime | None) -> str | None:
    """A time as SQLAlchemy's SQLite dialect stores it (so string comparisons of times agree)."""
    return None if value is None else value.isoformat(" ", "microseconds")


def _bulk(conn: Connection, table: Table, names: list[str], rows: list[tuple]) -> None:
    """executemany straight to the driver, values pre-formatted: SQLAlchemy's per-row
    processing would cost more than the inserts themselves."""
    if not rows:
        return
    # Columns added to the models later: their plain Python defaults (else the server's).
    extra = {
        c.name: c.default.arg  # type: ignore[attr-defined]
        for c in table.columns
        if c.name not in names and c.default is not None and not callable(c.default.arg)  # type: ignore[attr-defined]
    }
    fixed = tuple(int(v) if isinstance(v, bool) else v for v in extra.values())
    columns = names + list(extra)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    conn.exec_driver_sql(sql, [row + fixed for row in rows] if fixed else rows)


EVENT_COLUMNS = ["id", "uid", "definition", "body", "source", "is_test", "created_at"]
DELIVERY_COLUMNS = [
    "id",
    "webhook_id",
    "event_id",
    "callback_id",
    "kind",
    "status",
    "status_detail",
    "attempt_count",
    "next_attempt_at",
    "enqueued_at",
    "last_status_code",
    "last_error",
    "last_duration_ms",
    "created_at",
    "finished_at",
]
ATTEMPT_COLUMNS = [
    "delivery_id",
    "number",
    "started_at",
    "duration_ms",
    "timings",
    "url",
    "request_headers",
    "status_code",
    "error_class",
    "error_message",
    "response_headers",
    "response_excerpt",
    "response_size",
    "response_truncated",
]


def _callback_rows(n: int, now: datetime, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        definition = DEFINITIONS[i % len(DEFINITIONS)]
        active = i % 10 != 0
        auto_disabled = not active and i % 20 == 0
        failing = active and i % 33 == 0
        last = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        yield {
            "id": i,
            "definition": definition,
            "url": f"https://hooks-{i % 997}.example.com/{definition}/{i}",
            "timeout": rng.choice((5, 5, 5, 10, 30)),
            "active": active,
            "inactive_reason": None
            if active
            else (
                "auto-disabled: failing for 24 h (12 failed attempts in a row)" if auto_disabled else "manual"
            ),
            "disabled_at": None if active else last,
            "description": "",
            "headers": {},
            "retry_schedule": None,
            "secret": f"whsec_{i:032d}",
            "consecutive_failures": 12 if auto_disabled else (4 if failing else 0),
            "failing_since": last - timedelta(hours=2) if (auto_disabled or failing) else None,
            "last_attempt_at": last,
            "last_status_code": 500 if (auto_disabled or failing) else 200,
            "last_error": "http_status" if (auto_disabled or failing) else None,
            "created_at": now - timedelta(seconds=rng.uniform(7 * 86400, 400 * 86400)),
            "updated_at": now,
        }


def seed(
    app: Flask, n_callbacks: int, n_attempts: int, now: datetime, echo: Echo, seed_value: int = 5
) -> None:
    """Fill an empty database: callbacks, events, deliveries, attempts and their rollups."""
    from .extensions import db
    from .models import Attempt, Callback, Delivery, Event, LatencyRollup, StatsRollup, User
    from .services import monitoring

    rng = random.Random(seed_value)
    with app.app_context():
        engine: Engine = db.engine
        builder = monitoring.RollupBuilder(keep_minutes_since=now - monitoring.KEEP_MINUTE_ROWS)
        with engine.begin() as conn:
            user = User(email="bench@example.com", role="admin")
            user.set_password("bench-password")
            conn.execute(
                User.__table__.insert(),  # type: ignore[attr-defined]
                [{"email": user.email, "role": "admin", "password_hash": user.password_hash, "active": True}],
            )
            for chunk in _chunks(_callback_rows(n_callbacks, now, rng)):
                conn.execute(Callback.__table__.insert(), chunk)  # type: ignore[attr-defined]
        started = time.perf_counter()
        made = 0
        delivery_id = 0
        span = 30 * 86400
        with engine.begin() as conn:
            events: list[tuple] = []
            deliveries: list[tuple] = []
            attempts: list[tuple] = []
            retry_at = now + timedelta(minutes=30)
            while made < n_attempts:
                delivery_id += 1
                cb = rng.randint(1, n_callbacks)
                created = now - timedelta(seconds=span * rng.random() ** 1.3)
                roll = rng.random()
                kind = (
                    "event"
                    if roll < 0.92
                    else "ping"
                    if roll < 0.95
                    else "redelivery"
                    if roll < 0.98
                    else "invoke"
                )
                outcome = rng.random()
                if outcome < 0.85:
                    status, tries = "succeeded", 1 if rng.random() < 0.9 else rng.randint(2, 3)
                elif outcome < 0.94:
                    status, tries = "failed", 1 if kind in ("ping", "invoke") else rng.randint(2, 8)
                elif outcome < 0.98:
                    status, tries = "retrying", rng.randint(1, 3)
                else:
                    status, tries = ("pending", 0) if outcome < 0.99 else ("skipped", 0)
                if kind in ("ping", "invoke") and status == "retrying":
                    status = "failed"
                tries = min(tries, n_attempts - made)
                if tries == 0 and status in ("succeeded", "failed", "retrying"):
                    status = "pending"
                uid = f"evt_{delivery_id:014d}bench"
                webhook_id = f"msg_{delivery_id:014d}"
                definition = DEFINITIONS[cb % len(DEFINITIONS)]
                created_text = _ts(created)
                body = (
                    f'{{"id":"{uid}","type":"{definition}","timestamp":"{created.isoformat()}Z",'
                    f'"data":{{"order":{delivery_id}}}}}'
                )
                events.append(
                    (
                        delivery_id,
                        uid,
                        definition,
                        body,
                        "ping" if kind == "ping" else "api",
                        int(kind == "ping"),
                        created_text,
                    )
                )
                headers = (
                    f'{{"Content-Type":"application/json","webhook-id":"{webhook_id}",'
                    '"webhook-signature":"••••••"}'
                )
                url = f"https://hooks-{cb % 997}.example.com/hook/{cb}"
                code: int | None = None
                error_class: str | None = None
                duration = 0.0
                at = created
                for number in range(1, tries + 1):
                    at = min(created + timedelta(seconds=RETRY_OFFSETS[number - 1]), now)
                    ok = status == "succeeded" and number == tries
                    error_class, code = (None, 200) if ok else rng.choice(FAILURES)
                    if error_class == "timeout":
                        duration = 5000.0 + rng.random() * 30
                    elif error_class in ("connect", "dns"):
                        duration = rng.uniform(0.5, 20)
                    else:
                        duration = rng.lognormvariate(4.6, 0.8)  # median ~100 ms
                    attempts.append(
                        (
                            delivery_id,
                            number,
                            _ts(at),
                            duration,
                            "{}",
                            url,
                            headers,
                            code,
                            error_class,
                            None if ok else f"{error_class} ({code})",
                            '{"content-type":"application/json"}' if code else "{}",
                            b'{"ok":true}' if ok else b"",
                            11 if ok else 0,
                            0,
                        )
                    )
                    builder.attempt(cb, at, duration, code, error_class)
                    made += 1
                final = status in ("succeeded", "failed")
                finished = at + timedelta(milliseconds=duration) if final else None
                if finished is not None:
                    builder.outcome(cb, finished, status)
                deliveries.append(
                    (
                        delivery_id,
                        webhook_id,
                        delivery_id,
                        cb,
                        kind,
                        status,
                        None if status == "succeeded" else "HTTP 500",
                        tries,
                        _ts(retry_at) if status in ("retrying", "pending") else None,
                        created_text,
                        code,
                        error_class,
                        duration if tries else None,
                        created_text,
                        _ts(finished),
                    )
                )
                if len(attempts) >= BATCH:
                    _bulk(conn, Event.__table__, EVENT_COLUMNS, events)  # type: ignore[arg-type]
                    _bulk(conn, Delivery.__table__, DELIVERY_COLUMNS, deliveries)  # type: ignore[arg-type]
                    _bulk(conn, Attempt.__table__, ATTEMPT_COLUMNS, attempts)  # type: ignore[arg-type]
                    events, deliveries, attempts = [], [], []
                    if made % 100_000 < BATCH:
                        echo(f"  {made:,} attempts written ({time.perf_counter() - started:.0f} s)")
            _bulk(conn, Event.__table__, EVENT_COLUMNS, events)  # type: ignore[arg-type]
            _bulk(conn, Delivery.__table__, DELIVERY_COLUMNS, deliveries)  # type: ignore[arg-type]
            _bulk(conn, Attempt.__table__, ATTEMPT_COLUMNS, attempts)  # type: ignore[arg-type]
            stats, latency = builder.rows()
            stamps: dict[datetime, str | None] = {}
            for table, rollups in ((StatsRollup.__table__, stats), (LatencyRollup.__table__, latency)):
                names = list(rollups[0]) if rollups else []
                for i in range(0, len(rollups), BATCH):
                    chunk = []
                    for r in rollups[i : i + BATCH]:
                        bucket = r["bucket"]
                        if bucket not in stamps:
                            stamps[bucket] = _ts(bucket)
                        r["bucket"] = stamps[bucket]
                        chunk.append(tuple(r.values()))
                    _bulk(conn, table, names, chunk)  # type: ignore[arg-type]
            rows = len(stats) + len(latency)
        echo(
            f"  seeded {n_callbacks:,} callbacks, {delivery_id:,} deliveries, {made:,} attempts, "
            f"{rows:,} rollup rows in {time.perf_counter() - started:.0f} s"
        )


def _app(path: Path, redis_url: str | None) -> Flask:
    from . import create_app

    return create_app(
        {
            "INSTANCE_PATH": str(path),
            "DATABASE_URL": f"sqlite:///{path / 'bench.sqlite3'}",
            "REDIS_URL": redis_url or "",
            "WTF_CSRF_ENABLED": False,
            "QUEUE_NAME": "cbdash-bench-scale",
            "SECRET_KEY": "bench-scale",
        }
    )


def _prepare(ds: Dataset, now: datetime, redis_url: str | None, echo: Echo) -> Flask:
    """An app on the dataset's database, seeded unless it already holds the right counts."""
    from .extensions import db
    from .models import Attempt, Callback

    ds.path.mkdir(parents=True, exist_ok=True)
    app = _app(ds.path, redis_url)
    with app.app_context():
        db.create_all()
        # Indexes added to the models since the database was seeded (create_all skips them).
        with db.engine.begin() as conn:
            for table in db.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
        have = (
            db.session.scalar(select(func.count()).select_from(Callback)),
            db.session.scalar(select(func.count()).select_from(Attempt)),
        )
        db.session.remove()
    if have == (ds.callbacks, ds.attempts):
        echo(f"{ds.name}: reusing {ds.path} ({ds.callbacks:,} callbacks, {ds.attempts:,} attempts)")
        return app
    if any(have):
        raise click.ClickException(f"{ds.path} holds other data ({have}); use an empty --dir")
    echo(f"{ds.name}: seeding {ds.callbacks:,} callbacks and {ds.attempts:,} attempts …")
    seed(app, ds.callbacks, ds.attempts, now, echo)
    return app


def _client(app: Flask) -> FlaskClient:
    client = app.test_client()
    response = client.post("/login", data={"email": "bench@example.com", "password": "bench-password"})
    if response.status_code != 302:
        raise click.ClickException(f"bench login failed ({response.status_code})")
    return client


def _time(client: FlaskClient, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(CPU ms, wall ms) of one request, server side (the app runs in this process)."""
    cpu, wall = time.process_time(), time.perf_counter()
    response = client.get(url, headers=headers)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if response.status_code != 200:
        raise click.ClickException(f"{url} answered {response.status_code}")
    return cpu * 1000, wall * 1000


def run_scale(
    *,
    echo: Echo = print,
    callbacks: int = 10_000,
    attempts: int = 1_000_000,
    baseline_callbacks: int = 250,
    baseline_attempts: int = 1_000,
    repeat: int = 20,
    workdir: str | None = None,
    redis_url: str | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Seed both datasets, time the four pages on each, print the ratios; returns them by page."""
    from .extensions import db
    from .models import utcnow

    now = utcnow()
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cbdash-scale-"))
    small = Dataset("baseline", baseline_callbacks, baseline_attempts, base / "small")
    large = Dataset("large", callbacks, attempts, base / "large")
    apps: dict[str, Flask] = {}
    try:
        small_app = apps[small.name] = _prepare(small, now, redis_url, echo)
        # One embedded Redis serves both apps (the queue panel reads it on the monitoring page).
        with small_app.app_context():
            from .queue import redis_url as resolve_redis

            shared_redis = redis_url or resolve_redis(small_app)
        large_app = apps[large.name] = _prepare(large, now, shared_redis, echo)
        clients = {small.name: _client(small_app), large.name: _client(large_app)}
        for app in apps.values():
            with app.app_context():
                db.session.execute(text("SELECT 1"))
        timings: dict[str, dict[str, list[tuple[float, float]]]] = {
            label: {small.name: [], large.name: []} for label, _, _ in PAGES
        }
        for label, url, headers in PAGES:
            for name in (small.name, large.name):  # warm caches and lazy imports
                for _ in range(2):
                    _time(clients[name], url, headers)
            # Interleaved, so drift on a shared machine hits both sides alike.
            for _ in range(repeat):
                for name in (small.name, large.name):
                    timings[label][name].append(_time(clients[name], url, headers))
        echo("")
        echo(
            f"{'page':<22} {f'{baseline_attempts:,} attempts':>22} "
            f"{f'{attempts:,} attempts':>22} {'ratio':>6} {'(wall)':>7}"
        )
        echo(f"{'':<22} {'cpu ms (wall ms)':>22} {'cpu ms (wall ms)':>22}")
        results: dict[str, tuple[float, float, float]] = {}
        for label, url, _ in PAGES:
            small_runs, large_runs = timings[label][small.name], timings[label][large.name]
            a, b = min(r[0] for r in small_runs), min(r[0] for r in large_runs)
            wa, wb = min(r[1] for r in small_runs), min(r[1] for r in large_runs)
            results[label] = (a, b, b / a if a else float("inf"))
            echo(
                f"{label:<22} {a:>12.1f} ({wa:>6.1f}) {b:>14.1f} ({wb:>6.1f}) {b / a:>6.2f} "
                f"{wb / wa:>7.2f}  {url}"
            )
        wall_medians = [
            statistics.median(r[1] for r in timings[label][name])
            for label, _, _ in PAGES
            for name in (small.name, large.name)
        ]
        echo(
            f"best of {repeat} interleaved runs; wall-time medians ranged "
            f"{min(wall_medians):.0f}–{max(wall_medians):.0f} ms"
        )
    finally:
        _close(apps.values())
        if workdir is None:  # a temporary folder: a gigabyte nobody will reuse
            shutil.rmtree(base, ignore_errors=True)
    worst = max(r[2] for r in results.values())
    echo(f"datasets kept in {base} (pass --dir to reuse them)" if workdir else "temporary datasets removed")
    echo(f"ratio scale={worst:.2f}")
    return results


def _close(apps: Iterable[Flask]) -> None:
    """Release database files and stop an embedded Redis started for the run."""
    from .extensions import db

    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        server = app.extensions.pop("cbdash_embedded_redis", None)
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]


@click.command("bench-scale")
@click.option("--callbacks", default=10_000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--attempts", default=1_000_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option(
    "--baseline-callbacks",
    default=250,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Enough for a full page on every tab (a tenth are inactive), so both sides render as many rows.",
)
@click.option("--baseline-attempts", default=1_000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--repeat", default=20, show_default=True, type=click.IntRange(3, 1000))
@click.option(
    "--dir",
    "workdir",
    default=None,
    type=click.Path(file_okay=False),
    help="Keep the seeded databases here and reuse them next time (default: a new temp folder).",
)
@click.option("--redis-url", default=None, help="Redis for the queue panel (default: an embedded one).")
def bench_scale(
    callbacks: int,
    attempts: int,
    baseline_callbacks: int,
    baseline_attempts: int,
    repeat: int,
    workdir: str | None,
    redis_url: str | None,
) -> None:
    """Page speed at size: four pages at 1,000 vs 1,000,000 attempts (SPEC §12)."""
    run_scale(
        echo=click.echo,
        callbacks=callbacks,
        attempts=attempts,
        baseline_callbacks=baseline_callbacks,
        baseline_attempts=baseline_attempts,
        repeat=repeat,
        workdir=workdir,
        redis_url=redis_url,
    )
