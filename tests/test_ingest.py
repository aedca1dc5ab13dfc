"""POST /api/v1/events on its fast path: the outbox rows, the queue, idempotency, Redis down."""

from __future__ import annotations

import json
from datetime import timedelta

import redis
from sqlalchemy import func, select

from cbdash import dispatch
from cbdash.extensions import db
from cbdash.models import Delivery, Event, utcnow
from cbdash.queue import get_queue
from cbdash.services import callbacks, delivery
from tests.conftest import make_callback


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

    (job,) = get_queue(app).get_jobs()
    assert job.args == (data["delivery_ids"],)
    assert job.timeout >= 7 + 3  # derived from the callbacks' timeouts, never shorter


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
    again = _post(client, auth, payload={"something": "else"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["idempotent_replay"] is True
    assert again.get_json()["delivery_ids"] == first.get_json()["delivery_ids"]
    assert again.get_json()["event_id"] == first.get_json()["event_id"]
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert get_queue(app).count == 1


def test_with_redis_down_the_event_is_accepted_and_left_for_the_reconciler(
    app, client, auth, receiver, monkeypatch
):
    make_callback(receiver.url())

    def unreachable():  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(dispatch, "get_queue", unreachable)
    response = _post(client, auth)
    assert response.status_code == 202
    (delivery_id,) = response.get_json()["delivery_ids"]
    db.session.expire_all()
    row = db.session.get(Delivery, delivery_id)
    assert row.status == "pending"
    assert row.enqueued_at is None  # not queued: the reconciler must not wait for a requeue delay
    later = utcnow() + timedelta(seconds=11)
    lost = delivery.overdue(later, due_grace=timedelta(seconds=10), requeue_after=timedelta(seconds=60))
    assert lost == [delivery_id]
