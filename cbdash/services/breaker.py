"""Per-callback circuit breaker for synchronous invocations (SPEC §6).

States: ``closed`` (calls go through), ``open`` (calls skip the receiver and use
the failure policy at once) and ``half_open`` (one trial call is in flight; its
outcome closes or re-opens the breaker). It opens after ``BREAKER_FAILURES``
failed calls within ``BREAKER_WINDOW`` seconds with no successful call in
between, and stays open for ``BREAKER_COOLDOWN`` seconds before the trial.

Every transition is a conditional UPDATE, so concurrent web threads and
processes agree: only one of them wins the half-open trial, and a breaker is
opened once. The trial is a lease (``breaker_trial_until``): if the process
running it dies, the next call after the lease may try again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from flask import current_app
from sqlalchemy import and_, case, or_, update

from ..extensions import db
from ..formatting import plural
from ..models import Callback, utcnow

# Extra time a half-open trial holds its lease beyond the callback's timeout.
TRIAL_GRACE = timedelta(seconds=5)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


LABELS = {
    BreakerState.CLOSED: "Closed",
    BreakerState.OPEN: "Open",
    BreakerState.HALF_OPEN: "Half-open",
}


@dataclass(frozen=True)
class Config:
    failures: int
    window: timedelta
    cooldown: timedelta

    @property
    def enabled(self) -> bool:
        return self.failures > 0


def config() -> Config:
    """The breaker settings of the running app."""
    c = current_app.config
    return Config(
        failures=max(int(c["BREAKER_FAILURES"]), 0),
        window=timedelta(seconds=max(int(c["BREAKER_WINDOW"]), 1)),
        cooldown=timedelta(seconds=max(int(c["BREAKER_COOLDOWN"]), 0)),
    )


@dataclass(frozen=True)
class Admission:
    """Whether a call may go to the receiver; ``trial`` when it is the half-open trial."""

    allowed: bool
    trial: bool = False
    reason: str = ""


@dataclass(frozen=True)
class View:
    """What the UI and API show about a callback's breaker."""

    state: str
    label: str
    since: datetime | None
    reason: str | None
    failures: int
    threshold: int
    window_seconds: int
    cooldown_seconds: int
    retry_at: datetime | None  # when an open breaker allows its trial call


def view(cb: Callback, now: datetime | None = None) -> View:
    """The breaker's state as shown to people (an expired window counts as zero failures)."""
    cfg = config()
    now = now or utcnow()
    state = BreakerState(cb.breaker_state or BreakerState.CLOSED)
    failures = cb.breaker_failures or 0
    if cb.breaker_window_start is None or cb.breaker_window_start < now - cfg.window:
        failures = 0
    retry_at = None
    if state == BreakerState.OPEN and cb.breaker_since is not None:
        retry_at = cb.breaker_since + cfg.cooldown
    return View(
        state=state.value,
        label=LABELS[state],
        since=cb.breaker_since,
        reason=cb.breaker_reason,
        failures=failures,
        threshold=cfg.failures,
        window_seconds=int(cfg.window.total_seconds()),
        cooldown_seconds=int(cfg.cooldown.total_seconds()),
        retry_at=retry_at,
    )


def admit(cb: Callback, now: datetime | None = None) -> Admission:
    """May this call reach the receiver? Claims the half-open trial atomically when due."""
    cfg = config()
    now = now or utcnow()
    state = cb.breaker_state or BreakerState.CLOSED
    if state == BreakerState.CLOSED or not cfg.enabled:
        return Admission(True)
    since = cb.breaker_since or now
    if state == BreakerState.OPEN and since > now - cfg.cooldown:
        return _rejected(cb)
    if state == BreakerState.HALF_OPEN and cb.breaker_trial_until and cb.breaker_trial_until >= now:
        return _rejected(cb)
    lease = now + timedelta(seconds=cb.timeout) + TRIAL_GRACE
    cooled = now - cfg.cooldown
    claimed = db.session.execute(
        update(Callback)
        .where(
            Callback.id == cb.id,
            or_(
                and_(Callback.breaker_state == BreakerState.OPEN, Callback.breaker_since <= cooled),
                and_(Callback.breaker_state == BreakerState.HALF_OPEN, Callback.breaker_trial_until < now),
            ),
        )
        .values(
            breaker_state=BreakerState.HALF_OPEN,
            breaker_since=now,
            breaker_trial_until=lease,
            breaker_reason=f"trial call after a {int(cfg.cooldown.total_seconds())} s cool-down",
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if claimed.rowcount == 1:
        return Admission(True, trial=True)
    db.session.refresh(cb)  # another thread won the trial, or the breaker changed meanwhile
    if cb.breaker_state == BreakerState.CLOSED:
        return Admission(True)
    return _rejected(cb)


def _rejected(cb: Callback) -> Admission:
    if cb.breaker_state == BreakerState.HALF_OPEN:
        return Admission(False, reason="circuit breaker half-open: a trial call is in progress")
    since = cb.breaker_since.isoformat(timespec="seconds") + "Z" if cb.breaker_since else "?"
    why = f" ({cb.breaker_reason})" if cb.breaker_reason else ""
    return Admission(False, reason=f"circuit breaker open since {since}{why}")


def record_success(cb: Callback, trial: bool, now: datetime | None = None) -> None:
    """A call answered 2xx: close a half-open breaker, clear the failure count (not committed)."""
    now = now or utcnow()
    if trial:
        db.session.execute(
            update(Callback)
            .where(Callback.id == cb.id, Callback.breaker_state == BreakerState.HALF_OPEN)
            .values(
                breaker_state=BreakerState.CLOSED,
                breaker_since=now,
                breaker_reason="trial call succeeded",
                breaker_failures=0,
                breaker_window_start=None,
                breaker_trial_until=None,
            )
            .execution_options(synchronize_session=False)
        )
    elif (cb.breaker_failures or 0) > 0:
        # Only write when there is something to clear: most successful calls touch nothing.
        db.session.execute(
            update(Callback)
            .where(Callback.id == cb.id, Callback.breaker_state == BreakerState.CLOSED)
            .values(breaker_failures=0, breaker_window_start=None)
            .execution_options(synchronize_session=False)
        )


def record_failure(cb: Callback, trial: bool, cause: str, now: datetime | None = None) -> bool:
    """A call failed: count it; open the breaker at the threshold. True when this opened it."""
    cfg = config()
    now = now or utcnow()
    if not cfg.enabled:
        return False
    cause = cause[:200]
    if trial:
        result = db.session.execute(
            update(Callback)
            .where(Callback.id == cb.id, Callback.breaker_state == BreakerState.HALF_OPEN)
            .values(
                breaker_state=BreakerState.OPEN,
                breaker_since=now,
                breaker_reason=f"trial call failed: {cause}"[:255],
                breaker_trial_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1
    window_over = or_(
        Callback.breaker_window_start.is_(None), Callback.breaker_window_start < now - cfg.window
    )
    # Counted in SQL so concurrent failures never overwrite each other's increment.
    db.session.execute(
        update(Callback)
        .where(Callback.id == cb.id)
        .values(
            breaker_failures=case((window_over, 1), else_=Callback.breaker_failures + 1),
            breaker_window_start=case((window_over, now), else_=Callback.breaker_window_start),
        )
        .execution_options(synchronize_session=False)
    )
    window = int(cfg.window.total_seconds())
    opened = db.session.execute(
        update(Callback)
        .where(
            Callback.id == cb.id,
            Callback.breaker_state == BreakerState.CLOSED,
            Callback.breaker_failures >= cfg.failures,
        )
        .values(
            breaker_state=BreakerState.OPEN,
            breaker_since=now,
            breaker_reason=f"{plural(cfg.failures, 'failed call')} within {window} s; last: {cause}"[:255],
            breaker_trial_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return opened.rowcount == 1


def reset(cb: Callback, now: datetime | None = None) -> str:
    """Close the breaker by hand (admins); returns the previous state. Not committed."""
    previous = cb.breaker_state or BreakerState.CLOSED
    cb.breaker_state = BreakerState.CLOSED
    cb.breaker_since = now or utcnow()
    cb.breaker_reason = "reset by hand"
    cb.breaker_failures = 0
    cb.breaker_window_start = None
    cb.breaker_trial_until = None
    return previous
