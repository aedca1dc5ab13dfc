"""Recording an event and its fan-out: the API's hot path, in a few cached Core statements.

Same rows as ``delivery.create_event`` (an event with its exact body, one
pending delivery per active callback of the definition), written without the
ORM's unit of work, which costs several milliseconds for an event fanned out to
ten callbacks. The deliveries are stamped as queued in the same transaction, so
enqueueing after the commit needs no second write; if Redis then refuses the
job, ``dispatch.enqueue`` clears the stamp and the reconciler queues them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select

from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import Callback, Delivery, Event, new_uid, utcnow
from .delivery import build_body

_EVENTS = Event.__table__
_DELIVERIES = Delivery.__table__
_CALLBACKS = Callback.__table__
# Built once: constructing a statement costs about as much as running it.
_TARGETS = (
    select(_CALLBACKS.c.id, _CALLBACKS.c.timeout)
    .where(
        _CALLBACKS.c.definition == bindparam("definition"),
        _CALLBACKS.c.active.is_(True),
        _CALLBACKS.c.deleted_at.is_(None),
    )
    .order_by(_CALLBACKS.c.priority, _CALLBACKS.c.id)
)
_INSERT_EVENT = insert(_EVENTS).returning(_EVENTS.c.id)
_INSERT_DELIVERIES = insert(_DELIVERIES)
# Cheaper than RETURNING on a many-row insert, on both SQLite and PostgreSQL.
_NEW_DELIVERIES = (
    select(_DELIVERIES.c.id, _DELIVERIES.c.callback_id)
    .where(_DELIVERIES.c.event_id == bindparam("event_id"))
    .order_by(_DELIVERIES.c.id)
)


@dataclass(frozen=True)
class NewEvent:
    """What the caller answers with and enqueues after the commit."""

    id: int
    uid: str
    definition: str
    delivery_ids: list[int]
    timeouts: dict[int, int]  # delivery id -> its callback's timeout, for the job timeout


def record_event(
    definition: str, payload: Any, *, source: str = "api", idempotency_key: str | None = None
) -> NewEvent:
    """Insert an event and one pending delivery per active callback of ``definition`` (not committed)."""
    now = utcnow()
    # Core statements on the session's connection: compiled once, no ORM bookkeeping.
    conn = db.session.connection()
    targets = conn.execute(_TARGETS, {"definition": definition}).all()
    uid = new_uid("evt")
    event_id = conn.execute(
        _INSERT_EVENT,
        {
            "uid": uid,
            "definition": definition,
            "body": build_body(uid, definition, payload, now, False),
            "source": source,
            "is_test": False,
            "idempotency_key": idempotency_key,
            "created_at": now,
        },
    ).scalar_one()
    if not targets:
        return NewEvent(event_id, uid, definition, [], {})
    conn.execute(
        _INSERT_DELIVERIES,
        [
            {
                "event_id": event_id,
                "callback_id": cb_id,
                "webhook_id": new_uid("msg"),
                "kind": DeliveryKind.EVENT.value,
                "status": DeliveryStatus.PENDING.value,
                "attempt_count": 0,
                "next_attempt_at": now,
                "enqueued_at": now,
                "created_at": now,
            }
            for cb_id, _timeout in targets
        ],
    )
    rows = conn.execute(_NEW_DELIVERIES, {"event_id": event_id}).all()
    timeout_of = dict(targets)
    return NewEvent(
        event_id,
        uid,
        definition,
        [r.id for r in rows],
        {r.id: timeout_of[r.callback_id] for r in rows},
    )
