"""The cbdash worker: a non-forking RQ worker with the scheduler and the reconciler.

RQ's default worker forks per job, which costs more than a delivery; a
SimpleWorker runs jobs in-process. ``with_scheduler=True`` always: retries are
scheduled jobs. The reconciler runs on one worker at a time (a Redis lock).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from flask import Flask
from rq import SimpleWorker

from .queue import get_queue, get_redis

log = logging.getLogger(__name__)
RECONCILER_LOCK = "cbdash:reconciler"


def reconcile_once(app: Flask) -> None:
    from . import jobs

    with app.app_context():
        try:
            jobs.reconcile()
        except Exception:  # noqa: BLE001 - the loop must survive a DB or Redis blip
            log.exception("reconciler pass failed")


def _reconciler_loop(app: Flask, stop: threading.Event, interval: float, owner: str) -> None:
    redis = get_redis(app)
    ttl_ms = int(interval * 3 * 1000)
    while not stop.wait(interval):
        try:
            # Only one reconciler across all workers and hosts: whoever holds the lock.
            if not redis.set(RECONCILER_LOCK, owner, nx=True, px=ttl_ms):
                if redis.get(RECONCILER_LOCK) != owner.encode():
                    continue
                redis.pexpire(RECONCILER_LOCK, ttl_ms)
        except Exception:  # noqa: BLE001
            log.warning("reconciler: Redis unreachable, will retry")
            continue
        reconcile_once(app)


def run(app: Flask, *, burst: bool = False, name: str | None = None) -> None:
    """Run one worker until stopped (or, with ``burst``, until the queue is empty)."""
    owner = name or f"cbdash-{socket.gethostname()}-{os.getpid()}"
    queue = get_queue(app)
    stop = threading.Event()
    reconcile_once(app)
    thread = None
    if not burst:
        interval = float(app.config.get("RECONCILE_INTERVAL", 2.0))
        thread = threading.Thread(
            target=_reconciler_loop,
            args=(app, stop, interval, owner),
            daemon=True,
            name="cbdash-reconciler",
        )
        thread.start()
    from . import jobs

    # No long-lived app context: each job pushes its own, so its session is fresh.
    jobs.use_app(app)
    worker = SimpleWorker([queue], connection=queue.connection, name=owner)
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    finally:
        stop.set()
