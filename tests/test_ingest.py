"""POST /api/v1/events on its fast path: the outbox rows, the queue, idempotency, Redis down."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import redis
from sqlalchemy import func, select

from cbdash import dispatch, extensions
from cbdash.extensions import db
from cbdash.models import Delivery, Event, utcnow
from cbdash.queue import get_queue, get_redis
from cbdash.services import callbacks, delivery, ingest
from cbdash.worker import drain_all_ready
from tests.conftest import make_callback, run_worker


def _ready(app) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The ready list's entries once this process's hand-overs are pushed."""
    dispatch.flush_rings(app)
    return get_redis(app).lrange(dispatch.ready_key(get_queue(app).name), 0, -1)


def _post(client, auth, definition="order.created", payload=None, headers=None):  # type: ignore[no-untyped-def]
    body = {"definition": definition, "payload": payload if payload is not None else {"order_id": "ord_1"}}
    return client.post("/api/v1/events", json=body, headers={**auth, **(headers or {})})


def test_event_fans_out_to_active_callbacks_and_is_queued_once_committed(app, client, auth, receiver):
    first = make_callback(receiver.url("/a"), timeout=7)
    second = make_callback(receiver.url("/b"), timeout=3)
    make_callback(receiver.url("/off"), active=False)
    gone = make_callback(receiver.url("/gone"))
    callbacks.soft_delete(gone)
    make_callback(receiver.url("/other"), "order.paid")
    db.session.commit()

    response = _post(client, auth, payload={"order_id": "ord_9", "total": "12.50"})
    assert response.status_code == 202
    data = response.get_json()
    rows = db.session.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert data["delivery_ids"] == [d.id for d in rows]
    assert [d.callback_id for d in rows] == [first.id, second.id]
    event = db.session.scalar(select(Event))
    assert data == {
        "event_id": event.uid,
        "definition": "order.created",
        "delivery_ids": data["delivery_ids"],
    }
    envelope = json.loads(event.body)
    assert envelope["id"] == event.uid and envelope["data"] == {"order_id": "ord_9", "total": "12.50"}
    assert all(d.status == "pending" and d.kind == "event" and d.attempt_count == 0 for d in rows)
    assert all(d.enqueued_at is not None and d.next_attempt_at is not None for d in rows)
    assert len({d.webhook_id for d in rows}) == 2 and all(d.webhook_id.startswith("msg_") for d in rows)

    # Handed to the workers in one Redis command; a worker's dispatcher makes the job.
    assert get_queue(app).count == 0
    ready = _ready(app)
    assert len(ready) == 1
    assert dispatch.parse_ready(ready[0]) == data["delivery_ids"]
    drain_all_ready(app)
    (job,) = get_queue(app).get_jobs()
    assert job.args == (data["delivery_ids"],)
    assert job.timeout >= 7 + 3  # derived from the callbacks' timeouts, never shorter


def test_events_arriving_together_become_one_job_of_many_deliveries(app, client, auth, receiver):
    ids = [make_callback(receiver.url(f"/{n}")).id for n in range(3)]
    sent = [_post(client, auth).get_json()["delivery_ids"] for _ in range(20)]
    # Handed over off the request path: what gathered meanwhile goes in one entry.
    ready = _ready(app)
    assert 1 <= len(ready) <= 20
    assert [d for entry in ready for d in dispatch.parse_ready(entry)] == [d for e in sent for d in e]
    drain_all_ready(app)
    jobs = get_queue(app).get_jobs()
    flat = [d for event in sent for d in event]
    assert [list(j.args[0]) for j in jobs] == [flat[:50], flat[50:]]  # jobs of up to 50, in order
    run_worker(app)
    statuses = db.session.execute(select(Delivery.callback_id, Delivery.status)).all()
    assert len(statuses) == 60 and {s for _cb, s in statuses} == {"succeeded"}
    assert {cb for cb, _s in statuses} == set(ids)
    assert len(receiver.requests) == 60


def test_a_malformed_ready_entry_is_skipped_and_the_rest_queued(app, client, auth, receiver):
    make_callback(receiver.url())
    key = dispatch.ready_key(get_queue(app).name)
    get_redis(app).rpush(key, b"garbage|x:y")
    (delivery_id,) = _post(client, auth).get_json()["delivery_ids"]
    drain_all_ready(app)
    (job,) = get_queue(app).get_jobs()
    assert job.args == ([delivery_id],)


def test_event_without_active_callbacks_is_stored_with_no_deliveries(app, client, auth):
    response = _post(client, auth, definition="nobody.listens")
    assert response.status_code == 202
    assert response.get_json()["delivery_ids"] == []
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1
    assert get_queue(app).count == 0


def test_a_repeated_idempotency_key_returns_the_first_result(app, client, auth, receiver):
    make_callback(receiver.url())
    headers = {"Idempotency-Key": "order-42-created"}
    first = _post(client, auth, headers=headers)
    again = _post(client, auth, headers=headers)  # the same request (a different one is 409: test_api)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["idempotent_replay"] is True
    assert again.get_json()["delivery_ids"] == first.get_json()["delivery_ids"]
    assert again.get_json()["event_id"] == first.get_json()["event_id"]
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert [dispatch.parse_ready(e) for e in _ready(app)] == [first.get_json()["delivery_ids"]]


def test_with_redis_down_the_event_is_accepted_and_left_for_the_reconciler(
    app, client, auth, receiver, monkeypatch
):
    make_callback(receiver.url())

    def unreachable():  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(dispatch, "get_queue", unreachable)
    monkeypatch.setattr(dispatch, "get_redis", unreachable)
    response = _post(client, auth)
    dispatch.flush_rings(app)  # the hand-over (off the request path) has found Redis down
    assert response.status_code == 202
    (delivery_id,) = response.get_json()["delivery_ids"]
    db.session.expire_all()
    row = db.session.get(Delivery, delivery_id)
    assert row.status == "pending"
    assert row.enqueued_at is None  # not queued: the reconciler must not wait for a requeue delay
    later = utcnow() + timedelta(seconds=11)
    lost = delivery.overdue(later, due_grace=timedelta(seconds=10), requeue_after=timedelta(seconds=60))
    assert lost == [delivery_id]


def test_concurrent_events_are_written_together_each_with_its_own_deliveries(app, auth, receiver):
    """Requests arriving at once share a transaction (group commit); each answer is its own."""
    ids = [make_callback(receiver.url(f"/{n}")).id for n in range(3)]
    db.session.commit()
    answers: list[dict] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def post(n: int) -> None:
        with app.test_client() as client:
            start.wait(timeout=10)
            for k in range(5):
                response = _post(client, auth, payload={"n": n, "k": k})
                assert response.status_code == 202, response.data
                with lock:
                    answers.append({**response.get_json(), "n": n, "k": k})

    threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 40
    db.session.expire_all()
    events = {e.uid: e for e in db.session.scalars(select(Event))}
    assert len(events) == 40
    seen: set[int] = set()
    for answer in answers:
        event = events[answer["event_id"]]
        assert json.loads(event.body)["data"] == {"n": answer["n"], "k": answer["k"]}
        rows = db.session.scalars(select(Delivery).where(Delivery.id.in_(answer["delivery_ids"]))).all()
        assert sorted(r.callback_id for r in rows) == sorted(ids)
        assert {r.event_id for r in rows} == {event.id}
        seen.update(answer["delivery_ids"])
    assert len(seen) == 120  # no delivery answered to two requests
    webhook_ids = db.session.scalars(select(Delivery.webhook_id)).all()
    assert len(set(webhook_ids)) == 120 and all(len(w) <= 40 for w in webhook_ids)
    drain_all_ready(app)
    assert sorted(d for job in get_queue(app).get_jobs() for d in job.args[0]) == sorted(seen)


def test_a_group_of_events_is_recorded_with_one_delivery_per_active_callback_each(app, receiver):
    """``record_and_commit`` (one statement on PostgreSQL, two on SQLite): rows, ids and order."""
    first = make_callback(receiver.url("/a"))
    second = make_callback(receiver.url("/b"))
    make_callback(receiver.url("/off"), active=False)
    paid = make_callback(receiver.url("/paid"), "order.paid")
    db.session.commit()
    items = [
        ingest.EventIn("order.created", {"n": 1}),
        ingest.EventIn("order.nobody", {"n": 2}),
        ingest.EventIn("order.paid", {"n": 3}, source="inbound:gateway"),
        ingest.EventIn("order.created", {"n": 4}),
    ]
    before = utcnow().replace(microsecond=0)
    made = ingest.record_and_commit(items)
    after = utcnow()
    db.session.expire_all()
    # Times written by the driver compare with times bound by SQLAlchemy (SQLite keeps text).
    assert db.session.scalar(select(func.count()).select_from(Event).where(Event.created_at >= before)) == 4
    assert db.session.scalar(select(func.count()).select_from(Event).where(Event.created_at > after)) == 0
    due = select(func.count()).select_from(Delivery).where(Delivery.next_attempt_at <= after)
    assert db.session.scalar(due) == 5
    assert [m.definition for m in made] == [i.definition for i in items]
    expected = [[first.id, second.id], [], [paid.id], [first.id, second.id]]
    for new, item, callback_ids in zip(made, items, expected, strict=True):
        event = db.session.get(Event, new.id)
        assert event.uid == new.uid and event.source == item.source
        assert json.loads(event.body)["data"] == item.payload
        rows = db.session.scalars(
            select(Delivery).where(Delivery.event_id == new.id).order_by(Delivery.id)
        ).all()
        assert new.delivery_ids == [d.id for d in rows]
        assert [d.callback_id for d in rows] == callback_ids
        assert [d.webhook_id for d in rows] == [f"msg_{new.uid[4:]}_{c}" for c in callback_ids]
        assert all(d.status == "pending" and d.kind == "event" and d.enqueued_at is not None for d in rows)
    assert len({m.uid for m in made}) == 4


def test_a_pooled_connection_idle_past_the_limit_is_pinged_and_a_dead_one_replaced(app, monkeypatch):
    pings: list[object] = []
    real_ping = db.engine.dialect.do_ping

    def ping(dbapi_conn):  # type: ignore[no-untyped-def]
        pings.append(dbapi_conn)
        if len(pings) == 2:
            raise ConnectionError("server closed the connection")
        return real_ping(dbapi_conn)

    monkeypatch.setattr(db.engine.dialect, "do_ping", ping)
    db.session.remove()
    db.engine.dispose()

    def use():  # type: ignore[no-untyped-def]
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
            return conn.connection.dbapi_connection

    monkeypatch.setattr(extensions, "IDLE_PING", 60.0)
    fresh = use()
    assert use() is fresh and pings == []  # in use a moment ago: no round trip
    monkeypatch.setattr(extensions, "IDLE_PING", 0.0)
    assert use() is fresh and pings == [fresh]  # idle: pinged, alive, kept
    replaced = use()  # idle again and the ping fails: a new connection, the statement runs
    assert pings[1] is fresh and replaced is not fresh
