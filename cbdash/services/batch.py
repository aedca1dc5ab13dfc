"""A job's deliveries at once: one claim, concurrent attempts, one write of the outcomes.

The rules are those of ``services.delivery`` (claim, skip, sign, send, record,
finish); this module changes only what they cost. A job's deliveries are
claimed with one UPDATE, sent concurrently from a small thread pool per worker
process (each attempt with its own timeout, signature and log row), and their
attempts and outcomes written in one transaction -- a few milliseconds per
batch instead of per delivery.

A slow receiver must not hold up fast ones: in ``cbdash worker`` (where a lease
keeper runs), attempts still running ``HANDOFF_AFTER`` seconds into a job are
handed off -- the job records the rest and returns, so the worker takes its
next job, and each straggler records its own outcome when it ends, its lease
renewed meanwhile. At most ``stragglers`` such attempts run at a time (then a
job waits for its own), so the pool always has threads for new work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import bindparam, insert, select, update

from ..constants import DeliveryStatus
from ..extensions import db
from ..models import Attempt as AttemptRow
from ..models import Callback, Delivery, Event, utcnow
from . import delivery as engine
from . import monitoring, settings, transport

log = logging.getLogger(__name__)
HANDOFF_AFTER = 1.0  # seconds after which a running attempt finishes on its own, the job moves on
WIDEN_AFTER = 0.05  # seconds an attempt may run before the window opens to the whole pool
FAST_WINDOW = 4  # attempts in flight per job while receivers answer fast
DEFAULT_CONCURRENCY = 16
OPEN = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)

OnOutcome = Callable[[engine.Outcome], None]
_INSERT_ATTEMPTS = insert(AttemptRow.__table__)


@dataclass(frozen=True)
class Target:
    """What signing needs from a callback, detached from the session (used in pool threads)."""

    headers: dict[str, str]
    secrets: tuple[str, ...]

    def signing_secrets(self) -> list[str]:
        return list(self.secrets)


@dataclass
class Attempt:
    """One delivery of the batch on its way: what to send and, once sent, what came back."""

    delivery_id: int
    claim: engine.Claim
    url: str = ""
    body: bytes = b""
    webhook_id: str = ""
    kind: str = ""
    timeout: float = 5.0
    target: Target | None = None
    result: transport.Response | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Pool:
    """The process's sending threads and its budget of handed-off attempts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.size = 0
        self._stragglers = 0

    def executor(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self.size != size:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="cbdash-send")
                self.size = size
            return self._executor

    def reserve(self, count: int) -> bool:
        """Take ``count`` straggler slots, all or none; a quarter of the pool stays for new jobs."""
        with self._lock:
            if self._stragglers + count > max(self.size - max(self.size // 4, 1), 0):
                return False
            self._stragglers += count
            return True

    def release(self) -> None:
        with self._lock:
            self._stragglers -= 1


POOL = _Pool()


def claim_batch(ids: list[int], now: datetime) -> dict[int, engine.Claim]:
    """Atomically move the due deliveries among ``ids`` to ``sending``, in one UPDATE."""
    rows = db.session.execute(
        select(Delivery.id, Delivery.status, Delivery.next_attempt_at, Callback.timeout)
        .join(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.id.in_(ids))
    ).all()
    candidates = {r.id: r for r in rows if r.status in OPEN}
    if not candidates:
        db.session.rollback()
        return {}
    longest = max(r.timeout for r in candidates.values())
    claimed = db.session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(list(candidates)),
            Delivery.status.in_(list(OPEN)),
            # The scheduler works in whole seconds and may fire a moment early.
            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now + timedelta(seconds=1)),
        )
        .values(
            status=DeliveryStatus.SENDING,
            locked_until=engine.claim_until(now, longest),
            attempt_count=Delivery.attempt_count + 1,
        )
        .returning(Delivery.id, Delivery.attempt_count)
        .execution_options(synchronize_session=False)
    ).all()
    db.session.commit()
    claims = {}
    for delivery_id, attempt_number in claimed:
        row = candidates[delivery_id]
        lateness = 0.0
        if row.status == DeliveryStatus.RETRYING and row.next_attempt_at is not None:
            lateness = min(max((now - row.next_attempt_at).total_seconds(), 0.0), engine.MAX_LATENESS_CREDIT)
        claims[delivery_id] = engine.Claim(attempt_number=attempt_number, lateness=lateness)
    return claims


def _send(item: Attempt, policy, read_limit: int) -> Attempt:  # type: ignore[no-untyped-def]
    """Runs in a pool thread: sign (fresh timestamp) and send; never touches the database."""
    try:
        item.headers = engine.request_headers(item.target, item.webhook_id, item.body, item.kind)  # type: ignore[arg-type]
        item.result = transport.post(
            item.url, item.body, item.headers, item.timeout, policy, read_limit=read_limit
        )
    except Exception:  # noqa: BLE001 - left unrecorded: its lease lapses and it is retried
        log.exception("delivery %s: the attempt could not be made", item.delivery_id)
    return item


def process_batch(ids: list[int], on_outcome: OnOutcome) -> list[engine.Outcome]:
    """Claim, send and record a job's deliveries; ``on_outcome`` schedules what each asks for."""
    now = utcnow()
    claims = claim_batch(ids, now)
    if not claims:
        return []
    for delivery_id in claims:
        engine.LEASES.add(delivery_id)
    handed_off: set[int] = set()
    try:
        outcomes, items = _prepare(claims, now)
        if items:
            outcomes += _send_and_record(items, now, on_outcome, handed_off)
    finally:
        # Whatever was not recorded lets its lease lapse: the reconciler retries it.
        for delivery_id in claims:
            if delivery_id not in handed_off:
                engine.LEASES.discard(delivery_id)
    for outcome in outcomes:
        on_outcome(outcome)
    return outcomes


def _prepare(claims: dict[int, engine.Claim], now: datetime) -> tuple[list[engine.Outcome], list[Attempt]]:
    """Read what each claimed delivery needs; skip what may no longer be sent (one query, no ORM)."""
    rows = db.session.execute(
        select(
            Delivery.id,
            Delivery.webhook_id,
            Delivery.kind,
            Event.body,
            Callback.id.label("callback_id"),
            Callback.url,
            Callback.timeout,
            Callback.headers,
            Callback.secret,
            Callback.previous_secret,
            Callback.previous_secret_expires_at,
            Callback.active,
            Callback.inactive_reason,
            Callback.deleted_at,
        )
        .join(Event, Event.id == Delivery.event_id)
        .outerjoin(Callback, Callback.id == Delivery.callback_id)
        .where(Delivery.id.in_(list(claims)))
    ).all()
    outcomes: list[engine.Outcome] = []
    items: list[Attempt] = []
    for row in rows:
        # The row carries the fields the engine's rules read from a delivery and its callback.
        reason = engine._skip_reason(row, row if row.callback_id is not None else None)  # type: ignore[arg-type]
        if reason:
            db.session.execute(
                update(Delivery)
                .where(Delivery.id == row.id)
                .values(
                    status=DeliveryStatus.SKIPPED,
                    status_detail=reason,
                    attempt_count=Delivery.attempt_count - 1,  # no request was made
                    next_attempt_at=None,
                    finished_at=now,
                    locked_until=None,
                )
                .execution_options(synchronize_session=False)
            )
            outcomes.append(engine.Outcome(row.id, DeliveryStatus.SKIPPED))
            continue
        items.append(
            Attempt(
                delivery_id=row.id,
                claim=claims[row.id],
                url=row.url,
                body=row.body.encode(),
                webhook_id=row.webhook_id,
                kind=row.kind,
                timeout=float(row.timeout),
                target=Target(dict(row.headers or {}), tuple(Callback.signing_secrets(row, now))),  # type: ignore[arg-type]
            )
        )
    if outcomes:
        db.session.commit()
    return outcomes, items


def _send_and_record(
    items: list[Attempt], now: datetime, on_outcome: OnOutcome, handed_off: set[int]
) -> list[engine.Outcome]:
    """Send the batch through the pool, a few at a time, then record what finished.

    Fast receivers need only a few attempts in flight, and every extra thread
    competing for the interpreter costs CPU; when an attempt has been running
    ``WIDEN_AFTER`` the window opens to the whole pool, and in ``cbdash worker``
    (where a lease keeper renews claims) an attempt running ``HANDOFF_AFTER`` is
    handed off and finishes on its own.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cfg = settings.current()
    size = max(int(app.config.get("DELIVERY_CONCURRENCY") or DEFAULT_CONCURRENCY), 1)
    executor = POOL.executor(size)
    handoff = engine.LEASES.seconds is not None
    todo = deque(items)
    running: dict[Future[Attempt], tuple[Attempt, float]] = {}
    finished: list[Attempt] = []
    while todo or running:
        clock = time.monotonic()
        slow = any(clock - started >= WIDEN_AFTER for _item, started in running.values())
        window = size if slow else min(FAST_WINDOW, size)
        while todo and len(running) < window:
            item = todo.popleft()
            running[executor.submit(_send, item, cfg.policy, cfg.read_limit)] = (item, time.monotonic())
        # Wake up when one finishes, or when one becomes slow enough to widen or hand off.
        deadlines = [clock + 0.25]
        for _item, started in running.values():
            if not slow:
                deadlines.append(started + WIDEN_AFTER)
            if handoff:
                deadlines.append(started + HANDOFF_AFTER)
        timeout = max(min(deadlines) - time.monotonic(), 0.005)
        done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            finished.append(running.pop(future)[0])
        if not handoff:
            continue
        clock = time.monotonic()
        late = [f for f, (_item, started) in running.items() if clock - started >= HANDOFF_AFTER]
        if late and POOL.reserve(len(late)):
            for future in late:
                item = running.pop(future)[0]
                handed_off.add(item.delivery_id)
                future.add_done_callback(
                    lambda _f, app=app, item=item: _finish_straggler(app, item, now, on_outcome)
                )
    return record(finished, now)


def record(items: list[Attempt], now: datetime) -> list[engine.Outcome]:
    """Write the attempts and outcomes of ``items`` in one transaction (one by one if that fails)."""
    try:
        outcomes = _record_all(items, now)
        db.session.commit()
        return outcomes
    except Exception:  # noqa: BLE001 - isolate the row that fails; the others are kept
        db.session.rollback()
        log.exception("recording a batch of %d attempts failed; recording them one by one", len(items))
    outcomes = []
    for item in items:
        try:
            outcomes += _record_all([item], now)
            db.session.commit()
        except Exception:  # noqa: BLE001 - its lease lapses and the reconciler retries it
            db.session.rollback()
            log.exception("delivery %s: recording the attempt failed", item.delivery_id)
    return outcomes


class _Row:
    """A delivery or callback row as plain attributes, for ``engine.finish`` to change in place.

    The engine's rules are written against ORM objects; they only read and set
    attributes, so they run unchanged on these, and what they changed is written
    back with one executemany UPDATE per shape instead of the ORM's unit of work.
    """

    def __init__(self, mapping: dict[str, Any]) -> None:
        self.__dict__.update(mapping)
        self._loaded = dict(mapping)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_loaded" and self._loaded.get(k, _UNSET) != v}


_UNSET = object()
_DELIVERY_COLUMNS = [
    c
    for c in Delivery.__table__.c
    if c.name not in ("webhook_id", "event_id", "created_at", "redelivery_of_id")
]
_CALLBACK_COLUMNS = [
    Callback.__table__.c[name]
    for name in (
        "id",
        "definition",
        "timeout",
        "active",
        "inactive_reason",
        "disabled_at",
        "retry_schedule",
        "consecutive_failures",
        "failing_since",
        "last_attempt_at",
        "last_status_code",
        "last_error",
    )
]


def _write_changes(table: Any, rows: list[_Row], where: Callable[[_Row], dict[str, Any]]) -> None:
    """UPDATE what changed in ``rows``, one executemany per set of changed columns."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        changed = row.changes()
        if changed:
            shapes.setdefault(tuple(sorted(changed)), []).append({**changed, **where(row)})
    conn = db.session.connection()
    for columns, params in shapes.items():
        conn.execute(_update_statement(table, columns), params)


_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}


def _update_statement(table: Any, columns: tuple[str, ...]) -> Any:
    key = (table.name, columns)
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = update(table).where(table.c.id == bindparam("w_id"))
        if table is Delivery.__table__:
            # Still the attempt this worker claimed: a stalled worker's late write changes nothing.
            stmt = stmt.where(
                table.c.status == DeliveryStatus.SENDING.value,
                table.c.attempt_count == bindparam("w_number"),
            )
        stmt = _UPDATES[key] = stmt.values({c: bindparam(c) for c in columns})
    return stmt


def _record_all(items: list[Attempt], now: datetime) -> list[engine.Outcome]:
    ids = [item.delivery_id for item in items]
    deliveries = {
        r["id"]: _Row(dict(r))
        for r in db.session.execute(select(*_DELIVERY_COLUMNS).where(Delivery.id.in_(ids))).mappings()
    }
    # Each callback once: a batch holds many deliveries of few callbacks.
    callbacks = {
        r["id"]: _Row(dict(r))
        for r in db.session.execute(
            select(*_CALLBACK_COLUMNS).where(Callback.id.in_({d.callback_id for d in deliveries.values()}))
        ).mappings()
    }
    conn = db.session.connection()
    session = db.session()
    attempts = []
    outcomes = []
    finished: list[tuple[_Row, int]] = []
    for item in items:
        if item.result is None:
            continue  # the attempt could not be made (logged in _send)
        d = deliveries.get(item.delivery_id)
        cb = callbacks.get(d.callback_id) if d is not None else None
        if d is None or cb is None:
            log.warning("delivery %s: its row or callback is gone; attempt not recorded", item.delivery_id)
            continue
        attempts.append(
            engine.attempt_values(d.id, item.claim.attempt_number, item.result, item.headers, now)
        )
        # Still ours? A worker that stalled past its lease may have lost the delivery
        # to another: the attempt stays on record, the state is the other's to set.
        ours = (d.status, d.attempt_count) == (DeliveryStatus.SENDING, item.claim.attempt_number)
        monitoring.count_attempt(
            conn,
            d.callback_id,
            now,
            item.result.duration_ms,
            item.result.status_code,
            item.result.error_class,
            session=session,
        )
        if not ours:
            log.warning("delivery %s: claim lost during the attempt; not updating it", d.id)
            continue
        outcomes.append(engine.finish(d, cb, item.result, lateness=item.claim.lateness))  # type: ignore[arg-type]
        monitoring.count_outcome(conn, d.callback_id, d.finished_at or now, d.status, session=session)
        finished.append((d, item.claim.attempt_number))
    if attempts:
        # One multi-row insert instead of the ORM's one statement per attempt.
        conn.execute(_INSERT_ATTEMPTS, attempts)
    numbers = {d.id: number for d, number in finished}
    _write_changes(
        Delivery.__table__, [d for d, _n in finished], lambda d: {"w_id": d.id, "w_number": numbers[d.id]}
    )
    _write_changes(Callback.__table__, list(callbacks.values()), lambda cb: {"w_id": cb.id})
    monitoring.write_pending(session)
    return outcomes


def _finish_straggler(app: Flask, item: Attempt, now: datetime, on_outcome: OnOutcome) -> None:
    """A handed-off attempt ended: record it in its own transaction, then free its slot."""
    try:
        with app.app_context():
            for outcome in record([item], now):
                on_outcome(outcome)
    except Exception:  # noqa: BLE001 - its lease lapses and the reconciler retries it
        log.exception("delivery %s: recording the handed-off attempt failed", item.delivery_id)
    finally:
        engine.LEASES.discard(item.delivery_id)
        POOL.release()
