"""Recording events and their fan-out: the API's hot path, in two cached Core statements.

The rows of ``delivery.create_event`` (an event with its exact body, one pending
delivery per active callback of the definition), written without the ORM's unit
of work, which costs several milliseconds for an event fanned out to ten
callbacks, and with the fan-out done by the database (``_fan_out``). The
deliveries are stamped as queued in the same transaction, so handing them to
the workers after the commit needs no second write; if Redis then refuses,
``dispatch.ring`` clears the stamp and the reconciler queues them.

Events that arrive together are written together (``GroupCommit``): the
statements, the commit and the enqueue cost about the same for one event as for
twenty, so under load each request pays a share of them instead of all.

On PostgreSQL the whole group is one statement (``_PG_RECORD``), committed on
its own: one round trip instead of five (BEGIN, two INSERTs, COMMIT and the
pool's ping), and a fifth of the Python.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from sqlalchemy import String, and_, bindparam, cast, func, insert, literal, select, true

from .. import dispatch
from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import Callback, Delivery, Event, new_uid, utcnow
from .delivery import build_body

_EVENTS = Event.__table__
_DELIVERIES = Delivery.__table__
_CALLBACKS = Callback.__table__


def _fan_out(events_where: Any, *order: Any) -> Any:
    """INSERT … SELECT: one pending delivery per active callback of each event's definition.

    The database finds the callbacks and writes the rows in one statement, so no
    callback row or delivery dict passes through Python. The Standard Webhooks
    id of such a delivery is the event's random part and the callback id
    (``msg_<event>_<callback>``): unique per delivery, stable across its retries.
    """
    e, c = _EVENTS.c, _CALLBACKS.c
    now = bindparam("now", type_=_DELIVERIES.c.created_at.type)
    rows = (
        select(
            e.id,
            c.id,
            literal("msg_") + func.substr(e.uid, 5) + literal("_") + cast(c.id, String),
            literal(DeliveryKind.EVENT.value),
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            now,
            now,
            now,
        )
        .select_from(_EVENTS.join(_CALLBACKS, c.definition == e.definition))
        # "= true", not "IS TRUE": PostgreSQL uses an index only for the former.
        .where(events_where, c.active == true(), c.deleted_at.is_(None))
        # Callback order; SQLite reads it off the (definition, active) index, no sort.
        .order_by(*order, c.id)
    )
    d = _DELIVERIES.c
    columns = ["event_id", "callback_id", "webhook_id", "kind", "status", "attempt_count"]
    columns += ["next_attempt_at", "enqueued_at", "created_at"]
    return insert(_DELIVERIES).from_select(columns, rows).returning(d.id, d.event_id)


# Built once: constructing a statement costs about as much as running it.
_INSERT_EVENTS = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
# Equality for the usual single event: an expanding IN is re-rendered on every call. The
# definitions are repeated as constants so the planner looks callbacks up by definition.
_FAN_OUT_ONE = _fan_out(
    and_(_EVENTS.c.id == bindparam("event_id"), _CALLBACKS.c.definition == bindparam("definition")),
)
_FAN_OUT_MANY = _fan_out(
    and_(
        _EVENTS.c.id.in_(bindparam("event_ids", expanding=True)),
        _CALLBACKS.c.definition.in_(bindparam("definitions", expanding=True)),
    ),
    _EVENTS.c.id,
)


@dataclass(frozen=True)
class NewEvent:
    """What the caller answers with and hands to the workers after the commit."""

    id: int
    uid: str
    definition: str
    delivery_ids: list[int]


@dataclass(frozen=True)
class EventIn:
    """An event to record: its definition, payload and where it came from."""

    definition: str
    payload: Any
    source: str = "api"
    idempotency_key: str | None = None


def _answers(items: list[EventIn], uids: list[str], event_ids: list[int], made: Any) -> list[NewEvent]:
    """Each event with its delivery ids (ascending) from the fan-out's (delivery id, event id) rows."""
    by_event: dict[int, list[int]] = defaultdict(list)
    for delivery_id, event_id in sorted(made):
        by_event[event_id].append(delivery_id)
    return [
        NewEvent(event_id, uid, item.definition, by_event.get(event_id, []))
        for event_id, uid, item in zip(event_ids, uids, items, strict=True)
    ]


def record_event(
    definition: str, payload: Any, *, source: str = "api", idempotency_key: str | None = None
) -> NewEvent:
    """Insert an event and one pending delivery per active callback of ``definition`` (not committed)."""
    return record_events([EventIn(definition, payload, source, idempotency_key)])[0]


def record_events(items: list[EventIn]) -> list[NewEvent]:
    """Insert events and their pending deliveries in two statements, however many (not committed)."""
    now = utcnow()
    # Core statements on the session's connection: compiled once, no ORM bookkeeping.
    conn = db.session.connection()
    uids = [new_uid("evt") for _ in items]
    event_ids = list(
        conn.execute(
            _INSERT_EVENTS,
            [
                {
                    "uid": uid,
                    "definition": item.definition,
                    "body": build_body(uid, item.definition, item.payload, now, False),
                    "source": item.source,
                    "is_test": False,
                    "idempotency_key": item.idempotency_key,
                    "created_at": now,
                }
                for uid, item in zip(uids, items, strict=True)
            ],
        ).scalars()
    )
    made = (
        conn.execute(_FAN_OUT_ONE, {"event_id": event_ids[0], "definition": items[0].definition, "now": now})
        if len(event_ids) == 1
        else conn.execute(
            _FAN_OUT_MANY,
            {"event_ids": event_ids, "definitions": sorted({i.definition for i in items}), "now": now},
        )
    )
    return _answers(items, uids, event_ids, made)


# PostgreSQL: the events, their fan-out (as ``_fan_out``) and what the caller needs back,
# in one statement. A single statement is atomic, so it runs in autocommit: no BEGIN or
# COMMIT round trips. Arrays make the text the same for any group size, so psycopg
# prepares it once per connection.
_PG_RECORD = """
WITH ev AS (
  INSERT INTO events (uid, definition, body, source, is_test, created_at)
  SELECT u, d, b, s, false, %(now)s
  FROM unnest(%(uids)s::varchar[], %(definitions)s::varchar[], %(bodies)s::text[], %(sources)s::varchar[])
    AS t(u, d, b, s)
  RETURNING id, uid, definition
), dl AS (
  INSERT INTO deliveries (event_id, callback_id, webhook_id, kind, status, attempt_count,
                          next_attempt_at, enqueued_at, created_at)
  SELECT ev.id, c.id, 'msg_' || substr(ev.uid, 5) || '_' || c.id, %(kind)s, %(status)s, 0,
         %(now)s, %(now)s, %(now)s
  FROM ev JOIN callbacks c ON c.definition = ev.definition AND c.active = true AND c.deleted_at IS NULL
  ORDER BY ev.id, c.id
  RETURNING id, event_id
)
SELECT ev.id, ev.uid, dl.id FROM ev LEFT JOIN dl ON dl.event_id = ev.id ORDER BY ev.id, dl.id
"""


def record_and_commit(items: list[EventIn]) -> list[NewEvent]:
    """Record events without idempotency keys with their deliveries, committed (on its own connection)."""
    dialect = db.engine.dialect.name
    if dialect == "sqlite":
        return _record_sqlite(items)
    if dialect != "postgresql":
        results = record_events(items)
        db.session.commit()
        return results
    now = utcnow()
    uids = [new_uid("evt") for _ in items]
    params = {
        "now": now,
        "uids": uids,
        "definitions": [item.definition for item in items],
        "bodies": [
            build_body(uid, item.definition, item.payload, now, False)
            for uid, item in zip(uids, items, strict=True)
        ],
        "sources": [item.source for item in items],
        "kind": DeliveryKind.EVENT.value,
        "status": DeliveryStatus.PENDING.value,
    }
    # The driver's connection straight from the pool: SQLAlchemy's execution machinery
    # cost twice what the statement does in Python.
    raw = db.engine.raw_connection()
    pg: Any = raw.dbapi_connection
    try:
        pg.autocommit = True
        with pg.cursor() as cursor:
            cursor.execute(_PG_RECORD, params)
            rows = cursor.fetchall()
        pg.autocommit = False  # as the pool hands connections out
    except Exception:
        raw.invalidate()  # whatever state the driver is in, the pool connects afresh
        raise
    finally:
        raw.close()
    made: dict[str, tuple[int, list[int]]] = {}
    for event_id, uid, delivery_id in rows:
        ids = made.setdefault(uid, (event_id, []))[1]
        if delivery_id is not None:
            ids.append(delivery_id)
    return [
        NewEvent(made[uid][0], uid, item.definition, made[uid][1])
        for uid, item in zip(uids, items, strict=True)
    ]


# SQLite: the same rows with the driver's connection (SQLAlchemy's machinery cost more than
# SQLite's own work). Times are written as SQLAlchemy writes them, so they compare alike.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
_SQLITE_EVENT = (
    "INSERT INTO events (uid, definition, body, source, is_test, created_at)"
    " VALUES (?, ?, ?, ?, 0, ?) RETURNING id"
)
_SQLITE_FAN_OUT = """
INSERT INTO deliveries (event_id, callback_id, webhook_id, kind, status, attempt_count,
                        next_attempt_at, enqueued_at, created_at)
SELECT e.id, c.id, 'msg_' || substr(e.uid, 5) || '_' || c.id, ?, ?, 0, ?, ?, ?
FROM events e JOIN callbacks c ON c.definition = e.definition
WHERE e.id IN ({ids}) AND c.active = 1 AND c.deleted_at IS NULL
ORDER BY e.id, c.id
RETURNING id, event_id
"""


def _record_sqlite(items: list[EventIn]) -> list[NewEvent]:
    now = utcnow()
    stamp = now.strftime(_SQLITE_TIME)
    uids = [new_uid("evt") for _ in items]
    raw = db.engine.raw_connection()
    conn: Any = raw.dbapi_connection
    try:
        cursor = conn.cursor()
        event_ids = []
        for uid, item in zip(uids, items, strict=True):
            body = build_body(uid, item.definition, item.payload, now, False)
            cursor.execute(_SQLITE_EVENT, (uid, item.definition, body, item.source, stamp))
            event_ids.append(cursor.fetchone()[0])
        cursor.execute(
            _SQLITE_FAN_OUT.format(ids=", ".join("?" * len(event_ids))),
            (DeliveryKind.EVENT.value, DeliveryStatus.PENDING.value, stamp, stamp, stamp, *event_ids),
        )
        made = cursor.fetchall()
        cursor.close()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        raw.close()
    return _answers(items, uids, event_ids, made)


@dataclass
class _Waiting:
    item: EventIn
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: NewEvent | None = None
    error: BaseException | None = None

    def outcome(self) -> NewEvent:
        if self.error is not None:
            raise RuntimeError("the group of events this one was written with failed") from self.error
        assert self.result is not None
        return self.result


class GroupCommit:
    """Group commit for concurrent events, with no thread of its own.

    The first request to arrive writes, commits and enqueues its event; events
    arriving meanwhile wait, and the first of them then writes all of them in one
    transaction with its own session, and so on. A request alone is written at
    once, exactly as without grouping; under load the fixed costs are shared.
    """

    limit = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._busy = False

    def submit(self, item: EventIn) -> NewEvent:
        """Record, commit and enqueue ``item`` (possibly with others); its ids once committed."""
        me = _Waiting(item)
        with self._lock:
            self._queue.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.done.wait()
            if not me.lead:
                return me.outcome()
        with self._lock:
            batch = self._queue[: self.limit]
            del self._queue[: self.limit]
        try:
            self._write(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for waiting in batch:
                waiting.done.set()
        return me.outcome()

    @staticmethod
    def _write(batch: list[_Waiting]) -> None:
        try:
            results = record_and_commit([w.item for w in batch])
        except BaseException as exc:
            db.session.rollback()
            for waiting in batch:
                waiting.error = exc
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.result = result
        dispatch.ring_soon([d for result in results for d in result.delivery_ids])


def submit(definition: str, payload: Any, *, source: str = "api") -> NewEvent:
    """Record, commit and enqueue an event, grouped with any arriving at the same time."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    group = app.extensions.get("cbdash_group_commit")
    if group is None:
        group = app.extensions.setdefault("cbdash_group_commit", GroupCommit())
    return group.submit(EventIn(definition, payload, source))
