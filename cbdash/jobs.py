"""Worker side: thin RQ entry points. They take ids, reload rows and call services."""

from __future__ import annotations

import logging
from datetime import timedelta

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
    """Attempt each delivery in the batch; schedule the retries it asks for."""
    from . import dispatch
    from .extensions import db
    from .services import delivery

    ctx = _ensure_app()
    try:
        for delivery_id in delivery_ids:
            try:
                outcome = delivery.process(int(delivery_id))
            except Exception:
                # One bad delivery must not stop the batch; the reconciler retries it.
                db.session.rollback()
                log.exception("delivery %s failed unexpectedly", delivery_id)
                continue
            if outcome is not None and outcome.retry_at is not None:
                dispatch.schedule(outcome.delivery_id, outcome.retry_at, outcome.timeout)
    finally:
        if ctx is not None:
            ctx.pop()  # app-context teardown also removes the session


def reconcile() -> dict[str, int]:
    """Re-enqueue what the queue lost and reclaim what dead workers held."""
    from . import dispatch
    from .services import delivery

    ctx = _ensure_app()
    try:
        now = utcnow()
        stale = delivery.reclaim_stale(now)
        cfg = current_app.config
        lost = delivery.overdue(
            now,
            due_grace=timedelta(seconds=cfg.get("RECONCILE_DUE_GRACE", 10)),
            requeue_after=timedelta(seconds=cfg.get("RECONCILE_REQUEUE_AFTER", 60)),
        )
        ids = stale + [i for i in lost if i not in stale]
        if ids:
            log.info("reconciler: re-enqueuing %d deliveries", len(ids))
            dispatch.enqueue(ids)
        return {"reclaimed": len(stale), "requeued": len(ids)}
    finally:
        if ctx is not None:
            ctx.pop()  # app-context teardown also removes the session
