"""Retention: delete old attempts, finished deliveries and payloads in small batches."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from ..constants import FINAL_STATUSES
from ..extensions import db
from ..models import Attempt, Delivery, Event, utcnow

BATCH = 2000  # small batches keep each transaction (and any lock) short


def _batched_delete(model, ids_query) -> int:  # type: ignore[no-untyped-def]
    total = 0
    while True:
        ids = list(db.session.scalars(ids_query.limit(BATCH)))
        if not ids:
            return total
        db.session.execute(delete(model).where(model.id.in_(ids)))
        db.session.commit()
        total += len(ids)


def prune(age: timedelta) -> dict[str, int]:
    """Delete what is older than ``age``; open deliveries and their events are kept."""
    cutoff = utcnow() - age
    attempts = _batched_delete(Attempt, select(Attempt.id).where(Attempt.started_at < cutoff))
    old_final = select(Delivery.id).where(
        Delivery.created_at < cutoff, Delivery.status.in_(list(FINAL_STATUSES))
    )
    deliveries = 0
    while True:
        ids = list(db.session.scalars(old_final.limit(BATCH)))
        if not ids:
            break
        db.session.execute(delete(Attempt).where(Attempt.delivery_id.in_(ids)))
        db.session.execute(
            Delivery.__table__.update()
            .where(Delivery.redelivery_of_id.in_(ids))
            .values(redelivery_of_id=None)
        )
        db.session.execute(delete(Delivery).where(Delivery.id.in_(ids)))
        db.session.commit()
        deliveries += len(ids)
    from .inbound import prune_messages

    inbound_messages = prune_messages(age)
    orphan_events = select(Event.id).where(
        Event.created_at < cutoff,
        ~select(Delivery.id).where(Delivery.event_id == Event.id).exists(),
    )
    events = _batched_delete(Event, orphan_events)
    return {
        "attempts": attempts,
        "deliveries": deliveries,
        "events": events,
        "inbound_messages": inbound_messages,
    }
