"""Worker side: thin RQ entry points. They take ids, reload rows and call services."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Flask, current_app, has_app_context

from .models import utcnow

log = logging.getLogger(__name__)
_app: Flask | None = None


def use_app(app: Flask) -> None:
    """Make jobs in this process run in ``app`` (the worker sets it once)."""
    global _app
    _app = app


def _ensure_app():  # type: ignore[no-untyped-def]
    """A fresh app context (and so a fresh session) per job.

    In a worker, ``use_app`` names the app; without it, an active context is
    reused (jobs run inline, as in tests) or an app is created once per process.
    """
    global _app
    if _app is None:
        if has_app_context():
            return None
        from . import create_app

        _app = create_app()
    ctx = _app.app_context()
    ctx.push()
    return ctx


def deliver(delivery_ids: list[int]) -> None:
    """Attempt the batch's deliveries (concurrently); schedule the retries and alerts they ask for."""
    from .extensions import db
    from .services import batch

    ids = []
    for value in delivery_ids:
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            log.error("deliver: ignoring delivery id %r", value)
    ctx = _ensure_app()
    try:
        batch.process_batch(ids, after_attempt)
    except Exception:
        # Nothing is lost: unrecorded claims lapse and the reconciler queues them again.
        db.session.rollback()
        log.exception("delivery batch %s failed unexpectedly", ids[:20])
    finally:
        if ctx is not None:
            ctx.pop()  # app-context teardown also removes the session


def after_attempt(outcome) -> None:  # type: ignore[no-untyped-def]
    """Queue what an attempt's outcome asks for: its retry, the auto-disable alert."""
    from . import dispatch

    if outcome.retry_at is not None:
        dispatch.schedule(outcome.delivery_id, outcome.retry_at, outcome.timeout)
    if outcome.disabled_callback_id is not None:
        dispatch.enqueue_alert(outcome.disabled_callback_id)


def send_alert(callback_id: int) -> None:
    """POST the "callback auto-disabled" alert to ``CBDASH_ALERT_URL``; raise so RQ retries."""
    from .services import alerts

    ctx = _ensure_app()
    try:
        alerts.send_disabled_alert(callback_id)
    finally:
        if ctx is not None:
            ctx.pop()


# Redis holds this key while it still has everything cbdash queued. When it is
# missing, Redis lost its data (flushed, restarted empty, or never used) and the
# reconciler queues every open delivery again from the database. While that runs
# the value is "recovering:<last id done>", so a long recovery spans passes.
EPOCH_KEY = "cbdash:queue-epoch"
RECOVER_PER_PASS = 5000


def reconcile() -> dict[str, int]:
    """Re-enqueue what the queue lost and reclaim what dead workers held."""
    from . import dispatch
    from .queue import get_queue
    from .services import delivery

    ctx = _ensure_app()
    try:
        now = utcnow()
        cfg = current_app.config
        stale = delivery.reclaim_stale(now)
        queue = get_queue()
        redis = queue.connection
        marker = redis.get(EPOCH_KEY)
        recovered = 0
        if marker is None or marker.startswith(b"recovering:"):
            recovered = _recover_all(queue, marker)
        lost = delivery.overdue(
            now,
            due_grace=timedelta(seconds=cfg.get("RECONCILE_DUE_GRACE", 10)),
            requeue_after=timedelta(seconds=cfg.get("RECONCILE_REQUEUE_AFTER", 60)),
            queued_before=_oldest_queued(queue),
        )
        ids = stale + [i for i in lost if i not in stale]
        if ids:
            log.warning("reconciler: re-enqueuing %d deliveries", len(ids))
            dispatch.enqueue(ids)
        return {"reclaimed": len(stale), "requeued": len(ids), "recovered": recovered}
    finally:
        if ctx is not None:
            ctx.pop()  # app-context teardown also removes the session


def _recover_all(queue, marker: bytes | None) -> int:  # type: ignore[no-untyped-def]
    """Queue (or schedule) every open delivery again, a bounded number per pass."""
    from . import dispatch
    from .services import delivery

    redis = queue.connection
    after = int(marker.split(b":", 1)[1]) if marker else 0
    if marker is None:
        log.warning("reconciler: Redis holds no cbdash state; re-queueing open deliveries from the database")
        redis.set(EPOCH_KEY, "recovering:0")
    now = utcnow()
    done = 0
    while done < RECOVER_PER_PASS:
        rows = delivery.open_deliveries(after, limit=1000)
        if not rows:
            redis.set(EPOCH_KEY, f"ok:{now.isoformat()}")
            break
        due = [r[0] for r in rows if r[1] is None or r[1] <= now]
        if due and not dispatch.enqueue(due):
            return done  # Redis went away again; the marker says where to resume
        for delivery_id, when, timeout in rows:
            if when is not None and when > now:
                dispatch.schedule(delivery_id, when, timeout)
        after = rows[-1][0]
        done += len(rows)
        redis.set(EPOCH_KEY, f"recovering:{after}")
    return done


def _oldest_queued(queue) -> datetime | None:  # type: ignore[no-untyped-def]
    """When the oldest of the first few queued jobs was queued (naive UTC); None if empty."""
    from rq.job import Job

    job_ids = queue.get_job_ids(0, 10)
    if not job_ids:
        return None
    times = [
        j.enqueued_at.replace(tzinfo=None)
        for j in Job.fetch_many(job_ids, connection=queue.connection)
        if j is not None and j.enqueued_at is not None
    ]
    # Between queueing a job and stamping the rows a few milliseconds pass.
    return min(times) - timedelta(seconds=1) if times else None
