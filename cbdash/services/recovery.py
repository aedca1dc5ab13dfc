"""Recovering missed messages: bulk redelivery by filter, and replay after an auto-disable.

Both create new deliveries in the caller's transaction and hand back their ids;
``spread`` then queues them at a bounded rate so a recovering receiver is not
flattened by the backlog it missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import aliased

from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import AuditEntry, Callback, Delivery, Event, utcnow
from . import delivery_log, settings

# Only finished deliveries are worth sending again; open ones are still being sent.
RECOVERABLE = (DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.SUCCEEDED)
# Pings are tests and invocations answered a caller that is gone: neither is replayed.
REPLAYABLE_KINDS = (DeliveryKind.EVENT, DeliveryKind.INBOUND, DeliveryKind.REDELIVERY)
# A delivery that already has one of these redeliveries is recovered (or being recovered).
_SETTLED = (
    DeliveryStatus.SUCCEEDED,
    DeliveryStatus.PENDING,
    DeliveryStatus.SENDING,
    DeliveryStatus.RETRYING,
)


def rate() -> float:
    """Deliveries per second a recovery queues (``RECOVERY_RATE``, default 10)."""
    return max(float(current_app.config.get("RECOVERY_RATE", 10)), 0.1)


def max_batch() -> int:
    """Most deliveries one recovery may create (``RECOVERY_MAX``, default 10,000)."""
    return max(int(current_app.config.get("RECOVERY_MAX", 10_000)), 1)


@dataclass
class Selection:
    """What a bulk recovery re-sends: one status, optionally one callback, inside a time window."""

    callback_id: int | None = None
    status: str = DeliveryStatus.FAILED
    since: datetime | None = None
    until: datetime | None = None
    args: dict[str, str] = field(default_factory=dict)  # the form values that reproduce it
    errors: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The selection as plain data, for the audit log."""
        return {
            "callback_id": self.callback_id,
            "status": self.status,
            "since": self.since.isoformat() + "Z" if self.since else None,
            "until": self.until.isoformat() + "Z" if self.until else None,
        }


def parse_selection(args: Mapping[str, str], now: datetime | None = None) -> Selection:
    """Read callback, status and time window (the delivery log's vocabulary); errors by field."""
    cfg = settings.current()
    f = delivery_log.parse(args, cfg.timezone, now or utcnow())
    sel = Selection(callback_id=f.callback_id, since=f.since, until=f.until, errors=dict(f.errors))
    sel.errors.pop("definition", None)
    sel.errors.pop("kind", None)
    sel.errors.pop("id", None)
    status = (args.get("status") or "").strip() or DeliveryStatus.FAILED
    if status not in RECOVERABLE:
        sel.errors["status"] = "Choose failed, skipped or succeeded: open deliveries are still being sent."
    else:
        sel.status = status
    if sel.callback_id is not None:
        cb = db.session.get(Callback, sel.callback_id)
        if cb is None or cb.deleted_at is not None:
            sel.errors["callback_id"] = "No such callback."
    if sel.since is None and sel.until is None and not sel.errors.get("window"):
        sel.errors.setdefault("window", "Choose a time window (a preset or From/To).")
    sel.args = {k: v for k, v in f.args().items() if k in ("callback_id", "window", "from", "to")}
    sel.args["status"] = sel.status
    return sel


def _selected(sel: Selection) -> Select:
    later = aliased(Delivery)
    stmt = select(Delivery.id).where(
        Delivery.status == sel.status,
        Delivery.kind.in_(REPLAYABLE_KINDS),
        # Not already recovered by an earlier redelivery (so a second click adds nothing).
        ~exists().where(later.redelivery_of_id == Delivery.id, later.status.in_(_SETTLED)),
    )
    if sel.callback_id is not None:
        stmt = stmt.where(Delivery.callback_id == sel.callback_id)
    if sel.since is not None:
        stmt = stmt.where(Delivery.created_at >= sel.since)
    if sel.until is not None:
        stmt = stmt.where(Delivery.created_at <= sel.until)
    return stmt


def count(sel: Selection) -> int:
    """How many deliveries the selection would re-send."""
    return db.session.scalar(select(func.count()).select_from(_selected(sel).subquery())) or 0


def recover(sel: Selection) -> list[Delivery]:
    """A redelivery (same webhook-id) for each selected delivery, oldest first; not committed."""
    from .delivery import create_redelivery

    ids = list(db.session.scalars(_selected(sel).order_by(Delivery.id).limit(max_batch())))
    created = []
    for start in range(0, len(ids), 500):
        for original in db.session.scalars(select(Delivery).where(Delivery.id.in_(ids[start : start + 500]))):
            created.append(create_redelivery(original))
    db.session.flush()
    return created


def disabled_since(cb: Callback) -> datetime | None:
    """When ``cb`` was last auto-disabled: now if it still is, else from the audit log."""
    if cb.auto_disabled:
        return cb.disabled_at
    return db.session.scalar(
        select(AuditEntry.at)
        .where(
            AuditEntry.action == "callback.auto_disable",
            AuditEntry.target_type == "callback",
            AuditEntry.target_id == str(cb.id),
        )
        .order_by(AuditEntry.at.desc())
        .limit(1)
    )


def _missed(cb: Callback, since: datetime) -> Select:
    """Events ``cb`` missed since ``since``: created while it was off, or whose delivery
    to it failed or was skipped after that -- and not received or underway since."""
    mine = aliased(Delivery)
    lost = aliased(Delivery)
    received_or_underway = exists().where(
        mine.event_id == Event.id,
        mine.callback_id == cb.id,
        mine.status.in_(_SETTLED),
    )
    lost_here = exists().where(
        lost.event_id == Event.id,
        lost.callback_id == cb.id,
        lost.kind.in_(REPLAYABLE_KINDS),
        lost.status.in_([DeliveryStatus.FAILED, DeliveryStatus.SKIPPED]),
        lost.finished_at >= since,
    )
    created_while_off = and_(
        Event.definition == cb.definition,
        Event.created_at >= since,
        Event.is_test.is_(False),
    )
    return select(Event.id).where(or_(created_while_off, lost_here), ~received_or_underway)


def missed_count(cb: Callback, since: datetime | None) -> int:
    """How many events a replay for ``cb`` would send."""
    if since is None:
        return 0
    return db.session.scalar(select(func.count()).select_from(_missed(cb, since).subquery())) or 0


def replay(cb: Callback, since: datetime) -> list[Delivery]:
    """Deliver the events ``cb`` missed since ``since`` again; not committed.

    An event that already had a delivery to ``cb`` is redelivered with its
    webhook-id (so receivers can de-duplicate); one it never got is a new delivery.
    """
    from .delivery import create_redelivery

    event_ids = list(db.session.scalars(_missed(cb, since).order_by(Event.id).limit(max_batch())))
    now = utcnow()
    created: list[Delivery] = []
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        previous = {
            d.event_id: d
            for d in db.session.scalars(
                select(Delivery)
                .where(Delivery.event_id.in_(chunk), Delivery.callback_id == cb.id)
                .order_by(Delivery.id)
            )
        }
        inbound = set(
            db.session.scalars(
                select(Event.id).where(Event.id.in_(chunk), Event.source.startswith("inbound:"))
            )
        )
        for event_id in chunk:
            if event_id in previous:
                created.append(create_redelivery(previous[event_id]))
            else:
                d = Delivery(
                    event_id=event_id,
                    callback_id=cb.id,
                    kind=DeliveryKind.INBOUND if event_id in inbound else DeliveryKind.EVENT,
                    status=DeliveryStatus.PENDING,
                    next_attempt_at=now,
                    created_at=now,
                )
                db.session.add(d)
                created.append(d)
    db.session.flush()
    return created


def spread(ids: list[int], per_second: float | None = None) -> int:
    """Queue ``ids`` at most ``per_second`` a second (after commit); returns the seconds it spans.

    Each one's ``next_attempt_at`` says when it is due, so the schedule is
    visible and the reconciler can restore it if Redis loses it.
    """
    from sqlalchemy import update

    from .. import dispatch

    if not ids:
        return 0
    per_second = per_second or rate()
    step = max(int(per_second), 1)
    now = utcnow()
    timeout = (
        db.session.scalar(
            select(func.max(Callback.timeout))
            .join(Delivery, Delivery.callback_id == Callback.id)
            .where(Delivery.id.in_(ids[:1000]))
        )
        or settings.current().max_timeout
    )
    groups = [ids[i : i + step] for i in range(0, len(ids), step)]
    for n, group in enumerate(groups):
        when = now + timedelta(seconds=n * step / per_second)
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(group))
            .values(next_attempt_at=when, enqueued_at=when)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()
    for n, group in enumerate(groups):
        if n == 0:
            dispatch.enqueue(group)
        else:
            dispatch.schedule_many(group, now + timedelta(seconds=n * step / per_second), timeout)
    return int(len(groups) * step / per_second)
