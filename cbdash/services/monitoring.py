"""Monitoring: rollups counted with every attempt, windows, percentiles, the chart, queue state.

Counting happens in the flush that inserts an attempt (``count_attempt``) or
settles a delivery (``count_outcome``), into per-minute, per-hour and
all-time rows for the callback and for all callbacks (callback_id 0). Pages
then read a few dozen rows instead of scanning attempts, so they cost the same
with a thousand attempts or a million, and the figures outlive retention
pruning (the rollup tables have no foreign keys and are pruned on their own,
much longer, schedule).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, case, delete, event, func, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from ..constants import (
    AUTO_DISABLED_PREFIX,
    OPEN_STATUSES,
    DeliveryKind,
    DeliveryStatus,
    ErrorClass,
    Health,
)
from ..extensions import db
from ..models import Attempt, Callback, Delivery, LatencyRollup, StatsRollup, utcnow

MINUTE = 60
HOUR = 3600
TOTAL = 0  # resolution of the "since the start" rows that feed /metrics counters
ALL_CALLBACKS = 0
EPOCH = datetime(1970, 1, 1)

# Latency histogram upper bounds in ms: ten per decade from 1 ms to 100 s (a bucket is at
# most a third wider than the one before, so an estimated percentile is within that of the
# truth). Index len(LATENCY_BOUNDS_MS) holds everything slower.
_STEPS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(s * 10**d for d in range(5) for s in _STEPS) + (100_000.0,)

# Failure reasons by error class; HTTP errors split into 4xx and 5xx.
REASONS = ("timeout", "connect", "tls", "dns", "blocked", "redirect", "4xx", "5xx", "other")
REASON_LABELS = {
    "timeout": "Timeout",
    "connect": "Connection failed",
    "tls": "TLS error",
    "dns": "DNS lookup failed",
    "blocked": "Blocked (SSRF guard)",
    "redirect": "Redirect (not followed)",
    "4xx": "HTTP 4xx",
    "5xx": "HTTP 5xx",
    "other": "Other (invalid URL, unexpected)",
}
REASON_SHORT = {
    "timeout": "Timeout",
    "connect": "Connection",
    "tls": "TLS",
    "dns": "DNS",
    "blocked": "Blocked",
    "redirect": "Redirect",
    "4xx": "HTTP 4xx",
    "5xx": "HTTP 5xx",
    "other": "Other",
}
_CLASS_REASON = {
    ErrorClass.TIMEOUT: "timeout",
    ErrorClass.CONNECT: "connect",
    ErrorClass.TLS: "tls",
    ErrorClass.DNS: "dns",
    ErrorClass.BLOCKED: "blocked",
    ErrorClass.REDIRECT: "redirect",
}
COUNT_COLUMNS = (
    "attempts",
    "attempts_ok",
    *(f"fail_{r}" for r in REASONS),
    "duration_ms_sum",
    "deliveries_succeeded",
    "deliveries_failed",
)

# Window name -> (length, chart bar width).
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}
WINDOW_LABELS = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days"}
DEFAULT_WINDOW = "24h"
# Minute rows cover the ragged start of the longest window; hour rows outlive attempts.
KEEP_MINUTE_ROWS = timedelta(days=8)
KEEP_HOUR_ROWS = timedelta(days=400)


def floor_time(dt: datetime, seconds: int) -> datetime:
    """``dt`` rounded down to a multiple of ``seconds`` since the epoch (UTC)."""
    if seconds <= 0:
        return EPOCH
    if seconds == MINUTE:  # the hot path when counting: plain field resets
        return dt.replace(second=0, microsecond=0)
    if seconds == HOUR:
        return dt.replace(minute=0, second=0, microsecond=0)
    step = timedelta(seconds=seconds)
    return EPOCH + ((dt - EPOCH) // step) * step


def latency_index(duration_ms: float | None) -> int:
    """The histogram bucket of a duration (bucket ``i`` holds values ≤ bound ``i``)."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, max(float(duration_ms or 0.0), 0.0))


def failure_reason(status_code: int | None, error_class: str | None) -> str | None:
    """None for a success, else one of REASONS."""
    if error_class is None:
        return None if status_code is not None else "other"
    if error_class == ErrorClass.HTTP_STATUS and status_code is not None:
        if 400 <= status_code < 500:
            return "4xx"
        if status_code >= 500:
            return "5xx"
        return "other"
    return _CLASS_REASON.get(error_class, "other")  # type: ignore[call-overload]


def _scopes(callback_id: int | None, at: datetime, per_callback_total: bool = True) -> list[tuple]:
    minute, hour = floor_time(at, MINUTE), floor_time(at, HOUR)
    keys = [(MINUTE, ALL_CALLBACKS, minute), (HOUR, ALL_CALLBACKS, hour), (TOTAL, ALL_CALLBACKS, EPOCH)]
    if callback_id:
        keys += [(MINUTE, callback_id, minute), (HOUR, callback_id, hour)]
        if per_callback_total:
            keys.append((TOTAL, callback_id, EPOCH))
    return keys


_UPSERTS: dict[tuple[str, ...], Any] = {}
# Columns merged by keeping the smaller/larger value rather than adding, per table: the
# fastest and slowest attempt in each latency bucket, which make percentiles near exact.
_EXTREMES: dict[str, tuple[tuple[str, str], ...]] = {
    "latency_rollups": (("min_ms", "min"), ("max_ms", "max"))
}


def _extreme(dialect: str, kind: str, current: Any, new: Any) -> Any:
    if dialect == "postgresql":
        return (func.least if kind == "min" else func.greatest)(current, new)  # both skip NULLs
    # SQLite's two-argument min()/max() are scalar (and NULL if either side is).
    return (func.min if kind == "min" else func.max)(func.coalesce(current, new), new)


def _upsert(
    conn: Connection, table: Table, key: Sequence[str], rows: list[dict[str, Any]], increments: Sequence[str]
) -> None:
    """Add ``increments`` to existing rows (by ``key``) or insert them."""
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        cache_key = (dialect, table.name, *key, "|", *increments)
        stmt = _UPSERTS.get(cache_key)
        if stmt is None:
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table)
            assignments: dict[str, Any] = {c: table.c[c] + getattr(stmt.excluded, c) for c in increments}
            for column, kind in _EXTREMES.get(table.name, ()):
                assignments[column] = _extreme(dialect, kind, table.c[column], getattr(stmt.excluded, column))
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=assignments)
            _UPSERTS[cache_key] = stmt
        # One compiled statement run per row (executemany), in key order so concurrent
        # workers lock rows in the same order; a multi-row VALUES would be compiled
        # afresh on every call, which cost more than the delivery itself.
        conn.execute(stmt, sorted(rows, key=lambda r: tuple(r[k] for k in key)))
        return
    for row in rows:  # other databases: update, else insert (not concurrency-safe)
        where = [table.c[k] == row[k] for k in key]
        values: dict[str, Any] = {c: table.c[c] + row[c] for c in increments}
        for column, kind in _EXTREMES.get(table.name, ()):
            keep = table.c[column] < row[column] if kind == "min" else table.c[column] > row[column]
            values[column] = case((keep, table.c[column]), else_=row[column])
        result = conn.execute(update(table).where(*where).values(values))
        if result.rowcount == 0:
            conn.execute(table.insert().values(row))


# Counts from the ORM hooks below are summed per flush and written once, after it:
# a batch of 20 attempts costs a few upserts instead of a dozen per attempt.
_PENDING = "cbdash_pending_rollups"
# What one count adds: the key of each rollup row it touches (resolution, callback,
# bucket[, latency bucket]) and the values for all of them (increments, extremes).
Scopes = list[tuple[Any, ...]]


def _rows(key: Sequence[str], scopes: Scopes, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**dict(zip(key, scope, strict=True)), **values} for scope in scopes]


def _defer(
    session: Session,
    table: Table,
    key: Sequence[str],
    scopes: Scopes,
    values: dict[str, Any],
    increments: Sequence[str],
) -> None:
    pending = session.info.setdefault(_PENDING, {})
    group = pending.setdefault((table.name, tuple(key), tuple(increments)), {})
    # Most increments of a count are zero (one failure reason, one outcome): add the rest.
    added = [(c, values[c]) for c in increments if values[c]]
    extremes = _EXTREMES.get(table.name, ())
    for scope in scopes:
        have = group.get(scope)
        if have is None:
            group[scope] = dict(values)
            continue
        for c, v in added:
            have[c] += v
        for column, kind in extremes:
            have[column] = (min if kind == "min" else max)(have[column], values[column])


def _writer(conn: Connection, session: Session | None):  # type: ignore[no-untyped-def]
    if session is None:
        return lambda table, key, scopes, values, increments: _upsert(
            conn, table, key, _rows(key, scopes, values), increments
        )
    return lambda table, key, scopes, values, increments: _defer(
        session, table, key, scopes, values, increments
    )


@event.listens_for(Session, "after_flush")
def _write_deferred(session: Session, _context: Any) -> None:
    write_pending(session)


def write_pending(session: Session) -> None:
    """Write the counts deferred in ``session`` now (for callers whose writes bypass the ORM flush)."""
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    tables = {t.name: t for t in (StatsRollup.__table__, LatencyRollup.__table__)}
    conn = session.connection()
    for (name, key, increments), group in sorted(pending.items()):
        rows = [{**dict(zip(key, scope, strict=True)), **values} for scope, values in group.items()]
        _upsert(conn, tables[name], key, rows, increments)  # type: ignore[arg-type]


@event.listens_for(Session, "after_soft_rollback")
def _drop_deferred(session: Session, _previous: Any) -> None:
    session.info.pop(_PENDING, None)


_STATS_KEY = ("resolution", "callback_id", "bucket")
_LATENCY_KEY = ("resolution", "callback_id", "bucket", "le_index")
_ZERO_COUNTS: dict[str, Any] = dict.fromkeys(COUNT_COLUMNS, 0)


def attempt_increments(status_code: int | None, error_class: str | None, duration_ms: float) -> dict:
    """The counters one attempt adds to its rollup rows."""
    reason = failure_reason(status_code, error_class)
    inc: dict[str, Any] = dict(_ZERO_COUNTS)
    inc.update(attempts=1, attempts_ok=0 if reason else 1, duration_ms_sum=float(duration_ms or 0.0))
    if reason:
        inc[f"fail_{reason}"] = 1
    return inc


def count_attempt(
    conn: Connection,
    callback_id: int | None,
    started_at: datetime,
    duration_ms: float,
    status_code: int | None,
    error_class: str | None,
    session: Session | None = None,
) -> None:
    """Count one attempt in its rollups, in the transaction recording it (once per flush with a session)."""
    put = _writer(conn, session)
    put(
        StatsRollup.__table__,
        _STATS_KEY,
        _scopes(callback_id, started_at),
        attempt_increments(status_code, error_class, duration_ms),
        COUNT_COLUMNS,
    )
    le = latency_index(duration_ms)
    # No per-callback all-time histogram: /metrics exposes latency for all callbacks only.
    ms = float(duration_ms or 0.0)
    put(
        LatencyRollup.__table__,
        _LATENCY_KEY,
        [(*scope, le) for scope in _scopes(callback_id, started_at, per_callback_total=False)],
        {"count": 1, "min_ms": ms, "max_ms": ms},
        ("count",),
    )


_OUTCOME_COUNTS = {
    DeliveryStatus.SUCCEEDED: {**_ZERO_COUNTS, "deliveries_succeeded": 1},
    DeliveryStatus.FAILED: {**_ZERO_COUNTS, "deliveries_failed": 1},
}


def count_outcome(
    conn: Connection,
    callback_id: int | None,
    finished_at: datetime,
    status: str,
    session: Session | None = None,
) -> None:
    """Count a delivery reaching succeeded or failed, in the transaction that decides it."""
    inc = _OUTCOME_COUNTS.get(status)  # type: ignore[call-overload]
    if inc is None:
        return
    _writer(conn, session)(
        StatsRollup.__table__, _STATS_KEY, _scopes(callback_id, finished_at), inc, COUNT_COLUMNS
    )


# Counting hooks on the ORM flush: every path that writes an attempt or settles a delivery
# (worker, sync invocation, reconciler, anything added later) is counted, in the same
# transaction, without each one having to remember to. Bulk Core statements are not seen:
# the bench seeder and rebuilds write rollups themselves.
@event.listens_for(Attempt, "after_insert")
def _attempt_inserted(_mapper: Any, conn: Connection, target: Attempt) -> None:
    count_attempt(
        conn,
        _callback_id_of(conn, target),
        target.started_at or utcnow(),
        target.duration_ms or 0.0,
        target.status_code,
        target.error_class,
        session=inspect(target).session,
    )


@event.listens_for(Delivery, "after_insert")
def _delivery_inserted(_mapper: Any, conn: Connection, target: Delivery) -> None:
    if target.status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
        count_outcome(
            conn, target.callback_id, target.finished_at or utcnow(), target.status, inspect(target).session
        )


@event.listens_for(Delivery, "after_update")
def _delivery_updated(_mapper: Any, conn: Connection, target: Delivery) -> None:
    history = inspect(target).attrs.status.history
    if not history.added or history.deleted == history.added:
        return
    count_outcome(
        conn, target.callback_id, target.finished_at or utcnow(), target.status, inspect(target).session
    )


def _callback_id_of(conn: Connection, attempt: Attempt) -> int | None:
    state = inspect(attempt)
    loaded = state.dict.get("delivery")
    if loaded is not None:
        return loaded.callback_id
    session = state.session
    if session is not None:
        cached = session.identity_map.get(identity_key(Delivery, attempt.delivery_id))
        if cached is not None:
            return cached.callback_id  # type: ignore[attr-defined]
    return conn.execute(select(Delivery.callback_id).where(Delivery.id == attempt.delivery_id)).scalar()


def prune_rollups(now: datetime | None = None, batch: int = 5000) -> dict[str, int]:
    """Drop minute rows older than 8 days and hour rows older than 400 days, in small batches."""
    now = now or utcnow()
    removed = {"minute": 0, "hour": 0}
    for model in (StatsRollup, LatencyRollup):
        for res, keep, name in ((MINUTE, KEEP_MINUTE_ROWS, "minute"), (HOUR, KEEP_HOUR_ROWS, "hour")):
            old = select(model.id).where(model.resolution == res, model.bucket < now - keep).limit(batch)  # type: ignore[attr-defined]
            while True:
                ids = list(db.session.scalars(old))
                if not ids:
                    break
                db.session.execute(delete(model).where(model.id.in_(ids)))  # type: ignore[attr-defined]
                db.session.commit()  # one short transaction per batch
                removed[name] += len(ids)
    return removed


@dataclass(frozen=True)
class Window:
    """A monitoring window: [start, end], start rounded down to the minute or hour."""

    key: str
    start: datetime
    end: datetime
    step: timedelta

    @property
    def label(self) -> str:
        return WINDOW_LABELS[self.key]

    def segments(self) -> list[tuple[int, datetime, datetime | None]]:
        """Rollup reads covering the window: minute rows up to the first whole hour, then hours."""
        if self.end - self.start <= timedelta(hours=2):
            return [(MINUTE, self.start, None)]
        first_hour = floor_time(self.start, HOUR)
        if first_hour < self.start:
            first_hour += timedelta(hours=1)
        parts: list[tuple[int, datetime, datetime | None]] = []
        if first_hour > self.start:
            parts.append((MINUTE, self.start, first_hour))
        parts.append((HOUR, first_hour, None))
        return parts


def window(key: str | None, now: datetime | None = None) -> Window:
    """The named window ending now; ValueError for an unknown name.

    The last hour starts on a whole minute; longer windows on a whole hour (so they
    span up to an hour more than their name), which lets them read hour rows only.
    """
    key = key or DEFAULT_WINDOW
    if key not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}")
    now = now or utcnow()
    length, step = WINDOWS[key]
    return Window(key, floor_time(now - length, MINUTE if length <= timedelta(hours=1) else HOUR), now, step)


@dataclass
class Stats:
    """Counts and latency histogram for one scope over one window."""

    attempts: int = 0
    attempts_ok: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    duration_ms_sum: float = 0.0
    deliveries_succeeded: int = 0
    deliveries_failed: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    # Fastest and slowest attempt seen in each histogram bucket (when known).
    extremes: dict[int, tuple[float, float]] = field(default_factory=dict)

    def add_counts(self, row: Any) -> None:
        values = dict(zip(COUNT_COLUMNS, row, strict=True))
        self.attempts += int(values["attempts"] or 0)
        self.attempts_ok += int(values["attempts_ok"] or 0)
        for r in REASONS:
            self.reasons[r] += int(values[f"fail_{r}"] or 0)
        self.duration_ms_sum += float(values["duration_ms_sum"] or 0.0)
        self.deliveries_succeeded += int(values["deliveries_succeeded"] or 0)
        self.deliveries_failed += int(values["deliveries_failed"] or 0)

    @property
    def attempts_failed(self) -> int:
        return self.attempts - self.attempts_ok

    @property
    def timeouts(self) -> int:
        return self.reasons["timeout"]

    @property
    def deliveries(self) -> int:
        """Deliveries that reached a final outcome (succeeded or failed) in the window."""
        return self.deliveries_succeeded + self.deliveries_failed

    @property
    def success_rate(self) -> float | None:
        """Share of attempts that got a 2xx in time (None without attempts)."""
        return self.attempts_ok / self.attempts if self.attempts else None

    @property
    def delivery_success_rate(self) -> float | None:
        return self.deliveries_succeeded / self.deliveries if self.deliveries else None

    @property
    def mean_ms(self) -> float | None:
        return self.duration_ms_sum / self.attempts if self.attempts else None

    def percentile(self, q: float) -> float | None:
        return histogram_percentile(self.histogram, q, self.extremes)

    @property
    def p50(self) -> float | None:
        return self.percentile(0.50)

    @property
    def p95(self) -> float | None:
        return self.percentile(0.95)

    @property
    def p99(self) -> float | None:
        return self.percentile(0.99)

    def as_dict(self) -> dict[str, Any]:
        """The figures as the API returns them."""

        def rnd(v: float | None, n: int = 1) -> float | None:
            return None if v is None else round(v, n)

        return {
            "deliveries": {
                "finished": self.deliveries,
                "succeeded": self.deliveries_succeeded,
                "failed": self.deliveries_failed,
                "success_rate": rnd(self.delivery_success_rate, 4),
            },
            "attempts": {
                "total": self.attempts,
                "succeeded": self.attempts_ok,
                "failed": self.attempts_failed,
                "success_rate": rnd(self.success_rate, 4),
            },
            "timeouts": self.timeouts,
            "failure_reasons": dict(self.reasons),
            "latency_ms": {
                "p50": rnd(self.p50),
                "p95": rnd(self.p95),
                "p99": rnd(self.p99),
                "mean": rnd(self.mean_ms),
            },
        }


def histogram_percentile(
    histogram: dict[int, int], q: float, extremes: dict[int, tuple[float, float]] | None = None
) -> float | None:
    """Estimate the q-quantile (0..1, nearest rank) from bucket counts.

    Inside the bucket holding that rank the value is interpolated between the fastest
    and slowest attempt recorded there (or the bucket's bounds when unknown), so it is
    exact at the extremes and for a bucket of one, and never outside the bucket.
    """
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for index in sorted(histogram):
        count = histogram[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            position = rank - seen  # 1..count
            known = (extremes or {}).get(index)
            if known is not None and known[0] is not None and known[1] is not None:
                low, high = known
                return low if count == 1 else low + (high - low) * (position - 1) / (count - 1)
            if index >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return lower + (upper - lower) * (position - 0.5) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]


def _where(model: Any, resolution: int, lo: datetime, hi: datetime | None) -> list:
    conds = [model.resolution == resolution, model.bucket >= lo]
    if hi is not None:
        conds.append(model.bucket < hi)
    return conds


def stats_for(w: Window, callback_ids: Iterable[int]) -> dict[int, Stats]:
    """Stats per callback id (ALL_CALLBACKS for the whole install) over the window."""
    ids = sorted(set(callback_ids))
    result = {cid: Stats() for cid in ids}
    if not ids:
        return result
    sums = [func.sum(getattr(StatsRollup, c)) for c in COUNT_COLUMNS]
    for res, lo, hi in w.segments():
        rows = db.session.execute(
            select(StatsRollup.callback_id, *sums)
            .where(StatsRollup.callback_id.in_(ids), *_where(StatsRollup, res, lo, hi))
            .group_by(StatsRollup.callback_id)
        )
        for row in rows:
            result[row[0]].add_counts(row[1:])
        lat = db.session.execute(
            select(
                LatencyRollup.callback_id,
                LatencyRollup.le_index,
                func.sum(LatencyRollup.count),
                func.min(LatencyRollup.min_ms),
                func.max(LatencyRollup.max_ms),
            )
            .where(LatencyRollup.callback_id.in_(ids), *_where(LatencyRollup, res, lo, hi))
            .group_by(LatencyRollup.callback_id, LatencyRollup.le_index)
        )
        for cid, le, count, low, high in lat:
            stats = result[cid]
            stats.histogram[le] = stats.histogram.get(le, 0) + int(count or 0)
            if low is not None and high is not None:
                seen = stats.extremes.get(le)
                stats.extremes[le] = (low, high) if seen is None else (min(seen[0], low), max(seen[1], high))
    return result


def totals(w: Window) -> Stats:
    """Stats for all callbacks over the window."""
    return stats_for(w, [ALL_CALLBACKS])[ALL_CALLBACKS]


@dataclass
class Point:
    start: datetime
    end: datetime
    succeeded: int = 0
    failed: int = 0


def series(w: Window, callback_id: int = ALL_CALLBACKS) -> list[Point]:
    """Attempts succeeded vs failed per chart bar (bars of ``w.step``, the first one partial)."""
    step = int(w.step.total_seconds())
    first, last = floor_time(w.start, step), floor_time(w.end, step)
    points: list[Point] = []
    at = first
    while at <= last:
        points.append(Point(max(at, w.start), min(at + w.step, w.end)))
        at += w.step
    for res, lo, hi in w.segments():
        rows = db.session.execute(
            select(StatsRollup.bucket, StatsRollup.attempts, StatsRollup.attempts_ok).where(
                StatsRollup.callback_id == callback_id, *_where(StatsRollup, res, lo, hi)
            )
        )
        for bucket, attempts, ok in rows:
            i = (floor_time(bucket, step) - first) // w.step
            if 0 <= i < len(points):
                points[i].succeeded += int(ok or 0)
                points[i].failed += int((attempts or 0) - (ok or 0))
    return points


def open_deliveries() -> dict[str, int]:
    """Deliveries not finished yet, by status (an index-only count)."""
    counts = dict.fromkeys((s.value for s in OPEN_STATUSES), 0)
    rows = db.session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.status.in_([s.value for s in OPEN_STATUSES]))
        .group_by(Delivery.status)
    )
    for status, n in rows:
        counts[status] = int(n)
    return counts


KIND_COUNT_CAP = 10_000  # per kind; past it the page shows “10,000+” rather than count on


def kind_counts(w: Window) -> dict[str, tuple[int, bool]]:
    """Deliveries created in the window per kind, as (count, capped).

    Rollups are per callback, not per kind, so these are counted on
    ix_deliveries_kind_created (kind, created_at): one index range per kind, capped so a
    busy install pays for at most KIND_COUNT_CAP entries a kind.
    """
    out: dict[str, tuple[int, bool]] = {}
    for kind in DeliveryKind:
        capped = (
            select(Delivery.id)
            .where(Delivery.kind == kind.value, Delivery.created_at >= w.start)
            .limit(KIND_COUNT_CAP + 1)
            .subquery()
        )
        n = db.session.scalar(select(func.count()).select_from(capped)) or 0
        out[kind.value] = (min(n, KIND_COUNT_CAP), n > KIND_COUNT_CAP)
    return out


def health_counts(failing_after: int) -> dict[str, int]:
    """Callbacks (not deleted) by health: healthy, failing, auto-disabled, inactive.

    Narrow counts that each read an index (ix_callbacks_deleted_active, ix_callbacks_attention)
    rather than one pass over every callback row.
    """
    alive = Callback.deleted_at.is_(None)
    by_status = dict(
        db.session.execute(select(Callback.active, func.count()).where(alive).group_by(Callback.active)).all()
    )
    total = sum(by_status.values())
    inactive = by_status.get(False, 0)
    # Only deleted_at and the range on consecutive_failures in WHERE, so the (small) range
    # of ix_callbacks_attention is read rather than every active callback.
    failing = (
        db.session.scalar(
            select(func.sum(case((Callback.active.is_(True), 1), else_=0))).where(
                alive, Callback.consecutive_failures >= failing_after
            )
        )
        or 0
    )
    disabled = (
        db.session.scalar(
            select(func.count()).where(
                Callback.active.is_(False), alive, Callback.inactive_reason.startswith(AUTO_DISABLED_PREFIX)
            )
        )
        or 0
    )
    return {
        "total": total,
        "healthy": total - inactive - failing,
        "failing": failing,
        "disabled": disabled,
        "inactive": inactive - disabled,
    }


@dataclass
class CallbackStats:
    callback: Callback
    stats: Stats
    health: Health


@dataclass
class CallbackTable:
    rows: list[CallbackStats]
    page: int
    pages: int
    total: int
    per_page: int


def callback_table(w: Window, page: int, per_page: int, failing_after: int) -> CallbackTable:
    """Callbacks, the ones needing attention first, with their stats for the window.

    Ordered by consecutive failures then latest attempt (columns on the callback row),
    so only one page of callbacks has its rollups read, whatever the install's size.
    """
    base = select(Callback).where(Callback.deleted_at.is_(None))
    total = (
        db.session.scalar(select(func.count()).select_from(Callback).where(Callback.deleted_at.is_(None)))
        or 0
    )
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    callbacks = list(
        db.session.scalars(
            base.order_by(
                Callback.consecutive_failures.desc(),
                # SQLite puts NULLs last when descending (and then walks ix_callbacks_attention);
                # PostgreSQL needs telling.
                Callback.last_attempt_at.desc().nulls_last()
                if db.session.get_bind().dialect.name == "postgresql"
                else Callback.last_attempt_at.desc(),
                Callback.id.desc(),
            )
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    stats = stats_for(w, [cb.id for cb in callbacks])
    rows = [CallbackStats(cb, stats[cb.id], cb.health(failing_after)) for cb in callbacks]
    return CallbackTable(rows, page, pages, total, per_page)


@dataclass
class WorkerInfo:
    name: str
    state: str
    hostname: str | None
    pid: int | None
    last_heartbeat: datetime | None
    current_job: str | None


@dataclass
class QueueState:
    """What RQ says right now (Redis is only the carrier; the database is the truth)."""

    reachable: bool = True
    error: str | None = None
    name: str = ""
    depth: int = 0
    oldest_enqueued_at: datetime | None = None
    scheduled: int = 0
    started: int = 0
    failed: int = 0
    workers: list[WorkerInfo] = field(default_factory=list)
    scheduler_alive: bool = False
    scheduler_name: str | None = None
    checked_at: datetime = field(default_factory=utcnow)

    @property
    def workers_alive(self) -> int:
        return len(self.workers)

    @property
    def oldest_age_seconds(self) -> float | None:
        if self.oldest_enqueued_at is None:
            return None
        return max((self.checked_at - self.oldest_enqueued_at).total_seconds(), 0.0)

    @property
    def warnings(self) -> list[str]:
        if not self.reachable:
            return [f"Redis is unreachable ({self.error}): nothing is being delivered until it is back."]
        out = []
        if not self.workers:
            out.append("No worker is running: deliveries wait in the queue. Start one with “cbdash worker”.")
        if not self.scheduler_alive:
            out.append(
                "No scheduler is running: retries are not sent on time. "
                "“cbdash worker” starts one; check that a worker is up."
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        from ..formatting import iso

        return {
            "reachable": self.reachable,
            "error": self.error,
            "queue": self.name,
            "depth": self.depth,
            "oldest_job_enqueued_at": iso(self.oldest_enqueued_at),
            "oldest_job_age_seconds": None
            if self.oldest_age_seconds is None
            else round(self.oldest_age_seconds, 1),
            "scheduled_jobs": self.scheduled,
            "running_jobs": self.started,
            "failed_jobs": self.failed,
            "workers_alive": self.workers_alive,
            "workers": [
                {"name": w.name, "state": w.state, "last_heartbeat": iso(w.last_heartbeat)}
                for w in self.workers
            ],
            "scheduler_alive": self.scheduler_alive,
            "warnings": self.warnings,
        }


def _naive(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def queue_state() -> QueueState:
    """Queue depth, oldest waiting job, workers, scheduler and failed jobs, read from Redis."""
    from redis.exceptions import RedisError
    from rq import Worker
    from rq.job import Job
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
    from rq.scheduler import RQScheduler

    from ..queue import get_queue

    state = QueueState()
    try:
        queue = get_queue()
        conn = queue.connection
        state.name = queue.name
        state.depth = queue.count
        # Jobs are appended at the tail; pings jump to the head, so look at a few.
        head = queue.get_job_ids(0, 9)
        stamps = [j.enqueued_at for j in Job.fetch_many(head, connection=conn) if j and j.enqueued_at]
        state.oldest_enqueued_at = _naive(min(stamps)) if stamps else None
        state.scheduled = ScheduledJobRegistry(queue=queue).count
        state.started = StartedJobRegistry(queue=queue).count
        state.failed = FailedJobRegistry(queue=queue).count
        for w in Worker.all(queue=queue):
            job_id = w.get_current_job_id()
            state.workers.append(
                WorkerInfo(
                    name=w.name,
                    state=str(w.get_state()),
                    hostname=w.hostname,
                    pid=w.pid,
                    last_heartbeat=_naive(w.last_heartbeat),
                    current_job=job_id,
                )
            )
        # A scheduler holds this lock (and refreshes it every second) while it runs.
        holder = conn.get(RQScheduler.get_locking_key(queue.name))
        state.scheduler_alive = holder is not None
        state.scheduler_name = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
    except (RedisError, OSError) as exc:
        state.reachable = False
        state.error = type(exc).__name__
    return state


@dataclass
class Bar:
    x: float
    width: float
    ok_y: float
    ok_h: float
    fail_y: float
    fail_h: float
    point: Point
    title: str


@dataclass
class Chart:
    """Geometry of the succeeded-vs-failed bar chart, drawn as SVG by the template."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    bars: list[Bar]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    y_max: int
    succeeded: int
    failed: int
    title: str
    description: str


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k that is ≥ value (at least 1)."""
    if value <= 1:
        return 1
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * exp >= value:
            return m * exp
    return 10 * exp


def build_chart(points: list[Point], w: Window, tz: ZoneInfo, width: int = 760, height: int = 280) -> Chart:
    """Lay out stacked bars (succeeded below, failed above), axes and labels."""
    left, right, top, bottom = 56, width - 12, 12, height - 34
    plot_w, plot_h = right - left, bottom - top
    highest = max((p.succeeded + p.failed for p in points), default=0)
    y_max = nice_ceiling(highest)
    ticks = 4 if y_max >= 4 else y_max
    y_ticks = [(bottom - plot_h * i / ticks, f"{round(y_max * i / ticks):,}") for i in range(ticks + 1)]
    n = max(len(points), 1)
    slot = plot_w / n
    gap = min(4.0, slot * 0.2)
    step_fmt = "%H:%M" if w.step < timedelta(hours=6) else "%a %H:%M"
    bars: list[Bar] = []
    for i, p in enumerate(points):
        x = left + i * slot + gap / 2
        ok_h = plot_h * p.succeeded / y_max
        fail_h = plot_h * p.failed / y_max
        start, end = _local(p.start, tz), _local(p.end, tz)
        # Both ends carry their zone: around a daylight-saving change 02:00 happens twice.
        title = (
            f"{start:%a %b %-d, %H:%M %Z} – {end:%H:%M %Z}: {p.succeeded:,} succeeded, {p.failed:,} failed"
        )
        bars.append(Bar(x, slot - gap, bottom - ok_h, ok_h, bottom - ok_h - fail_h, fail_h, p, title))
    every = max(1, math.ceil(n / 6))
    x_ticks = [
        (left + i * slot + slot / 2, _local(p.start, tz).strftime(step_fmt))
        for i, p in enumerate(points)
        if i % every == 0
    ]
    succeeded = sum(p.succeeded for p in points)
    failed = sum(p.failed for p in points)
    unit = {"1h": "5 minutes", "24h": "hour", "7d": "6 hours"}[w.key]
    return Chart(
        width,
        height,
        left,
        top,
        right,
        bottom,
        bars,
        y_ticks,
        x_ticks,
        y_max,
        succeeded,
        failed,
        title=f"Attempts per {unit}: succeeded vs failed ({tz.key})",
        description=(
            f"{succeeded:,} attempts succeeded and {failed:,} failed between "
            f"{_local(w.start, tz):%b %-d %H:%M} and {_local(w.end, tz):%b %-d %H:%M %Z}."
        ),
    )


def _local(dt: datetime, tz: ZoneInfo) -> datetime:
    return dt.replace(tzinfo=UTC).astimezone(tz)


@dataclass
class Overview:
    window: Window
    totals: Stats
    points: list[Point]
    open: dict[str, int]
    health: dict[str, int]


def overview(w: Window, failing_after: int) -> Overview:
    """Everything the top of the monitoring page shows, for all callbacks."""
    return Overview(w, totals(w), series(w), open_deliveries(), health_counts(failing_after))


class RollupBuilder:
    """Rollups accumulated in memory and written in bulk (bench seeding, rebuilds)."""

    def __init__(self, keep_minutes_since: datetime | None = None) -> None:
        # Minute rows older than this are skipped: prune_rollups would drop them anyway.
        self.keep_minutes_since = keep_minutes_since
        self.stats: dict[tuple, dict[str, Any]] = {}
        self.latency: dict[tuple, list[float]] = {}  # key -> [count, min_ms, max_ms]

    def _keys(self, callback_id: int | None, at: datetime, per_callback_total: bool = True) -> list[tuple]:
        keys = _scopes(callback_id, at, per_callback_total)
        if self.keep_minutes_since is not None and at < self.keep_minutes_since:
            keys = [k for k in keys if k[0] != MINUTE]
        return keys

    def _add(self, keys: list[tuple], inc: dict[str, Any]) -> None:
        for key in keys:
            row = self.stats.get(key)
            if row is None:
                self.stats[key] = dict(inc)
            else:
                for name, value in inc.items():
                    if value:
                        row[name] += value

    def attempt(
        self,
        callback_id: int | None,
        started_at: datetime,
        duration_ms: float,
        status_code: int | None,
        error_class: str | None,
    ) -> None:
        self._add(
            self._keys(callback_id, started_at), attempt_increments(status_code, error_class, duration_ms)
        )
        le = latency_index(duration_ms)
        ms = float(duration_ms or 0.0)
        for r, c, b in self._keys(callback_id, started_at, per_callback_total=False):
            cell = self.latency.get((r, c, b, le))
            if cell is None:
                self.latency[(r, c, b, le)] = [1, ms, ms]
            else:
                cell[0] += 1
                cell[1] = min(cell[1], ms)
                cell[2] = max(cell[2], ms)

    def outcome(self, callback_id: int | None, finished_at: datetime, status: str) -> None:
        if status not in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
            return
        inc: dict[str, Any] = dict.fromkeys(COUNT_COLUMNS, 0)
        inc["deliveries_succeeded" if status == DeliveryStatus.SUCCEEDED else "deliveries_failed"] = 1
        self._add(self._keys(callback_id, finished_at), inc)

    def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The accumulated stats rows and latency rows, as insert parameters."""
        stats = [{"resolution": r, "callback_id": c, "bucket": b, **v} for (r, c, b), v in self.stats.items()]
        latency = [
            {
                "resolution": r,
                "callback_id": c,
                "bucket": b,
                "le_index": le,
                "count": int(n),
                "min_ms": lo,
                "max_ms": hi,
            }
            for (r, c, b, le), (n, lo, hi) in self.latency.items()
        ]
        return stats, latency

    def write(self, conn: Connection, *, batch: int = 500) -> int:
        """Add the accumulated counts to the rollup tables; returns the number of rows written."""
        stats, latency = self.rows()
        for table, rows, key, inc in (
            (StatsRollup.__table__, stats, _STATS_KEY, COUNT_COLUMNS),
            (LatencyRollup.__table__, latency, _LATENCY_KEY, ("count",)),
        ):
            for i in range(0, len(rows), batch):
                _upsert(conn, table, key, rows[i : i + batch], inc)  # type: ignore[arg-type]
        return len(stats) + len(latency)
