"""Events, deliveries and attempts: creating them (web side) and sending them (worker side).

The database is the source of truth. Deliveries are written in the caller's
transaction (outbox) and only enqueued by id after commit; a worker claims a
delivery atomically before each attempt, so a duplicate queue entry never
sends twice, and the reconciler re-enqueues whatever the queue lost.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import select, update

from ..constants import (
    AUTO_DISABLED_PREFIX,
    DeliveryKind,
    DeliveryStatus,
    ErrorClass,
)
from ..extensions import db
from ..models import Attempt, Callback, Delivery, Event, utcnow
from . import settings, transport
from .catalogue import sample_payload
from .signing import signature_header

log = logging.getLogger(__name__)
# Time a worker holds a claimed delivery beyond its HTTP timeout before the
# reconciler may assume the worker died and hand the delivery to another. A
# worker process runs a lease keeper instead (see ``LEASES``): short claims,
# renewed while the attempt runs, so a dead worker's delivery moves on sooner.
CLAIM_GRACE = timedelta(seconds=30)
# RQ's scheduler fires scheduled jobs on whole seconds, so a retry starts up to
# about a second late; that much is taken off the next delay so lateness does
# not pile up over a schedule.
MAX_LATENESS_CREDIT = 2.0
SECRET_HEADER = re.compile(r"auth|token|secret|key|signature|cookie|password|session", re.I)
REDACTED = "••••••"


def build_body(uid: str, definition: str, payload: Any, created_at: datetime, test: bool) -> str:
    """The JSON envelope sent to receivers; it carries the event id and creation time."""
    envelope: dict[str, Any] = {
        "id": uid,
        "type": definition,
        "timestamp": created_at.isoformat(timespec="milliseconds") + "Z",
        "data": payload,
    }
    if test:
        envelope["test"] = True
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def new_event(
    definition: str,
    payload: Any,
    *,
    source: str = "api",
    test: bool = False,
    idempotency_key: str | None = None,
) -> Event:
    """An Event row (added, not committed) with its exact body bytes fixed."""
    event = Event(
        definition=definition,
        source=source,
        is_test=test,
        idempotency_key=idempotency_key,
        created_at=utcnow(),
    )
    from ..models import new_uid

    event.uid = new_uid("evt")
    event.body = build_body(event.uid, definition, payload, event.created_at, test)
    db.session.add(event)
    return event


def active_callbacks(definition: str) -> list[Callback]:
    return list(
        db.session.scalars(
            select(Callback)
            .where(
                Callback.definition == definition,
                Callback.active.is_(True),
                Callback.deleted_at.is_(None),
            )
            .order_by(Callback.priority, Callback.id)
        )
    )


def create_event(
    definition: str, payload: Any, *, source: str = "api", idempotency_key: str | None = None
) -> tuple[Event, list[Delivery]]:
    """An event fanned out to every active callback of its definition (not committed)."""
    event = new_event(definition, payload, source=source, idempotency_key=idempotency_key)
    now = utcnow()
    deliveries = [
        Delivery(
            event=event,
            callback_id=cb.id,
            kind=DeliveryKind.EVENT,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            created_at=now,
        )
        for cb in active_callbacks(definition)
    ]
    db.session.add_all(deliveries)
    return event, deliveries


def create_ping(cb: Callback, payload: Any = None) -> Delivery:
    """A test ping: same path as a delivery, sample payload, marked as a test."""
    event = new_event(
        cb.definition,
        payload if payload is not None else sample_payload(cb.definition),
        source="ping",
        test=True,
    )
    now = utcnow()
    delivery = Delivery(
        event=event,
        callback_id=cb.id,
        kind=DeliveryKind.PING,
        status=DeliveryStatus.PENDING,
        next_attempt_at=now,
        created_at=now,
    )
    db.session.add(delivery)
    return delivery


def create_redelivery(original: Delivery) -> Delivery:
    """The same message (event, body and webhook-id) sent again as a new delivery."""
    now = utcnow()
    delivery = Delivery(
        event_id=original.event_id,
        callback_id=original.callback_id,
        kind=DeliveryKind.REDELIVERY,
        webhook_id=original.webhook_id,
        status=DeliveryStatus.PENDING,
        next_attempt_at=now,
        created_at=now,
        redelivery_of_id=original.id,
    )
    db.session.add(delivery)
    return delivery


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """Request headers as logged: values of secret-looking headers replaced."""
    return {k: (REDACTED if SECRET_HEADER.search(k) else v) for k, v in headers.items()}


def unix_now() -> int:
    """The ``webhook-timestamp`` clock (a seam tests use to send "later")."""
    return int(time.time())


def request_headers(cb: Callback, webhook_id: str, body: bytes, kind: str) -> dict[str, str]:
    """Headers for one attempt: custom ones, then the signed Standard Webhooks set."""
    timestamp = unix_now()
    headers = dict(cb.headers or {})
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": transport.USER_AGENT,
            "Accept-Encoding": "identity",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(cb.signing_secrets(), webhook_id, timestamp, body),
        }
    )
    if kind == DeliveryKind.PING:
        headers["X-Cbdash-Test"] = "true"
    return headers


def send(
    cb: Callback, webhook_id: str, body: bytes, kind: str, timeout: float | None = None
) -> tuple[transport.Response, dict[str, str]]:
    """One signed HTTP attempt to ``cb``; returns the outcome and the headers sent."""
    cfg = settings.current()
    headers = request_headers(cb, webhook_id, body, kind)
    result = transport.post(
        cb.url, body, headers, float(timeout or cb.timeout), cfg.policy, read_limit=cfg.read_limit
    )
    return result, headers


def attempt_values(
    delivery_id: int, number: int, result: transport.Response, headers: dict[str, str], started_at: datetime
) -> dict[str, Any]:
    """The columns of the Attempt row that records ``result`` (secrets redacted, body capped)."""
    cfg = settings.current()
    return {
        "delivery_id": delivery_id,
        "number": number,
        "started_at": started_at,
        "duration_ms": result.duration_ms,
        "timings": result.timings,
        "url": result.url[:2048],
        "request_headers": redact_headers(headers),
        "status_code": result.status_code,
        "error_class": result.error_class,
        "error_message": (result.error_message or None) and result.error_message[:1000],
        "location": result.location,
        "response_headers": result.headers,
        "response_excerpt": result.body[: cfg.excerpt_limit],
        "response_size": result.body_size,
        "response_truncated": result.truncated or len(result.body) > cfg.excerpt_limit,
    }


def record_attempt(
    delivery: Delivery, result: transport.Response, headers: dict[str, str], started_at: datetime
) -> Attempt:
    """An Attempt row for ``result`` (added, not committed)."""
    attempt = Attempt(**attempt_values(delivery.id, delivery.attempt_count, result, headers, started_at))
    db.session.add(attempt)
    return attempt


def retry_delay(delivery: Delivery, cb: Callback, result: transport.Response) -> float | None:
    """Seconds until the next attempt, or None when the delivery is out of attempts."""
    cfg = settings.current()
    delays = [int(x) for x in cb.retry_schedule.split(",")] if cb.retry_schedule else cfg.retry_delays
    index = delivery.attempt_count - 1
    if delivery.kind in (DeliveryKind.PING, DeliveryKind.INVOKE) or index >= len(delays):
        return None
    delay = delays[index] * (1 + random.uniform(-cfg.retry_jitter, cfg.retry_jitter))
    if result.status_code in (429, 503):
        asked = parse_retry_after(result.headers.get("retry-after"))
        if asked is not None:
            # Honour the receiver, within bounds: never sooner than 1 s, never later
            # than an hour (or the scheduled delay when that is longer).
            delay = min(max(asked, 1.0), max(float(delays[index]), 3600.0))
    return max(delay, 0.0)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0)


@dataclass
class Outcome:
    delivery_id: int
    status: str
    retry_at: datetime | None = None
    timeout: int = 5
    disabled_callback_id: int | None = None  # set when this attempt auto-disabled the callback


class Leases:
    """The deliveries this process is sending right now, for the keeper thread to renew.

    ``seconds`` is None unless a keeper runs (``cbdash worker``); claims then
    last the HTTP timeout plus ``CLAIM_GRACE`` instead, which needs no renewal.
    """

    def __init__(self) -> None:
        self.seconds: float | None = None
        self._ids: set[int] = set()
        self._batch: list[int] = []
        self._lock = threading.Lock()

    def hold_batch(self, ids: list[int]) -> None:
        """The job's deliveries not yet attempted: still in hand, not lost."""
        with self._lock:
            self._batch = list(ids)

    def batch(self) -> list[int]:
        with self._lock:
            return list(self._batch)

    def add(self, delivery_id: int) -> None:
        with self._lock:
            self._ids.add(delivery_id)

    def discard(self, delivery_id: int) -> None:
        with self._lock:
            self._ids.discard(delivery_id)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)


LEASES = Leases()


def claim_until(now: datetime, timeout: int) -> datetime:
    """When a claim taken ``now`` lapses if nobody renews it."""
    if LEASES.seconds:
        return now + timedelta(seconds=LEASES.seconds)
    return now + timedelta(seconds=timeout) + CLAIM_GRACE


def renew_leases() -> int:
    """Push out the claims this process holds; returns how many were renewed.

    The rest of the batch being worked on is marked as freshly queued too, so
    the reconciler does not take a slow batch's waiting deliveries for lost.
    """
    ids = LEASES.held()
    waiting = [i for i in LEASES.batch() if i not in ids]
    if not LEASES.seconds or not (ids or waiting):
        return 0
    now = utcnow()
    renewed = 0
    if ids:
        renewed = db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.SENDING)
            .values(locked_until=now + timedelta(seconds=LEASES.seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
    if waiting:
        db.session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(waiting),
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
                Delivery.next_attempt_at <= now,
            )
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()
    return renewed


@dataclass
class Claim:
    attempt_number: int
    lateness: float  # seconds a scheduled retry started after its time


def take(delivery_id: int, now: datetime) -> Claim | None:
    """Atomically move a due delivery to ``sending``; None when another worker has it."""
    row = db.session.execute(
        select(Delivery.status, Delivery.next_attempt_at, Delivery.attempt_count, Callback.timeout)
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.id == delivery_id)
    ).first()
    if row is None or row.status not in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
        db.session.rollback()
        return None
    result = db.session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
            # The scheduler works in whole seconds and may fire a moment early.
            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now + timedelta(seconds=1)),
        )
        .values(
            status=DeliveryStatus.SENDING,
            locked_until=claim_until(now, row.timeout),
            attempt_count=Delivery.attempt_count + 1,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if result.rowcount != 1:
        return None
    lateness = 0.0
    if row.status == DeliveryStatus.RETRYING and row.next_attempt_at is not None:
        lateness = min(max((now - row.next_attempt_at).total_seconds(), 0.0), MAX_LATENESS_CREDIT)
    return Claim(attempt_number=row.attempt_count + 1, lateness=lateness)


def claim(delivery_id: int, now: datetime) -> bool:
    """Atomically move a due delivery to ``sending``; False when another worker has it."""
    return take(delivery_id, now) is not None


def process(delivery_id: int) -> Outcome | None:
    """Worker side: claim, reload the callback, send, record, decide what happens next."""
    now = utcnow()
    claimed = take(delivery_id, now)
    if claimed is None:
        return None
    LEASES.add(delivery_id)
    try:
        return _attempt(delivery_id, claimed, now)
    finally:
        LEASES.discard(delivery_id)


def _attempt(delivery_id: int, claimed: Claim, now: datetime) -> Outcome | None:
    delivery = db.session.get(Delivery, delivery_id, populate_existing=True)
    assert delivery is not None
    cb = db.session.get(Callback, delivery.callback_id, populate_existing=True)
    skip_reason = _skip_reason(delivery, cb)
    if skip_reason:
        delivery.status = DeliveryStatus.SKIPPED
        delivery.status_detail = skip_reason
        delivery.attempt_count -= 1  # no request was made
        delivery.next_attempt_at = None
        delivery.finished_at = now
        delivery.locked_until = None
        db.session.commit()
        return Outcome(delivery.id, delivery.status)
    assert cb is not None
    body = delivery.event.body.encode()
    result, headers = send(cb, delivery.webhook_id, body, delivery.kind)
    record_attempt(delivery, result, headers, now)
    current = db.session.execute(
        select(Delivery.status, Delivery.attempt_count).where(Delivery.id == delivery_id)
    ).first()
    still_ours = current is not None and (current.status, current.attempt_count) == (
        DeliveryStatus.SENDING,
        claimed.attempt_number,
    )
    if not still_ours:
        # Our claim lapsed (this worker stalled past its lease) and another worker
        # took the delivery over: keep the attempt on record, leave the state to it.
        log.warning("delivery %s: claim lost during the attempt; not updating it", delivery_id)
        db.session.commit()
        return None
    outcome = finish(delivery, cb, result, lateness=claimed.lateness)
    db.session.commit()
    return outcome


def _skip_reason(delivery: Delivery, cb: Callback | None) -> str | None:
    if cb is None or cb.deleted_at is not None:
        return "callback was deleted after the event was queued"
    if not cb.active and delivery.kind != DeliveryKind.PING:
        return f"callback is inactive ({cb.inactive_reason or 'manual'})"
    return None


def finish(delivery: Delivery, cb: Callback, result: transport.Response, lateness: float = 0.0) -> Outcome:
    """Set the delivery's status and the callback's health after one attempt."""
    now = utcnow()
    delivery.last_status_code = result.status_code
    delivery.last_error = result.error_class
    delivery.last_duration_ms = result.duration_ms
    delivery.locked_until = None
    counts_for_health = delivery.kind != DeliveryKind.PING
    cb.last_attempt_at = now
    cb.last_status_code = result.status_code
    cb.last_error = result.error_class
    outcome = Outcome(delivery.id, "", timeout=cb.timeout)
    if result.ok:
        delivery.status = DeliveryStatus.SUCCEEDED
        delivery.status_detail = None
        delivery.next_attempt_at = None
        delivery.finished_at = now
        if counts_for_health:
            cb.consecutive_failures = 0
            cb.failing_since = None
        outcome.status = delivery.status
        return outcome
    disabled = None
    if counts_for_health:
        disabled = record_failure(cb, now)
        if result.status_code == 410:
            disabled = "receiver answered 410 Gone"
    if disabled and cb.active:
        auto_disable(cb, disabled, now)
        outcome.disabled_callback_id = cb.id
    delay = None if disabled else retry_delay(delivery, cb, result)
    if delay is None:
        delivery.status = DeliveryStatus.FAILED
        delivery.status_detail = _describe(result)
        if disabled:
            delivery.status_detail = f"{_describe(result)}; callback auto-disabled"[:255]
        delivery.next_attempt_at = None
        delivery.finished_at = now
    else:
        delivery.status = DeliveryStatus.RETRYING
        delivery.status_detail = _describe(result)
        # Never in the past; the scheduler's lateness on this attempt is credited.
        delivery.next_attempt_at = now + timedelta(seconds=max(delay - lateness, 0.0))
        # The queue gets it at that time: the reconciler counts from there.
        delivery.enqueued_at = delivery.next_attempt_at
        outcome.retry_at = delivery.next_attempt_at
    outcome.status = delivery.status
    return outcome


def _describe(result: transport.Response) -> str:
    if result.error_class == ErrorClass.HTTP_STATUS:
        return f"HTTP {result.status_code}"
    return (result.error_message or result.error_class or "failed")[:255]


def record_failure(cb: Callback, now: datetime) -> str | None:
    """Count a failed attempt; return a reason when the callback has failed long enough to disable."""
    cfg = settings.current()
    cb.consecutive_failures = (cb.consecutive_failures or 0) + 1
    cb.failing_since = cb.failing_since or now
    failing_for = now - cb.failing_since
    if (
        cb.active
        and cb.consecutive_failures >= cfg.disable_min_failures
        and failing_for >= timedelta(hours=cfg.disable_after_hours)
    ):
        hours = failing_for.total_seconds() / 3600
        return f"failing for {hours:.0f} h ({cb.consecutive_failures} failed attempts in a row)"
    return None


def auto_disable(cb: Callback, why: str, now: datetime | None = None) -> None:
    """Deactivate ``cb`` as the system (reason, time and an audit entry)."""
    from . import audit
    from .callbacks import set_active

    set_active(cb, False, AUTO_DISABLED_PREFIX + why)
    # The same instant as the failed delivery's end, so "missed since" includes it.
    cb.disabled_at = now or cb.disabled_at
    audit.record(
        "callback.auto_disable",
        "callback",
        cb.id,
        {"definition": cb.definition, "reason": cb.inactive_reason},
        actor="system",
    )


def reclaim_stale(now: datetime) -> list[int]:
    """Deliveries stuck in ``sending`` past their claim (a worker died): due again now.

    The lost attempt is recorded (its outcome is unknown: the receiver may have
    got it) and counts against the schedule, so a message that kills workers
    cannot loop forever. Returns the ids to send again.
    """
    rows = db.session.execute(
        select(
            Delivery.id,
            Delivery.callback_id,
            Delivery.attempt_count,
            Delivery.kind,
            Callback.url,
            Callback.retry_schedule,
        )
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.locked_until < now)
        .limit(1000)
    ).all()
    cfg = settings.current()
    again: list[int] = []
    for row in rows:
        delays = [int(x) for x in row.retry_schedule.split(",")] if row.retry_schedule else cfg.retry_delays
        gives_up = row.attempt_count > len(delays) or row.kind in (DeliveryKind.PING, DeliveryKind.INVOKE)
        values: dict[str, Any] = {"locked_until": None}
        if gives_up:
            values.update(
                status=DeliveryStatus.FAILED,
                status_detail="worker lost during the last attempt",
                next_attempt_at=None,
                finished_at=now,
            )
        else:
            values.update(
                status=DeliveryStatus.RETRYING,
                status_detail="worker lost during an attempt; sending again",
                next_attempt_at=now,
            )
        # Conditional on the claim still being lapsed: a worker that finishes late wins.
        changed = db.session.execute(
            update(Delivery)
            .where(
                Delivery.id == row.id,
                Delivery.status == DeliveryStatus.SENDING,
                Delivery.attempt_count == row.attempt_count,
                Delivery.locked_until < now,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            continue
        if gives_up:
            # A Core UPDATE is invisible to the ORM counting hooks: count the failure here.
            from .monitoring import count_outcome

            count_outcome(db.session.connection(), row.callback_id, now, DeliveryStatus.FAILED, db.session)
        db.session.add(
            Attempt(
                delivery_id=row.id,
                number=row.attempt_count,
                started_at=now,
                url=row.url[:2048],
                error_message="The worker stopped during this attempt; its outcome is unknown.",
            )
        )
        if not gives_up:
            again.append(row.id)
    if rows:
        db.session.commit()
    return again


def overdue(
    now: datetime,
    due_grace: timedelta,
    requeue_after: timedelta,
    queued_before: datetime | None = None,
    limit: int = 1000,
) -> list[int]:
    """Due deliveries the queue must have lost: mark them queued now and return their ids.

    Lost means queued at least ``requeue_after`` ago and, when the queue still
    holds jobs, before the oldest of them (a long backlog is not a loss).
    """
    cutoff = now - requeue_after
    if queued_before is not None:
        cutoff = min(cutoff, queued_before)
    ids = list(
        db.session.scalars(
            select(Delivery.id)
            .where(
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
                Delivery.next_attempt_at <= now - due_grace,
                (Delivery.enqueued_at.is_(None)) | (Delivery.enqueued_at <= cutoff),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        )
    )
    if ids:
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return ids


def open_deliveries(after_id: int, limit: int = 1000) -> list[tuple[int, datetime | None, int]]:
    """(id, next attempt, timeout) of pending/retrying deliveries after ``after_id``, by id."""
    rows = db.session.execute(
        select(Delivery.id, Delivery.next_attempt_at, Callback.timeout)
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(
            Delivery.id > after_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
        )
        .order_by(Delivery.id)
        .limit(limit)
    ).all()
    return [(r.id, r.next_attempt_at, r.timeout) for r in rows]
