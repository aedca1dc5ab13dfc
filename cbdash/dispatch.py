"""Web side of delivery: after the database commit, put delivery ids on the queue.

Enqueueing never fails a request: if Redis is unreachable the deliveries stay
pending in the database and the reconciler enqueues them when Redis is back.

The API's hot path does not build RQ jobs itself: ``ring`` appends the new
delivery ids to a ready list in one Redis command, and a dispatcher thread in
every worker (``drain_ready``) turns whatever has gathered there into RQ jobs of
up to ``READY_JOB_SIZE`` deliveries. Building a job costs the web process more
than writing the event; on the worker, one job then carries many events.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Flask, current_app
from sqlalchemy import select, update

from .constants import DeliveryStatus
from .extensions import db
from .models import Callback, Delivery, utcnow
from .queue import get_queue, get_redis

log = logging.getLogger(__name__)
BATCH = 20
JOB_MARGIN = 30  # seconds of bookkeeping on top of the HTTP timeouts in a job
READY_JOB_SIZE = 50  # deliveries per job made from the ready list (the worker's batch limit)
READY_TAKE = 200  # ready-list entries a dispatcher takes at once


def ready_key(queue_name: str) -> str:
    """The Redis list where the API leaves committed delivery ids for the workers' dispatchers."""
    return f"cbdash:ready:{queue_name}"


def ring(ids: list[int]) -> bool:
    """Hand committed, stamped deliveries to the workers' dispatchers in one Redis command.

    False (logged, stamps cleared for the reconciler) when Redis is unreachable.
    """
    if not ids:
        return True
    try:
        get_redis().rpush(ready_key(current_app.config["QUEUE_NAME"]), ",".join(map(str, ids)))
    except Exception as exc:  # noqa: BLE001 - Redis down must not lose the request
        log.warning("could not hand %d deliveries over (%s); the reconciler will", len(ids), exc)
        _clear_stamps(ids)
        return False
    return True


class Ringer:
    """One thread per web process that hands committed deliveries to Redis, off the request path.

    A request only appends its delivery ids here; the thread pushes whatever has
    gathered in one RPUSH. Should the process die in between, the deliveries are
    committed and stamped, and the reconciler queues them after its requeue delay.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._wake = threading.Event()
        self._flushing = threading.Lock()  # a flush waits for one under way: then all is handed over
        self._pid = 0

    def add(self, ids: list[int]) -> None:
        with self._lock:
            self._pending.extend(ids)
            if self._pid != os.getpid():  # first use in this process (or a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="cbdash-ringer").start()
                atexit.register(self.flush)
            self._wake.set()

    def flush(self) -> None:
        """Push what is pending now, in the calling thread (after any push under way)."""
        with self._flushing:
            with self._lock:
                ids, self._pending = self._pending, []
                self._wake.clear()
            if ids:
                with self.app.app_context():
                    try:
                        ring(ids)
                    except Exception:  # noqa: BLE001 - stamps stay: the reconciler queues them later
                        log.exception("could not hand %d deliveries over", len(ids))

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self.flush()


def ring_soon(ids: list[int]) -> None:
    """Hand committed, stamped deliveries to the workers without waiting for Redis (see ``Ringer``)."""
    if ids:
        _ringer(current_app._get_current_object()).add(ids)  # type: ignore[attr-defined]


def flush_rings(app: Flask) -> None:
    """Push this process's pending hand-overs now (burst workers and tests, before reading the list)."""
    ringer = app.extensions.get("cbdash_ringer")
    if ringer is not None:
        ringer.flush()


def _ringer(app: Flask) -> Ringer:
    ringer = app.extensions.get("cbdash_ringer")
    if ringer is None:
        ringer = app.extensions.setdefault("cbdash_ringer", Ringer(app))
    return ringer


def parse_ready(entry: bytes | str) -> list[int]:
    """The delivery ids of a ready-list entry; none for a malformed one."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    try:
        return [int(i) for i in text.split(",") if i]
    except ValueError:
        log.warning("ignored a malformed ready-list entry %r (the reconciler will)", text[:80])
        return []


@dataclass(frozen=True)
class Drained:
    """What one pass over the ready list did."""

    queued: int  # deliveries turned into jobs
    backlog: int  # jobs that were already waiting in the queue: the workers are busy


def drain_ready(block: float = 0.0) -> Drained:
    """Turn the ready list's entries into RQ jobs (waiting up to ``block`` s for one).

    Should this process die between taking entries and queueing them, their
    deliveries are still pending in the database and the reconciler queues them.
    """
    queue = get_queue()
    conn = queue.connection
    key = ready_key(queue.name)
    entries: list[bytes] = []
    if block > 0:
        got = conn.blpop([key], timeout=block)
        if got is None:
            return Drained(0, 0)
        entries.append(got[1])
    with conn.pipeline() as pipe:  # MULTI: no two dispatchers take the same entries
        pipe.lrange(key, 0, READY_TAKE - 1)
        pipe.ltrim(key, READY_TAKE, -1)
        pipe.llen(queue.key)
        taken, _, backlog = pipe.execute()
    entries.extend(taken)
    ids = list(dict.fromkeys(i for entry in entries for i in parse_ready(entry)))
    if ids:
        enqueue(ids, stamped=True, size=READY_JOB_SIZE)
    return Drained(len(ids), int(backlog))


def _clear_stamps(ids: list[int]) -> None:
    """Let the reconciler queue these deliveries without waiting for the requeue delay."""
    db.session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.PENDING)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


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
    size: int = BATCH,
) -> bool:
    """Queue deliveries by id in batches; False (logged) when Redis is unreachable.

    ``timeouts`` (delivery id -> HTTP timeout) spares a query when the caller knows
    them; ``stamped`` means the rows were committed with ``enqueued_at`` already set
    (the API's hot path), so only a failure needs a write: clearing the stamp lets
    the reconciler queue them without waiting for the requeue delay. ``size`` is
    the most deliveries per job.
    """
    from .jobs import deliver

    ids = list(ids)
    if not ids:
        return True
    timeouts = timeouts if timeouts is not None else _timeouts(ids)
    try:
        queue = get_queue()
        with queue.connection.pipeline() as pipe:
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
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
            _clear_stamps(ids)
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
