"""The delivery log: filters read from the query string, look-up by id, keyset pagination.

Rows are ordered by the instant they were created (UTC), newest first, with the id
breaking ties. Pages are cursors (``before``/``after`` a delivery id) rather than
offsets, so page 1 and page 20,000 cost the same; the match count is capped for
the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, false, func, select, tuple_
from sqlalchemy.orm import selectinload

from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import Callback, Delivery, Event, InboundSource
from .callbacks import NAME_RE

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
WINDOW_LABELS = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
COUNT_CAP = 1_000  # counting further would cost as much as the page; shown as “1,000+”
DELIVERY_NUMBER = re.compile(r"^#?(\d{1,18})$")
LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


@dataclass
class Filters:
    """The log's filters, normalised; ``errors`` explains any value that was ignored."""

    callback_id: int | None = None
    definition: str = ""
    status: str = ""
    kind: str = ""
    window: str = ""
    since_text: str = ""
    until_text: str = ""
    ident: str = ""
    since: datetime | None = None
    until: datetime | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def args(self) -> dict[str, str]:
        """The query-string arguments that reproduce these filters (for shareable URLs)."""
        out = {
            "callback_id": str(self.callback_id) if self.callback_id is not None else "",
            "definition": self.definition,
            "status": self.status,
            "kind": self.kind,
            "window": self.window,
            "from": self.since_text,
            "to": self.until_text,
            "id": self.ident,
        }
        return {k: v for k, v in out.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.args())


def parse_local(text: str, tz: ZoneInfo) -> datetime:
    """``2025-10-26T02:30`` in the display zone → naive UTC; ValueError when unreadable.

    A wall-clock time that occurs twice (the hour repeated when clocks go back) means
    its first occurrence; one that never occurs (skipped hour) is read with the
    offset before the change.
    """
    text = text.strip()
    for fmt in LOCAL_FORMATS:
        try:
            naive = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return naive.replace(tzinfo=tz, fold=0).astimezone(UTC).replace(tzinfo=None)
    raise ValueError(text)


def parse(args: Mapping[str, str], tz: ZoneInfo, now: datetime) -> Filters:
    """Filters from query arguments; bad values are dropped with a message, never an error page."""
    f = Filters()
    raw_cb = (args.get("callback_id") or "").strip()
    if raw_cb:
        if raw_cb.isdigit() and len(raw_cb) < 12:
            f.callback_id = int(raw_cb)
        else:
            f.errors["callback_id"] = "Choose a callback from the list (or its numeric id)."
    definition = (args.get("definition") or "").strip()[:100]
    if definition:
        if NAME_RE.match(definition):
            f.definition = definition
        else:
            f.errors["definition"] = "A definition name is 3–100 of a-z, 0-9, “_”, “.” and “-”."
    status = (args.get("status") or "").strip()
    if status:
        if status in {s.value for s in DeliveryStatus}:
            f.status = status
        else:
            f.errors["status"] = "Unknown status."
    kind = (args.get("kind") or "").strip()
    if kind:
        if kind in {k.value for k in DeliveryKind}:
            f.kind = kind
        else:
            f.errors["kind"] = "Unknown kind."
    for name, attr in (("from", "since"), ("to", "until")):
        text = (args.get(name) or "").strip()[:40]
        if not text:
            continue
        try:
            setattr(f, attr, parse_local(text, tz))
            setattr(f, f"{attr}_text", text)
        except ValueError:
            f.errors[name] = f"“{text}” is not a date and time (use YYYY-MM-DD HH:MM, {tz.key})."
    window = (args.get("window") or "").strip()
    if window and window not in WINDOWS:
        f.errors["window"] = "Unknown time window."
    elif window and not (f.since_text or f.until_text):  # an explicit range wins over a preset
        f.window = window
        f.since = now - WINDOWS[window]
    if f.since and f.until and f.since > f.until:
        f.errors["to"] = "The end of the range is before its start."
        f.until, f.until_text = None, ""
    ident = (args.get("id") or "").strip()[:64]
    if ident:
        if DELIVERY_NUMBER.match(ident) or re.match(r"^(evt|msg)_[A-Za-z0-9_-]{1,60}$", ident):
            f.ident = ident
        else:
            f.errors["id"] = "Enter a delivery number (123), a webhook id (msg_…) or an event id (evt_…)."
    return f


def _filtered(f: Filters) -> Select:
    stmt = select(Delivery)
    if f.callback_id is not None:
        stmt = stmt.where(Delivery.callback_id == f.callback_id)
    if f.definition:
        stmt = stmt.join(Event, Event.id == Delivery.event_id).where(Event.definition == f.definition)
    if f.status:
        stmt = stmt.where(Delivery.status == f.status)
    if f.kind:
        stmt = stmt.where(Delivery.kind == f.kind)
    if f.since is not None:
        stmt = stmt.where(Delivery.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(Delivery.created_at <= f.until)
    if f.ident:
        number = DELIVERY_NUMBER.match(f.ident)
        if number:
            stmt = stmt.where(Delivery.id == int(number.group(1)))
        elif f.ident.startswith("msg_"):
            stmt = stmt.where(Delivery.webhook_id == f.ident)
        else:
            event_id = db.session.scalar(select(Event.id).where(Event.uid == f.ident))
            stmt = stmt.where(Delivery.event_id == event_id if event_id is not None else false())
    return stmt


@dataclass
class LogPage:
    rows: list[Delivery]
    total: int
    capped: bool
    older: int | None  # pass as ``before`` for the next (older) page
    newer: int | None  # pass as ``after`` for the previous (newer) page

    @property
    def total_label(self) -> str:
        return f"{self.total:,}+" if self.capped else f"{self.total:,}"


def _cursor(delivery_id: int | None) -> tuple[datetime, int] | None:
    if delivery_id is None:
        return None
    created = db.session.scalar(select(Delivery.created_at).where(Delivery.id == delivery_id))
    return (created, delivery_id) if created is not None else None


def search(f: Filters, *, before: int | None = None, after: int | None = None, per_page: int = 50) -> LogPage:
    """One page of deliveries matching ``f``, newest first, older than ``before`` or newer than ``after``."""
    base = _filtered(f)
    key = tuple_(Delivery.created_at, Delivery.id)
    stmt = base.options(
        selectinload(Delivery.event).load_only(Event.uid, Event.definition, Event.is_test, Event.source),
        selectinload(Delivery.callback),
    )
    newest_first = (Delivery.created_at.desc(), Delivery.id.desc())
    older_cursor, newer_cursor = _cursor(before), _cursor(after)
    if newer_cursor is not None:
        # Going back towards the newest: take the rows just above the cursor, then flip them.
        rows = list(
            db.session.scalars(
                stmt.where(key > newer_cursor)
                .order_by(Delivery.created_at.asc(), Delivery.id.asc())
                .limit(per_page + 1)
            )
        )
        has_newer = len(rows) > per_page
        rows = list(reversed(rows[:per_page]))
        has_older = True
    else:
        if older_cursor is not None:
            stmt = stmt.where(key < older_cursor)
        rows = list(db.session.scalars(stmt.order_by(*newest_first).limit(per_page + 1)))
        has_older = len(rows) > per_page
        rows = rows[:per_page]
        has_newer = older_cursor is not None
    capped_query = base.with_only_columns(Delivery.id).order_by(None).limit(COUNT_CAP + 1).subquery()
    total = db.session.scalar(select(func.count()).select_from(capped_query)) or 0
    return LogPage(
        rows=rows,
        total=min(total, COUNT_CAP),
        capped=total > COUNT_CAP,
        older=rows[-1].id if rows and has_older else None,
        newer=rows[0].id if rows and has_newer else None,
    )


def inbound_sources(rows: list[Delivery]) -> dict[str, int]:
    """Slug -> source id for the inbound sources whose messages the rows relay (for links)."""
    from .inbound import SOURCE_PREFIX

    slugs = {
        d.event.source.removeprefix(SOURCE_PREFIX)
        for d in rows
        if d.event is not None and (d.event.source or "").startswith(SOURCE_PREFIX)
    }
    if not slugs:
        return {}
    return dict(
        db.session.execute(
            select(InboundSource.slug, InboundSource.id).where(InboundSource.slug.in_(slugs))
        ).all()
    )


def callback_choices(limit: int = 200) -> tuple[list[Callback], bool]:
    """Callbacks for the filter's drop-down, or (``[]``, True) when there are too many to list."""
    alive = select(Callback.id).where(Callback.deleted_at.is_(None))
    if (db.session.scalar(select(func.count()).select_from(alive.limit(limit + 1).subquery())) or 0) > limit:
        return [], True
    rows = db.session.scalars(
        select(Callback).where(Callback.deleted_at.is_(None)).order_by(Callback.definition, Callback.id)
    )
    return list(rows), False
