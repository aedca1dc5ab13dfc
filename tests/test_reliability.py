"""Nothing is lost: killed workers, a flushed Redis, restarts under load.

The slow tests run real ``python -m cbdash worker`` processes (tests/workers.py)
with recovery knobs turned down (lease 4 s, reconciler every 0.5 s, requeue
after 3 s); the bounds they assert scale with those settings.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from rq.suspension import suspend
from sqlalchemy import func, select, update

from cbdash import dispatch, jobs
from cbdash.extensions import db
from cbdash.models import Delivery, utcnow
from cbdash.queue import get_queue, get_redis
from cbdash.services import delivery
from tests.conftest import make_callback, run_worker
from tests.receiver import Reply
from tests.test_delivery import reload, trigger
from tests.workers import Workers


@pytest.fixture
def app_config() -> dict:
    return {"MAX_TIMEOUT": 60, "RETRY_SCHEDULE": "1,2,4"}


@pytest.fixture
def workers(app, tmp_path):  # type: ignore[no-untyped-def]
    w = Workers(app, tmp_path)
    yield w
    w.close()


def statuses(ids: list[int]) -> dict[str, int]:
    db.session.expire_all()
    rows = db.session.execute(
        select(Delivery.status, func.count()).where(Delivery.id.in_(ids)).group_by(Delivery.status)
    ).all()
    return {s: n for s, n in rows}


def wait_until(check, seconds: float, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return check()


# In process: the reconciler's rules, one by one.


def test_stale_claim_is_reclaimed_and_the_lost_attempt_recorded(app, receiver):
    make_callback(receiver.url())
    (d_id,) = trigger()
    assert delivery.claim(d_id, utcnow())  # a worker took it ... and died
    db.session.execute(
        update(Delivery).where(Delivery.id == d_id).values(locked_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    get_redis(app).set(jobs.EPOCH_KEY, "ok")
    result = jobs.reconcile()
    assert result["reclaimed"] == 1
    d = reload(d_id)
    assert d.status == "retrying" and d.attempt_count == 1
    assert "outcome is unknown" in d.attempts[0].error_message
    run_worker(app)
    d = reload(d_id)
    assert d.status == "succeeded"
    assert d.attempt_count == 2 == len(d.attempts)


def test_a_delivery_that_keeps_killing_workers_gives_up(app, receiver):
    make_callback(receiver.url(), retry_schedule="1")
    (d_id,) = trigger()
    for _ in range(2):
        db.session.execute(update(Delivery).where(Delivery.id == d_id).values(next_attempt_at=utcnow()))
        db.session.commit()
        assert delivery.claim(d_id, utcnow())
        db.session.execute(
            update(Delivery).where(Delivery.id == d_id).values(locked_until=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        delivery.reclaim_stale(utcnow())
    d = reload(d_id)
    assert d.status == "failed"
    assert d.status_detail == "worker lost during the last attempt"
    assert d.attempt_count == 2 == len(d.attempts)


def test_live_claim_is_left_alone(app, receiver):
    make_callback(receiver.url())
    (d_id,) = trigger()
    assert delivery.claim(d_id, utcnow())
    assert delivery.reclaim_stale(utcnow()) == []
    assert reload(d_id).status == "sending"


def test_lease_renewal_extends_only_held_claims(app, receiver):
    make_callback(receiver.url())
    a, b = trigger(), trigger()
    delivery.LEASES.seconds = 5
    try:
        assert delivery.claim(a[0], utcnow()) and delivery.claim(b[0], utcnow())
        db.session.execute(update(Delivery).values(locked_until=utcnow()))
        db.session.commit()
        delivery.LEASES.add(a[0])
        assert delivery.renew_leases() == 1
        assert reload(a[0]).locked_until > utcnow() + timedelta(seconds=4)
        assert reload(b[0]).locked_until <= utcnow()
    finally:
        delivery.LEASES.seconds = None
        delivery.LEASES.discard(a[0])


def test_lost_queue_entry_is_requeued_after_requeue_after(app, receiver):
    make_callback(receiver.url())
    (d_id,) = trigger()
    get_redis(app).set(jobs.EPOCH_KEY, "ok")
    get_queue().empty()  # the job vanished
    assert jobs.reconcile()["requeued"] == 0  # too early to call it lost
    db.session.execute(
        update(Delivery).where(Delivery.id == d_id).values(enqueued_at=utcnow() - timedelta(minutes=2))
    )
    db.session.execute(
        update(Delivery).where(Delivery.id == d_id).values(next_attempt_at=utcnow() - timedelta(minutes=2))
    )
    db.session.commit()
    assert jobs.reconcile()["requeued"] == 1
    run_worker(app)
    assert reload(d_id).status == "succeeded"


def test_a_long_backlog_is_not_mistaken_for_a_loss(app, receiver):
    make_callback(receiver.url())
    (first,) = trigger()
    (second,) = trigger()
    get_redis(app).set(jobs.EPOCH_KEY, "ok")
    now = utcnow()
    for d_id, minutes in ((first, 5), (second, 2)):
        ago = now - timedelta(minutes=minutes)
        db.session.execute(
            update(Delivery).where(Delivery.id == d_id).values(enqueued_at=ago, next_attempt_at=ago)
        )
    db.session.commit()
    queue = get_queue()
    first_job, second_job = queue.get_jobs()
    for job, minutes in ((first_job, 5), (second_job, 2)):
        job.enqueued_at = job.enqueued_at - timedelta(minutes=minutes)
        job.save()
    # Both wait in a long queue for minutes: not lost.
    assert jobs.reconcile()["requeued"] == 0
    # The first job vanishes; the queue's oldest entry is now younger than its delivery.
    queue.remove(first_job)
    assert jobs.reconcile()["requeued"] == 1
    assert reload(first).enqueued_at > now - timedelta(seconds=5)
    assert reload(second).enqueued_at < now - timedelta(minutes=1)


def test_redis_that_lost_its_data_is_refilled(app, receiver):
    make_callback(receiver.url(), retry_schedule="60")  # the retry stays in the future
    receiver.reply(Reply(500), Reply(200))
    (retrying,) = trigger()
    run_worker(app)
    assert reload(retrying).status == "retrying"
    pending = trigger() + trigger()
    get_redis(app).flushdb()  # Redis restarted empty
    result = jobs.reconcile()
    assert result["recovered"] == 3
    assert get_redis(app).get(jobs.EPOCH_KEY).startswith(b"ok")
    assert get_queue().count == 1  # one batch with both due deliveries
    (job_id,) = ScheduledJobRegistry(queue=get_queue()).get_job_ids()  # the retry, at its time
    run_worker(app)
    assert statuses(pending) == {"succeeded": 2}
    assert jobs.reconcile()["recovered"] == 0  # nothing twice
    assert job_id


def test_redis_down_at_trigger_time_loses_nothing(app, client, auth, receiver, monkeypatch):
    make_callback(receiver.url())

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(dispatch, "get_queue", broken)
    monkeypatch.setattr(dispatch, "get_redis", broken)
    response = client.post(
        "/api/v1/events", json={"definition": "order.created", "payload": {}}, headers=auth
    )
    assert response.status_code == 202  # the event is safe in the database
    (d_id,) = response.get_json()["delivery_ids"]
    dispatch.flush_rings(app)  # the hand-over (off the request path) has found Redis down
    monkeypatch.undo()
    d = reload(d_id)
    assert d.status == "pending" and d.enqueued_at is None
    d.next_attempt_at = utcnow() - timedelta(seconds=30)
    db.session.commit()
    get_redis(app).set(jobs.EPOCH_KEY, "ok")
    assert jobs.reconcile()["requeued"] == 1
    run_worker(app)
    assert reload(d_id).status == "succeeded"


# Real worker processes.


@pytest.mark.slow
def test_kill_9_mid_attempt_then_a_new_worker_completes_it(app, receiver, workers):
    receiver.reply(Reply(200, body=b"done", delay=30))  # every request takes 30 s
    make_callback(receiver.url(), timeout=60)
    first = workers.start()
    (d_id,) = trigger()
    assert receiver.wait_for(1, 10), workers.logs()
    time.sleep(2)
    assert reload(d_id).status == "sending"
    workers.kill(first)
    killed_at = time.monotonic()
    # The scheduler child notices its worker is gone and leaves (releasing its lock).
    assert wait_until(lambda: not workers.group_alive(first), 5), "orphaned scheduler still running"
    workers.start()
    started_in = time.monotonic() - killed_at  # Python + app start-up, seconds on a busy machine
    assert len(receiver.wait_for(2, 20)) == 2, workers.logs()
    recovered_in = receiver.requests[1].at - killed_at
    # The claim lapses at most CLAIM_LEASE (4 s) after the kill; the new worker's
    # reconciler (every 0.5 s, or at start-up) then hands the delivery over.
    assert recovered_in < max(started_in, 4) + 1.5, (recovered_in, started_in)
    done = wait_until(lambda: reload(d_id).status == "succeeded", 40, 0.25)
    assert done, (reload(d_id).status, workers.logs())
    d = reload(d_id)
    assert d.attempt_count == 2 == len(d.attempts)
    assert d.attempts[0].error_message.startswith("The worker stopped")
    assert d.attempts[1].status_code == 200
    # The new worker's 30 s attempt outlived its 4 s lease many times: renewals kept it.
    assert len(receiver.requests) == 2
    print(f"recovered {recovered_in:.1f} s after kill -9 (worker start-up {started_in:.1f} s)")


@pytest.mark.slow
def test_flushed_redis_with_queued_deliveries_is_refilled_from_the_database(app, receiver, workers):
    make_callback(receiver.url())
    workers.start()
    (warmup,) = trigger()
    assert wait_until(lambda: reload(warmup).status == "succeeded", 10)
    assert wait_until(lambda: get_redis(app).get(jobs.EPOCH_KEY), 5)
    suspend(get_redis(app))  # workers stop taking jobs; the queue fills up
    ids = [i for _ in range(20) for i in trigger()]
    time.sleep(0.5)
    # A worker already waiting on the queue may take one job before it sees the suspension.
    assert get_queue().count >= 19
    assert statuses(ids).get("pending", 0) >= 19
    get_redis(app).flushdb()  # Redis loses every queued job (and the suspension)
    t0 = time.monotonic()
    assert wait_until(lambda: statuses(ids) == {"succeeded": 20}, 15), (statuses(ids), workers.logs())
    took = time.monotonic() - t0
    assert took < 5, took
    sent = [r.headers["webhook-id"] for r in receiver.requests]
    assert sorted(sent) == sorted({r.webhook_id for r in map(reload, [warmup, *ids])})
    print(f"refilled and delivered in {took:.1f} s")


@pytest.mark.slow
def test_thousand_events_while_the_worker_restarts_twice(app, receiver, workers):
    make_callback(receiver.url())
    worker = workers.start()
    ids: list[int] = []
    t0 = time.monotonic()
    for batch in range(10):
        created = []
        for _ in range(100):
            _event, deliveries = delivery.create_event("order.created", {"batch": batch})
            created += deliveries
        db.session.commit()
        ids += [d.id for d in created]
        dispatch.enqueue(ids[-100:])
        if batch == 3:
            workers.stop(worker)  # a deploy: warm shutdown
            worker = workers.start()
        if batch == 6:
            wait_until(lambda: len(receiver.requests) > 650, 20, 0.02)
            workers.kill(worker)  # a crash: kill -9 mid-batch
            worker = workers.start()
    assert len(ids) == 1000
    done = wait_until(lambda: statuses(ids) == {"succeeded": 1000}, 600, 0.5)
    assert done, (statuses(ids), workers.logs())
    took = time.monotonic() - t0
    wanted = set(db.session.scalars(select(Delivery.webhook_id).where(Delivery.id.in_(ids))))
    seen = [r.headers["webhook-id"] for r in receiver.requests]
    assert wanted <= set(seen)  # every event arrived at least once
    print(f"1000 deliveries in {took:.1f} s, {len(seen) - len(wanted)} duplicates")


def test_a_worker_stops_at_once_even_when_its_command_listener_is_between_subscriptions(app):
    """RQ polls its command channel with a 60 s wait and redis-py 8 joins that thread on stop:
    a worker stopping while the listener waits for a subscription hung for a minute."""
    import threading

    from cbdash.worker import CbdashWorker, QuickStopWorker

    queue = get_queue(app)
    for kind in (QuickStopWorker, CbdashWorker):
        worker = kind([queue], connection=queue.connection)
        worker.subscribe()
        worker.pubsub.unsubscribe()
        time.sleep(0.5)  # the listener reads the confirmation and waits for a new subscription
        stopper = threading.Thread(target=worker.pubsub_thread.stop, daemon=True)
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive(), f"{kind.__name__}: the listener did not stop within 5 s"
        assert time.monotonic() - started < 2
        worker.pubsub.close()
