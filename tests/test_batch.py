"""Batch delivery: one claim per job, concurrent attempts, and slow receivers not holding up fast ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cbdash import dispatch
from cbdash.extensions import db
from cbdash.models import Attempt, Delivery, utcnow
from cbdash.services import batch, delivery
from cbdash.services import delivery as engine
from tests.conftest import make_callback, run_worker
from tests.receiver import Receiver, Reply
from tests.workers import Workers


@pytest.fixture
def slow() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def _event(definition: str = "order.created", queue: bool = True) -> list[int]:
    _event_row, deliveries = delivery.create_event(definition, {"n": 1})
    db.session.commit()
    ids = [d.id for d in deliveries]
    if queue:
        assert dispatch.enqueue(ids)
    return ids


def test_claim_batch_takes_only_due_open_deliveries_once(app, receiver):
    for n in range(4):
        make_callback(receiver.url(f"/{n}"))
    ids = _event(queue=False)
    rows = {d.id: d for d in db.session.scalars(select(Delivery).where(Delivery.id.in_(ids)))}
    rows[ids[1]].status = "succeeded"
    rows[ids[2]].status, rows[ids[2]].next_attempt_at = "retrying", utcnow() + timedelta(minutes=5)
    db.session.commit()
    now = utcnow()
    claims = batch.claim_batch(ids, now)
    assert sorted(claims) == [ids[0], ids[3]]
    assert all(c.attempt_number == 1 for c in claims.values())
    assert batch.claim_batch(ids, now) == {}  # a second worker gets nothing
    db.session.expire_all()
    states = dict(db.session.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(ids))).all())
    assert states == {ids[0]: "sending", ids[1]: "succeeded", ids[2]: "retrying", ids[3]: "sending"}


def test_a_batch_is_sent_concurrently_each_signed_and_logged(app, receiver, slow):
    slow.reply(Reply(delay=1.5))
    slow_cb = make_callback(slow.url())
    for n in range(9):
        make_callback(receiver.url(f"/{n}"))
    ids = _event()
    start = time.monotonic()
    run_worker(app)
    elapsed = time.monotonic() - start
    # Nine fast receivers answered while the slow one was still thinking.
    assert len(receiver.requests) == 9
    assert max(r.at for r in receiver.requests) < slow.requests[0].at + 1.0
    assert elapsed < 1.5 + 2.0, elapsed  # not 1.5 s + 9 sequential attempts behind it
    ids_sent = {r.headers["webhook-id"] for r in receiver.requests + slow.requests}
    assert len(ids_sent) == 10
    statuses = db.session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
    assert statuses == [("succeeded", 10)]
    assert db.session.scalar(select(func.count()).select_from(Attempt)) == 10
    slow_attempt = db.session.scalar(select(Attempt).join(Delivery).where(Delivery.callback_id == slow_cb.id))
    assert slow_attempt.duration_ms >= 1400
    assert len(ids) == 10


def test_one_failing_row_does_not_lose_the_rest_of_the_batch(app, receiver, monkeypatch):
    for n in range(3):
        make_callback(receiver.url(f"/{n}"))
    ids = _event()
    real = engine.attempt_values
    poisoned = ids[1]

    def attempt_values(delivery_id, *args):  # type: ignore[no-untyped-def]
        if delivery_id == poisoned:
            raise RuntimeError("disk full")
        return real(delivery_id, *args)

    monkeypatch.setattr(engine, "attempt_values", attempt_values)
    run_worker(app)
    db.session.expire_all()
    states = dict(db.session.execute(select(Delivery.id, Delivery.status)).all())
    assert states[ids[0]] == states[ids[2]] == "succeeded"
    # The poisoned one stays claimed: its lease lapses and the reconciler retries it.
    assert states[poisoned] == "sending"
    assert poisoned not in engine.LEASES.held()


@pytest.mark.slow
def test_a_slow_receiver_does_not_hold_up_later_deliveries_in_a_worker(app, receiver, slow, tmp_path):
    slow.reply(Reply(delay=4.0))
    make_callback(slow.url(), "slow.thing", timeout=10)
    make_callback(receiver.url("/fast"), "fast.thing")
    workers = Workers(app, tmp_path)
    try:
        workers.start()
        (slow_id,) = _event("slow.thing")
        slow.wait_for(1, timeout=10)
        started = time.monotonic()
        fast_ids = []
        for _ in range(5):  # five later jobs, each to a fast receiver
            (fast_id,) = _event("fast.thing")
            fast_ids.append(fast_id)
        got = receiver.wait_for(5, timeout=10)
        fast_done = time.monotonic() - started
        assert len(got) == 5
        assert fast_done < 2.5, fast_done  # the slow one still has seconds to go
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            db.session.expire_all()
            if db.session.get(Delivery, slow_id).status == "succeeded":
                break
            time.sleep(0.1)
    finally:
        workers.close()
    db.session.expire_all()
    handed_off = db.session.get(Delivery, slow_id)
    assert handed_off.status == "succeeded", workers.logs()
    assert handed_off.attempt_count == 1 and len(handed_off.attempts) == 1
    assert handed_off.attempts[0].duration_ms >= 3900
    assert len(slow.requests) == 1
    assert all(db.session.get(Delivery, i).status == "succeeded" for i in fast_ids)


def test_the_shared_watchdog_fires_at_each_deadline_and_never_after_cancel():
    from cbdash.services.transport import _Watchdog

    dog = _Watchdog()
    fired: list[tuple[str, float]] = []
    start = time.monotonic()
    late = dog.schedule(start + 0.30, lambda: fired.append(("late", time.monotonic() - start)))
    dog.schedule(start + 0.10, lambda: fired.append(("early", time.monotonic() - start)))
    cancelled = dog.schedule(start + 0.05, lambda: fired.append(("cancelled", 0.0)))
    dog.cancel(cancelled)
    deadline = time.monotonic() + 3
    while len(fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert [name for name, _ in fired] == ["early", "late"]
    assert 0.09 <= fired[0][1] < 0.5 and 0.29 <= fired[1][1] < 0.8
    dog.cancel(late)  # cancelling what already ran is harmless


MARKS: list[str] = []


def mark(name: str) -> None:
    """A job that is not a delivery (the worker must run it, not fold it)."""
    MARKS.append(name)


def test_the_worker_folds_waiting_delivery_jobs_into_one_and_runs_other_jobs_in_order(
    app, receiver, monkeypatch
):
    from cbdash import jobs
    from cbdash.queue import get_queue
    from cbdash.worker import CbdashWorker

    real_deliver = jobs.deliver
    batches: list[list[int]] = []

    def deliver(ids):  # type: ignore[no-untyped-def]
        batches.append(list(ids))
        MARKS.append("deliver")
        real_deliver(ids)

    make_callback(receiver.url())
    MARKS.clear()
    first = [_event()[0] for _ in range(6)]  # six jobs of one delivery each
    get_queue(app).enqueue(mark, "between", result_ttl=0)
    second = [_event()[0] for _ in range(6)]
    queue = get_queue(app)
    monkeypatch.setattr(jobs, "deliver", deliver)  # after queueing: RQ looks it up by name
    worker = CbdashWorker([queue], connection=queue.connection)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")

    # One job for the first six, the marker, one job for the other six.
    assert MARKS == ["deliver", "between", "deliver"]
    assert batches == [first, second]
    assert queue.count == 0
    sent = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(sent) == len(set(sent)) == 12
    db.session.expire_all()
    assert {db.session.get(Delivery, i).status for i in first + second} == {"succeeded"}
    # The folded jobs are gone from Redis, not left behind as orphans.
    assert not [k for k in queue.connection.keys("rq:job:*")]


def test_a_receivers_cookies_do_not_travel_to_the_next_delivery(app, receiver):
    receiver.reply(Reply(headers={"Content-Type": "application/json", "Set-Cookie": "session=abc; Path=/"}))
    make_callback(receiver.url())
    for _ in range(3):
        _event()
        run_worker(app)
    assert len(receiver.requests) == 3
    assert all("cookie" not in r.headers for r in receiver.requests)
