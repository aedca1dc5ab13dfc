"""Every setting cbdash reads, documented once.

Each setting comes from the environment (``CBDASH_<NAME>``) or from
``instance/config.py`` (``<NAME> = ...``); the environment wins. Defaults
suit a laptop: SQLite and an embedded Redis in the instance folder.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

DEFAULT_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"

# name -> (default, parser, help).  README's settings table mirrors this.
SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "DATABASE_URL": (None, str, "SQLAlchemy URL; default: SQLite file in the instance folder"),
    "REDIS_URL": (None, str, "Redis for RQ; default: embedded Redis in the instance folder"),
    "SECRET_KEY": (None, str, "session signing key; default: generated once, kept in instance"),
    "ALLOWED_TARGETS": (
        "",
        str,
        "comma-separated CIDRs and host names the SSRF guard lets through",
    ),
    "TIMEZONE": ("UTC", str, "display time zone (IANA name)"),
    "MAX_TIMEOUT": (30, int, "largest callback timeout allowed, seconds"),
    "RETRY_SCHEDULE": (DEFAULT_RETRY_SCHEDULE, str, "seconds between attempts, comma-separated"),
    "RETRY_JITTER": (0.2, float, "relative jitter applied to each retry delay (0.2 = ±20 %)"),
    "PAYLOAD_LIMIT": (256 * 1024, int, "largest event payload accepted by the API, bytes"),
    "RESPONSE_READ_LIMIT": (64 * 1024, int, "most response bytes read per attempt"),
    "RESPONSE_EXCERPT": (4 * 1024, int, "response bytes stored per attempt"),
    "SECRET_OVERLAP_HOURS": (24.0, float, "hours a rotated-out secret keeps signing"),
    "FAILING_AFTER": (3, int, "consecutive failed attempts before a callback shows as failing"),
    "DISABLE_AFTER_HOURS": (24.0, float, "hours of continuous failure before auto-disable"),
    "DISABLE_MIN_FAILURES": (10, int, "failed attempts needed (with the hours) to auto-disable"),
    "ALERT_URL": ("", str, "optional URL that receives a JSON alert when a callback is disabled"),
    "ALERT_SECRET": ("", str, "whsec_ secret that signs alert webhooks (Standard Webhooks); empty: unsigned"),
    "RETENTION_DAYS": (30, int, "attempts and payloads older than this are pruned"),
    "PAGE_SIZE": (25, int, "rows per page in tables"),
    "BREAKER_FAILURES": (5, int, "failed sync invocations within the window that open a breaker (0: off)"),
    "BREAKER_WINDOW": (60, int, "seconds in which BREAKER_FAILURES failures open a callback's breaker"),
    "BREAKER_COOLDOWN": (30, int, "seconds an open breaker skips the receiver before one trial call"),
    "METRICS_TOKEN": ("", str, "bearer token for /metrics; empty: loopback clients only"),
    "QUEUE_NAME": ("cbdash", str, "RQ queue name"),
    "DELIVERY_CONCURRENCY": (16, int, "HTTP attempts one worker process runs at once (its sending threads)"),
    "TRUSTED_PROXIES": (
        0,
        int,
        "reverse proxies in front of cbdash whose X-Forwarded-For/-Proto/-Host are trusted",
    ),
    "SECURE_COOKIES": (
        False,
        lambda v: _parse_bool(v),
        "always mark cookies Secure (they are anyway on HTTPS requests)",
    ),
}


def _parse_bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load(app_config: dict[str, Any], instance_path: Path, overrides: dict[str, Any] | None = None) -> None:
    """Fill ``app_config`` from defaults, instance/config.py, the environment, then overrides."""
    for name, (default, parser, _help) in SETTINGS.items():
        app_config.setdefault(name, default)
        env = os.environ.get(f"CBDASH_{name}")
        if env is None and name in {"DATABASE_URL", "REDIS_URL"}:
            env = os.environ.get(name)
        if env not in (None, ""):
            try:
                app_config[name] = parser(env)
            except ValueError as exc:
                raise SystemExit(f"CBDASH_{name}={env!r} is not valid: {exc}") from exc
    app_config.update(overrides or {})
    if not app_config.get("DATABASE_URL"):
        app_config["DATABASE_URL"] = f"sqlite:///{instance_path / 'cbdash.sqlite3'}"
    app_config["SQLALCHEMY_DATABASE_URI"] = _normalise_db_url(app_config["DATABASE_URL"])
    if app_config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Web threads and the reconciler share the file: wait for locks instead of failing,
        # and take turns through the write gate rather than SQLite's sleeping retries.
        connect_args: dict[str, Any] = {"timeout": 30}
        database = make_url(app_config["SQLALCHEMY_DATABASE_URI"]).database
        if database and database != ":memory:" and not database.startswith("file:"):
            from .sqlite_gate import connection_factory

            connect_args["factory"] = connection_factory(database)
        app_config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": connect_args})
    else:
        # No ping on every checkout: ``extensions.ping_when_idle`` pings a connection
        # that has sat in the pool for a while, not one in constant use.
        app_config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": False})
    if not app_config.get("SECRET_KEY"):
        app_config["SECRET_KEY"] = _instance_secret(instance_path)
    app_config["RETRY_DELAYS"] = parse_schedule(str(app_config["RETRY_SCHEDULE"]))


def _normalise_db_url(url: str) -> str:
    # Heroku-style URLs and plain postgresql:// use psycopg 3, the driver we ship.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def parse_schedule(text: str) -> list[int]:
    """Parse ``"5,300,1800"`` into delays in seconds; raise SystemExit when invalid."""
    try:
        delays = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SystemExit(f"CBDASH_RETRY_SCHEDULE={text!r}: comma-separated seconds") from exc
    if any(d < 0 for d in delays):
        raise SystemExit(f"CBDASH_RETRY_SCHEDULE={text!r}: delays must be >= 0")
    return delays


def _instance_secret(instance_path: Path) -> str:
    # Generated once and kept so sessions survive restarts; never committed.
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process (web or worker) won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
