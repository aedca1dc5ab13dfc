"""Deliveries settled by bulk statements (reconciler, lost invocations) are counted too."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import Delivery, StatsRollup, utcnow
from cbdash.services import delivery, monitoring
from tests.conftest import make_callback


def _failed_total() -> int:
    return (
        db.session.scalar(
            select(func.sum(StatsRollup.deliveries_failed)).where(
                StatsRollup.callback_id == monitoring.ALL_CALLBACKS,
                StatsRollup.resolution == monitoring.TOTAL,
            )
        )
        or 0
    )


def test_a_ping_whose_worker_died_is_counted_as_a_failed_delivery(app):
    cb = make_callback("http://127.0.0.1:9/hook")
    ping = delivery.create_ping(cb)
    db.session.commit()
    before = _failed_total()
    ping.status = "sending"
    ping.attempt_count = 1
    ping.locked_until = utcnow() - timedelta(seconds=5)
    db.session.commit()
    assert _failed_total() == before  # "sending" is not an outcome

    delivery.reclaim_stale(utcnow())
    db.session.commit()

    assert db.session.get(Delivery, ping.id, populate_existing=True).status == "failed"
    assert _failed_total() == before + 1
