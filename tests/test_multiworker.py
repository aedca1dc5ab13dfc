"""Many workers against one Redis and one database: every delivery is sent exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from rq import Worker
from sqlalchemy import func, select

from cbdash import dispatch
from cbdash import worker as worker_mod
from cbdash.constants import FINAL_STATUSES
from cbdash.extensions import db
from cbdash.models import Attempt, Delivery
from cbdash.queue import get_queue, get_redis
from cbdash.services import delivery
from tests.conftest import make_callback
from tests.workers import Workers

DELIVERIES = 2000
CALLBACKS = 10


def _finished() -> int:
    db.session.rollback()  # a fresh snapshot: the workers commit in other processes
    return db.session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.status.in_(list(FINAL_STATUSES)))
    )


@pytest.mark.slow
def test_three_worker_processes_send_each_of_2000_deliveries_exactly_once(app, receiver, tmp_path):
    for n in range(CALLBACKS):
        # A generous timeout: on a loaded CI machine a 5 s one could expire on an answer
        # already sent, and that retry would be a (legitimate) second request.
        make_callback(receiver.url(f"/cb{n}"), timeout=30)
    for n in range(DELIVERIES // CALLBACKS):
        delivery.create_event("order.created", {"n": n})
    db.session.commit()
    rows = db.session.execute(select(Delivery.id, Delivery.webhook_id).order_by(Delivery.id)).all()
    assert len(rows) == DELIVERIES
    ids = [r.id for r in rows]

    workers = Workers(app, tmp_path)
    try:
        procs = [workers.start(wait=False) for _ in range(3)]
        for proc in procs:
            workers.wait_ready(proc)
        # Every id is queued twice, in different batches and orders, so workers
        # really do race for the same deliveries; the database claim decides.
        assert dispatch.enqueue(ids)
        assert dispatch.enqueue(list(reversed(ids)))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _finished() < DELIVERIES:
            time.sleep(0.25)
        queue = get_queue(app)
        while time.monotonic() < deadline and (queue.count or queue.started_job_registry.count):
            time.sleep(0.1)  # let the duplicate jobs run too: they must send nothing
        jobs_done = {w.name: w.successful_job_count for w in Worker.all(connection=get_redis(app))}
    finally:
        workers.close()

    assert _finished() == DELIVERIES, workers.logs()
    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    twice = {k: n for k, n in sent.items() if n > 1}
    assert not twice, f"sent more than once: {list(twice.items())[:10]}"
    assert set(sent) == {r.webhook_id for r in rows}
    assert len(receiver.requests) == DELIVERIES
    statuses = dict(db.session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
    assert statuses == {"succeeded": DELIVERIES}
    # One successful attempt per delivery. (An attempt that never reached the receiver --
    # a refused connection on an overloaded machine -- may be logged and retried.)
    ok_per_delivery = db.session.execute(
        select(Attempt.delivery_id, func.count())
        .where(Attempt.status_code == 200)
        .group_by(Attempt.delivery_id)
    ).all()
    assert len(ok_per_delivery) == DELIVERIES
    assert {n for _, n in ok_per_delivery} == {1}
    # All three took part (the jobs were spread over them).
    busy = [name for name, count in jobs_done.items() if count > 0]
    assert len(busy) == 3, jobs_done


def test_only_one_of_several_workers_runs_the_reconciler(app, monkeypatch):
    calls: list[tuple[str, float]] = []
    lock = threading.Lock()

    def record(_app):  # type: ignore[no-untyped-def]
        owner = threading.current_thread().name
        with lock:
            calls.append((owner, time.monotonic()))

    monkeypatch.setattr(worker_mod, "reconcile_once", record)
    get_redis(app).delete(worker_mod.RECONCILER_LOCK)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=worker_mod._reconciler_loop,
            args=(app, stop, 0.05, f"host-{n}"),
            name=f"host-{n}",
            daemon=True,
        )
        for n in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(5)
    owners = {owner for owner, _ in calls}
    assert len(calls) >= 5, calls
    assert len(owners) == 1, owners
    assert get_redis(app).get(worker_mod.RECONCILER_LOCK).decode() in {f"host-{n}" for n in range(3)}
