"""Events, deliveries and attempts: creating them (web side) and sending them (worker side).

The database is the source of truth. Deliveries are written in the caller's
transaction (outbox) and only enqueued by id after commit; a worker claims a
delivery atomically before each attempt, so a duplicate queue entry never
sends twice, and the reconciler re-enqueues whatever the queue lost.
"""

from __future__ import annotations

import json
import random
import re
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

# Time a worker holds a claimed delivery beyond its HTTP timeout before the
# reconciler may assume the worker died and hand the delivery to another.
CLAIM_GRACE = timedelta(seconds=30)
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


def request_headers(cb: Callback, webhook_id: str, body: bytes, kind: str) -> dict[str, str]:
    """Headers for one attempt: custom ones, then the signed Standard Webhooks set."""
    timestamp = int(time.time())
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


def record_attempt(
    delivery: Delivery, result: transport.Response, headers: dict[str, str], started_at: datetime
) -> Attempt:
    """An Attempt row for ``result`` (added, not committed)."""
    cfg = settings.current()
    attempt = Attempt(
        delivery_id=delivery.id,
        number=delivery.attempt_count,
        started_at=started_at,
        duration_ms=result.duration_ms,
        timings=result.timings,
        url=result.url[:2048],
        request_headers=redact_headers(headers),
        status_code=result.status_code,
        error_class=result.error_class,
        error_message=(result.error_message or None) and result.error_message[:1000],
        location=result.location,
        response_headers=result.headers,
        response_excerpt=result.body[: cfg.excerpt_limit],
        response_size=result.body_size,
        response_truncated=result.truncated or len(result.body) > cfg.excerpt_limit,
    )
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


def claim(delivery_id: int, now: datetime) -> bool:
    """Atomically move a due delivery to ``sending``; False when another worker has it."""
    row = db.session.execute(
        select(Delivery.id, Callback.timeout)
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.id == delivery_id)
    ).first()
    if row is None:
        return False
    locked_until = now + timedelta(seconds=row.timeout) + CLAIM_GRACE
    result = db.session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now + timedelta(seconds=1)),
        )
        .values(
            status=DeliveryStatus.SENDING,
            locked_until=locked_until,
            attempt_count=Delivery.attempt_count + 1,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount == 1


def process(delivery_id: int) -> Outcome | None:
    """Worker side: claim, reload the callback, send, record, decide what happens next."""
    now = utcnow()
    if not claim(delivery_id, now):
        return None
    delivery = db.session.get(Delivery, delivery_id, populate_existing=True)
    assert delivery is not None
    cb = db.session.get(Callback, delivery.callback_id, populate_existing=True)
    skip_reason = _skip_reason(delivery, cb)
    if skip_reason:
        delivery.status = DeliveryStatus.SKIPPED
        delivery.status_detail = skip_reason
        delivery.attempt_count -= 1  # no request was made
        delivery.finished_at = now
        delivery.locked_until = None
        db.session.commit()
        return Outcome(delivery.id, delivery.status)
    assert cb is not None
    body = delivery.event.body.encode()
    result, headers = send(cb, delivery.webhook_id, body, delivery.kind)
    record_attempt(delivery, result, headers, now)
    outcome = finish(delivery, cb, result)
    db.session.commit()
    return outcome


def _skip_reason(delivery: Delivery, cb: Callback | None) -> str | None:
    if cb is None or cb.deleted_at is not None:
        return "callback was deleted after the event was queued"
    if not cb.active and delivery.kind != DeliveryKind.PING:
        return f"callback is inactive ({cb.inactive_reason or 'manual'})"
    return None


def finish(delivery: Delivery, cb: Callback, result: transport.Response) -> Outcome:
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
    else:
        if counts_for_health:
            record_failure(cb, now)
        if result.status_code == 410 and delivery.kind != DeliveryKind.PING:
            from .callbacks import set_active

            set_active(cb, False, AUTO_DISABLED_PREFIX + "receiver answered 410 Gone")
            delivery.status = DeliveryStatus.FAILED
            delivery.status_detail = "410 Gone: callback deactivated"
            delivery.next_attempt_at = None
            delivery.finished_at = now
        else:
            delay = retry_delay(delivery, cb, result)
            if delay is None:
                delivery.status = DeliveryStatus.FAILED
                delivery.status_detail = _describe(result)
                delivery.next_attempt_at = None
                delivery.finished_at = now
            else:
                delivery.status = DeliveryStatus.RETRYING
                delivery.status_detail = _describe(result)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                delivery.enqueued_at = now
                outcome.retry_at = delivery.next_attempt_at
    outcome.status = delivery.status
    return outcome


def _describe(result: transport.Response) -> str:
    if result.error_class == ErrorClass.HTTP_STATUS:
        return f"HTTP {result.status_code}"
    return (result.error_message or result.error_class or "failed")[:255]


def record_failure(cb: Callback, now: datetime) -> None:
    """Count a failed attempt; auto-disable after failing long enough (SPEC §7 health)."""
    cfg = settings.current()
    cb.consecutive_failures = (cb.consecutive_failures or 0) + 1
    cb.failing_since = cb.failing_since or now
    failing_for = now - cb.failing_since
    if (
        cb.active
        and cb.consecutive_failures >= cfg.disable_min_failures
        and failing_for >= timedelta(hours=cfg.disable_after_hours)
    ):
        from .callbacks import set_active

        hours = failing_for.total_seconds() / 3600
        set_active(
            cb,
            False,
            f"{AUTO_DISABLED_PREFIX}failing for {hours:.0f} h "
            f"({cb.consecutive_failures} failed attempts in a row)",
        )


def reclaim_stale(now: datetime) -> list[int]:
    """Deliveries stuck in ``sending`` past their claim (a worker died): due again now."""
    ids = list(
        db.session.scalars(
            select(Delivery.id)
            .where(Delivery.status == DeliveryStatus.SENDING, Delivery.locked_until < now)
            .limit(1000)
        )
    )
    if ids:
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.SENDING)
            .values(
                status=DeliveryStatus.RETRYING,
                next_attempt_at=now,
                locked_until=None,
                status_detail="worker lost during an attempt; sending again",
            )
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return ids


def overdue(now: datetime, due_grace: timedelta, requeue_after: timedelta, limit: int = 1000) -> list[int]:
    """Due deliveries nobody has queued recently (the queue lost them): mark and return ids."""
    ids = list(
        db.session.scalars(
            select(Delivery.id)
            .where(
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
                Delivery.next_attempt_at <= now - due_grace,
                (Delivery.enqueued_at.is_(None)) | (Delivery.enqueued_at <= now - requeue_after),
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
