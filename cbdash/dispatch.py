"""Web side of delivery: after the database commit, put delivery ids on the queue.

Enqueueing never fails a request: if Redis is unreachable the deliveries stay
pending in the database and the reconciler enqueues them when Redis is back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select, update

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


def enqueue(ids: Iterable[int], *, at_front: bool = False) -> bool:
    """Queue deliveries by id in batches; False (logged) when Redis is unreachable."""
    from .jobs import deliver

    ids = list(ids)
    if not ids:
        return True
    timeouts = _timeouts(ids)
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
        return False
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
    from .jobs import deliver

    try:
        get_queue().enqueue_at(
            when.replace(tzinfo=UTC),
            deliver,
            [delivery_id],
            job_timeout=timeout + JOB_MARGIN,
            result_ttl=0,
            failure_ttl=86400,
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("could not schedule delivery %s (%s); the reconciler will", delivery_id, exc)
        return False
    return True
