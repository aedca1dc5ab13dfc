"""Web side of delivery: after the database commit, put delivery ids on the queue.

Enqueueing never fails a request: if Redis is unreachable the deliveries stay
pending in the database and the reconciler enqueues them when Redis is back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select, update

from .constants import DeliveryStatus
from .extensions import db
from .models import Callback, Delivery, utcnow
from .queue import get_queue

log = logging.getLogger(__name__)
BATCH = 20
JOB_MARGIN = 30  # seconds of bookkeeping on top of the HTTP timeouts in a job


def _timeouts(ids: list[int]) -> dict[int, int]:
    rows = db.session.execute(
        select(Delivery.id, Callback.timeout)
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.id.in_(ids))
    ).all()
    return {r.id: r.timeout for r in rows}


def enqueue(
    ids: Iterable[int],
    *,
    at_front: bool = False,
    timeouts: dict[int, int] | None = None,
    stamped: bool = False,
) -> bool:
    """Queue deliveries by id in batches; False (logged) when Redis is unreachable.

    ``timeouts`` (delivery id -> HTTP timeout) spares a query when the caller knows
    them; ``stamped`` means the rows were committed with ``enqueued_at`` already set
    (the API's hot path), so only a failure needs a write: clearing the stamp lets
    the reconciler queue them without waiting for the requeue delay.
    """
    from .jobs import deliver

    ids = list(ids)
    if not ids:
        return True
    timeouts = timeouts if timeouts is not None else _timeouts(ids)
    try:
        queue = get_queue()
        with queue.connection.pipeline() as pipe:
            for start in range(0, len(ids), BATCH):
                chunk = ids[start : start + BATCH]
                # RQ's job timeout is derived from the HTTP timeouts, never shorter.
                job_timeout = sum(timeouts.get(i, 30) for i in chunk) + JOB_MARGIN
                queue.enqueue(
                    deliver,
                    chunk,
                    job_timeout=job_timeout,
                    at_front=at_front,
                    result_ttl=0,
                    failure_ttl=86400,
                    pipeline=pipe,
                )
            pipe.execute()
    except Exception as exc:  # noqa: BLE001 - Redis down must not lose the request
        log.warning("could not enqueue %d deliveries (%s); the reconciler will", len(ids), exc)
        if stamped:
            db.session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.PENDING)
                .values(enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
        return False
    if not stamped:
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return True


def schedule(delivery_id: int, when: datetime, timeout: int) -> bool:
    """Queue a retry for ``when`` (naive UTC) on RQ's scheduler."""
    return schedule_many([delivery_id], when, timeout)


def schedule_many(delivery_ids: list[int], when: datetime, timeout: int) -> bool:
    """Queue one job for ``delivery_ids`` at ``when`` (naive UTC); ``timeout`` is the largest HTTP timeout."""
    from rq.registry import ScheduledJobRegistry

    from .jobs import deliver

    at = when.replace(tzinfo=UTC)
    try:
        queue = get_queue()
        with queue.connection.pipeline() as pipe:
            job = queue.enqueue_at(
                at,
                deliver,
                list(delivery_ids),
                job_timeout=timeout * len(delivery_ids) + JOB_MARGIN,
                result_ttl=0,
                failure_ttl=86400,
                pipeline=pipe,
            )
            # RQ scores by whole seconds (truncated: up to a second early). The exact
            # time instead: cbdash's scheduler reads it precisely, and a stock RQ
            # scheduler, comparing whole seconds, fires at the next one -- never early.
            pipe.zadd(ScheduledJobRegistry(queue=queue).key, {job.id: at.timestamp()})
            pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not schedule deliveries %s (%s); the reconciler will", delivery_ids[:5], exc)
        return False
    return True


def enqueue_alert(callback_id: int) -> bool:
    """Queue the alert webhook for an auto-disabled callback, when ``CBDASH_ALERT_URL`` is set."""
    from flask import current_app
    from rq import Retry

    from .jobs import send_alert

    if not current_app.config.get("ALERT_URL"):
        return False
    try:
        get_queue().enqueue(
            send_alert,
            callback_id,
            job_timeout=60,
            result_ttl=0,
            failure_ttl=7 * 86400,
            retry=Retry(max=3, interval=[10, 60, 300]),
        )
    except Exception as exc:  # noqa: BLE001 - the banner still shows it
        log.warning("could not queue the alert for callback %s (%s)", callback_id, exc)
        return False
    return True
