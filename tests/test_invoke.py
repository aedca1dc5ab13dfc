"""POST /api/v1/definitions/<name>/invoke against real receivers on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import Callback, Delivery, Event, utcnow
from cbdash.queue import get_queue
from cbdash.services import delivery as delivery_service
from tests.conftest import login, make_callback
from tests.receiver import Receiver, Reply

DEF = "redirect_cart_payment"
PAYLOAD = {"cart_id": "cart_1042", "amount": "129.90", "currency": "EUR"}


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Three independent receivers, for chains of callbacks."""
    started = [Receiver() for _ in range(3)]
    for r in started:
        r.start()
    yield started
    for r in started:
        r.stop()


def make_sync(url: str, definition: str = DEF, priority: int = 100, **fields) -> Callback:  # type: ignore[no-untyped-def]
    """A callback with a priority (not a field of the callback form, so set here)."""
    cb = make_callback(url, definition, **fields)
    cb.priority = priority
    db.session.commit()
    return cb


def invoke(client, auth, payload=PAYLOAD, definition=DEF, **extra):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    response = client.post(
        f"/api/v1/definitions/{definition}/invoke", json={"payload": payload, **extra}, headers=auth
    )
    elapsed = time.monotonic() - t0  # what the caller waited
    response.get_data()
    response.close()  # as a WSGI server does after sending: runs the deferred recording
    return response, elapsed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_invoke_returns_receiver_json_signed_and_logged(app, client, auth, receiver):
    receiver.reply(Reply(200, b'{"redirect_url": "https://pay.example/c/1042", "n": 1}'))
    cb = make_callback(receiver.url(), DEF, timeout=3)

    response, _ = invoke(client, auth)

    assert response.status_code == 200
    data = response.get_json()
    assert data["status"] == 200
    assert data["body"] == {"redirect_url": "https://pay.example/c/1042", "n": 1}
    assert data["callback_id"] == cb.id
    assert data["fallback"] is False and data["body_is_json"] is True
    assert 0 < data["duration_ms"] <= data["total_ms"]
    (request,) = receiver.wait_for(1)
    envelope = Webhook(cb.secret).verify(request.body, request.headers)
    assert envelope["type"] == DEF and envelope["data"] == PAYLOAD
    d = db.session.get(Delivery, data["delivery_id"])
    assert (d.kind, d.status, d.attempt_count, d.callback_id) == ("invoke", "succeeded", 1, cb.id)
    assert d.webhook_id == request.headers["webhook-id"]
    assert [(a.number, a.status_code, a.error_class) for a in d.attempts] == [(1, 200, None)]
    assert get_queue(app).count == 0  # nothing queued for a worker


def test_non_json_answer_is_reported_clearly(client, auth, receiver):
    receiver.reply(Reply(200, b"<html>pay here</html>", {"Content-Type": "text/html"}))
    make_callback(receiver.url(), DEF)

    response, _ = invoke(client, auth)

    data = response.get_json()
    assert response.status_code == 200
    assert data["body"] is None and data["body_is_json"] is False
    assert data["body_text"] == "<html>pay here</html>"
    assert data["content_type"] == "text/html"
    assert "not JSON" in data["warning"] and "text/html" in data["warning"]


def test_empty_answer_is_reported(client, auth, receiver):
    receiver.reply(Reply(204, b"", {}))
    make_callback(receiver.url(), DEF)
    data = invoke(client, auth)[0].get_json()
    assert data["status"] == 204 and data["body"] is None and "empty body" in data["warning"]


@pytest.mark.slow
def test_silent_receiver_gets_504_within_the_callbacks_timeout(app, client, auth, receiver):
    receiver.reply(Reply(200, b"{}", delay=10))
    cb = make_callback(receiver.url(), DEF, timeout=3)

    response, elapsed = invoke(client, auth)

    assert response.status_code == 504
    assert 2.9 <= elapsed < 5.0, elapsed  # about 3 s, never more than 5 (issue 7)
    error = response.get_json()["error"]
    assert error["code"] == "receiver_timeout"
    assert f"callback #{cb.id}" in error["message"] and "3 s timeout" in error["message"]
    d = db.session.get(Delivery, response.get_json()["delivery_id"])
    assert (d.status, d.next_attempt_at, d.attempts[0].error_class) == ("failed", None, "timeout")


@pytest.mark.slow
def test_dripping_receiver_gets_504_within_the_callbacks_timeout(client, auth, receiver):
    # Headers at once, then one body byte every 0.2 s: each read is quick, the whole is not.
    receiver.reply(Reply(200, b'{"redirect_url": "' + b"x" * 100 + b'"}', drip=0.2))
    make_callback(receiver.url(), DEF, timeout=3)

    response, elapsed = invoke(client, auth)

    assert response.status_code == 504
    assert 2.9 <= elapsed < 5.0, elapsed  # about 3 s, never more than 5 (issue 7)
    assert response.get_json()["tried"][0]["error"] == "timeout"


def test_callbacks_are_tried_in_priority_order_until_one_answers_2xx(client, auth, receivers):
    first, second, third = receivers
    first.reply(Reply(500, b'{"error": "down"}'))
    second.reply(Reply(200, b'{"redirect_url": "https://b.example"}'))
    third.reply(Reply(200, b'{"redirect_url": "https://c.example"}'))
    c = make_sync(third.url(), DEF, priority=30)
    b = make_sync(second.url(), DEF, priority=20)
    a = make_sync(first.url(), DEF, priority=10)
    make_sync(third.url("/inactive"), DEF, priority=1, active=False)
    make_sync(third.url("/other"), "order.created", priority=0)

    response, _ = invoke(client, auth)

    data = response.get_json()
    assert response.status_code == 200
    assert data["callback_id"] == b.id and data["body"] == {"redirect_url": "https://b.example"}
    assert [(t["callback_id"], t["status"], t["error"]) for t in data["tried"]] == [
        (a.id, 500, "http_status"),
        (b.id, 200, None),
    ]
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert third.requests == []  # neither the lower priority, the inactive nor another definition
    assert first.requests[0].at < second.requests[0].at
    # One event, one invoke delivery per callback tried, each with its own webhook-id.
    kinds = db.session.query(Delivery.callback_id, Delivery.kind, Delivery.status).order_by(Delivery.id).all()
    assert kinds == [(a.id, "invoke", "failed"), (b.id, "invoke", "succeeded")]
    assert db.session.query(Event).count() == 1
    assert first.requests[0].headers["webhook-id"] != second.requests[0].headers["webhook-id"]
    assert c.id not in {t["callback_id"] for t in data["tried"]}


def test_total_time_never_exceeds_the_callers_timeout(client, auth, receivers):
    slow_a, slow_b, _ = receivers
    slow_a.reply(Reply(200, b"{}", delay=5))
    slow_b.reply(Reply(200, b"{}", delay=5))
    a = make_sync(slow_a.url(), DEF, timeout=5, priority=1)
    b = make_sync(slow_b.url(), DEF, timeout=5, priority=2)

    response, elapsed = invoke(client, auth, timeout=1.2)

    assert response.status_code == 504
    assert elapsed < 1.2 + 0.2, elapsed  # the caller's bound, plus the test client and a loaded CI box
    tried = response.get_json()["tried"]
    assert tried[0]["callback_id"] == a.id and tried[0]["error"] == "timeout"
    assert tried[0]["duration_ms"] < 1200
    assert tried[1] == {
        "callback_id": b.id,
        "delivery_id": tried[1]["delivery_id"],
        "status": None,
        "error": "no_time_left",
        "message": "not called: no time left within the caller's timeout",
        "duration_ms": 0.0,
        "skipped": True,
    }
    assert slow_b.requests == []


def test_callers_timeout_shared_by_a_chain(client, auth, receivers):
    slow, fast, _ = receivers
    slow.reply(Reply(200, b"{}", delay=5))
    fast.reply(Reply(200, b'{"who": "fast"}'))
    make_sync(slow.url(), DEF, timeout=1, priority=1)
    b = make_sync(fast.url(), DEF, timeout=5, priority=2)

    response, elapsed = invoke(client, auth, timeout=2.5)

    assert response.status_code == 200
    assert response.get_json()["callback_id"] == b.id
    assert 1.0 <= elapsed < 2.5, elapsed


def test_fail_policy_gives_502_naming_the_cause(client, auth, receiver):
    receiver.reply(Reply(500, b'{"error": "boom"}'))
    cb = make_callback(receiver.url(), DEF)

    response, _ = invoke(client, auth)

    assert response.status_code == 502
    data = response.get_json()
    assert data["error"]["code"] == "bad_gateway"
    assert f"callback #{cb.id}" in data["error"]["message"]
    assert "receiver answered HTTP 500" in data["error"]["message"]
    assert data["status"] == 500 and data["callback_id"] == cb.id


def test_unreachable_receiver_gives_502(client, auth):
    make_callback(f"http://127.0.0.1:{_closed_port()}/hook", DEF)
    response, elapsed = invoke(client, auth)
    assert response.status_code == 502
    assert response.get_json()["tried"][0]["error"] == "connect"
    assert elapsed < 2


def test_redirect_is_not_followed(client, auth, receiver):
    receiver.reply(Reply(302, b"", {"Location": "https://elsewhere.example/"}))
    make_callback(receiver.url(), DEF)
    response, _ = invoke(client, auth)
    assert response.status_code == 502
    assert "redirect" in response.get_json()["error"]["message"]
    assert len(receiver.requests) == 1


def test_fallback_policy_returns_the_static_response_flagged(client, auth, receiver):
    receiver.reply(Reply(503, b"busy", {"Content-Type": "text/plain"}))
    cb = make_callback(receiver.url(), DEF)
    cb.failure_policy = "fallback"
    cb.fallback_response = {"redirect_url": "https://shop.example/pay-later"}
    db.session.commit()

    response, _ = invoke(client, auth)

    assert response.status_code == 200
    data = response.get_json()
    assert data["fallback"] is True
    assert data["body"] == {"redirect_url": "https://shop.example/pay-later"}
    assert data["callback_id"] == cb.id and data["status"] is None
    assert "HTTP 503" in data["fallback_reason"]
    d = db.session.get(Delivery, data["delivery_id"])
    assert d.status == "failed" and d.attempts[0].status_code == 503


def test_fallback_of_the_first_fallback_callback_after_all_failed(client, auth, receivers):
    a_recv, b_recv, _ = receivers
    a_recv.reply(Reply(500, b"{}"))
    b_recv.reply(Reply(500, b"{}"))
    a = make_sync(a_recv.url(), DEF, priority=1)
    b = make_sync(b_recv.url(), DEF, priority=2)
    a.failure_policy, a.fallback_response = "fail", None
    b.failure_policy, b.fallback_response = "fallback", {"from": "b"}
    db.session.commit()

    data = invoke(client, auth)[0].get_json()

    assert data["fallback"] is True and data["body"] == {"from": "b"} and data["callback_id"] == b.id
    assert len(a_recv.requests) == 1 and len(b_recv.requests) == 1  # a real answer was tried first


def test_invocations_never_schedule_retries(app, client, auth, receiver):
    receiver.reply(Reply(500, b"{}"))
    make_callback(receiver.url(), DEF)
    data = invoke(client, auth)[0].get_json()

    d = db.session.get(Delivery, data["delivery_id"])
    assert (d.status, d.next_attempt_at, d.locked_until) == ("failed", None, None)
    later = utcnow().replace(year=utcnow().year + 1)
    from datetime import timedelta

    assert delivery_service.reclaim_stale(later) == []
    assert delivery_service.overdue(later, timedelta(0), timedelta(0)) == []
    assert get_queue(app).count == 0
    assert len(receiver.requests) == 1


def test_invocations_show_in_the_delivery_api(client, auth, receiver):
    make_callback(receiver.url(), DEF)
    data = invoke(client, auth)[0].get_json()
    listed = client.get("/api/v1/deliveries?kind=invoke", headers=auth).get_json()["data"]
    assert [d["id"] for d in listed] == [data["delivery_id"]]
    detail = client.get(f"/api/v1/deliveries/{data['delivery_id']}", headers=auth).get_json()
    assert detail["kind"] == "invoke" and detail["payload"] == PAYLOAD
    assert detail["attempt_log"][0]["status_code"] == 200


def test_no_active_callback_is_a_404(client, auth, receiver):
    make_callback(receiver.url(), DEF, active=False)
    response, _ = invoke(client, auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "no_callbacks"
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "payload"),
        ({"payload": {}, "timeout": 0}, "timeout"),
        ({"payload": {}, "timeout": "3"}, "timeout"),
        ({"payload": {}, "timeout": True}, "timeout"),
        ({"payload": {}, "timeout": 999}, "timeout"),
    ],
)
def test_bad_requests_are_400_with_the_field(client, auth, body, field):
    response = client.post(f"/api/v1/definitions/{DEF}/invoke", json=body, headers=auth)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]


def test_other_bad_input_is_a_clear_4xx(client, auth):
    assert (
        client.post("/api/v1/definitions/Bad Name!/invoke", json={"payload": {}}, headers=auth).status_code
        == 400
    )
    unknown = client.post(f"/api/v1/definitions/{DEF}/invoke", json={"payload": {}, "x": 1}, headers=auth)
    assert unknown.status_code == 400 and unknown.get_json()["error"]["code"] == "unknown_fields"
    not_json = client.post(
        f"/api/v1/definitions/{DEF}/invoke",
        data=b"{nope",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 400 and not_json.get_json()["error"]["code"] == "invalid_json"
    assert client.post(f"/api/v1/definitions/{DEF}/invoke", json={"payload": {}}).status_code == 401


def test_support_token_cannot_invoke(app, client, receiver):
    from cbdash.services import tokens

    _row, plaintext = tokens.create("support", "support")
    db.session.commit()
    make_callback(receiver.url(), DEF)
    response = client.post(
        f"/api/v1/definitions/{DEF}/invoke",
        json={"payload": {}},
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert response.status_code == 403
    assert receiver.requests == []


def test_browser_session_cannot_invoke(client, receiver):
    login(client)
    make_callback(receiver.url(), DEF)
    assert client.post(f"/api/v1/definitions/{DEF}/invoke", json={"payload": {}}).status_code == 401
    assert receiver.requests == []


def test_no_connection_is_held_while_waiting_on_the_receiver(app, client, auth, receiver):
    """The pool is not tied up by slow receivers: the DB is usable from elsewhere meanwhile."""
    import threading

    receiver.reply(Reply(200, b"{}", delay=1.0))
    make_callback(receiver.url(), DEF)
    checked_out: list[int] = []

    def watch() -> None:
        time.sleep(0.5)
        checked_out.append(db.engine.pool.checkedout())

    with app.app_context():
        t = threading.Thread(target=lambda: app.app_context().push() or watch())
        t.start()
        response, _ = invoke(client, auth)
        t.join(5)
    assert response.status_code == 200
    assert checked_out == [0]


def test_lost_invocations_are_failed_not_retried(app):
    cb = make_callback("http://127.0.0.1:9/hook", DEF)
    event = delivery_service.new_event(DEF, {})
    old = utcnow().replace(year=2000)
    d = Delivery(
        event=event, callback_id=cb.id, kind="invoke", status="sending", attempt_count=1, created_at=old
    )
    db.session.add(d)
    db.session.commit()
    from cbdash.services import invoke as invoke_service

    invoke_service._last_sweep = 0.0
    invoke_service._sweep_lost()
    db.session.refresh(d)
    assert d.status == "failed" and "lost" in d.status_detail
    assert isinstance(db.session.get(Callback, cb.id), Callback)


def test_the_outcome_is_recorded_after_the_caller_has_its_answer(client, auth, receiver):
    receiver.reply(Reply(200, b'{"ok": true}'))
    cb = make_callback(receiver.url(), DEF)

    response = client.post(f"/api/v1/definitions/{DEF}/invoke", json={"payload": {}}, headers=auth)

    data = response.get_json()
    assert data["body"] == {"ok": True}
    d = db.session.get(Delivery, data["delivery_id"])
    assert (d.status, d.attempts) == ("sending", [])  # logged as in flight, not yet recorded
    response.close()
    db.session.expire_all()
    d = db.session.get(Delivery, data["delivery_id"])
    assert (d.status, len(d.attempts)) == ("succeeded", 1)
    assert db.session.get(Callback, cb.id).last_status_code == 200


def test_api_sets_priority_and_failure_policy(client, auth, receiver):
    from cbdash.models import AuditEntry

    cb = make_callback(receiver.url(), DEF)
    body = {"priority": 5, "failure_policy": "fallback", "fallback_response": {"redirect_url": "/later"}}

    response = client.patch(f"/api/v1/callbacks/{cb.id}/sync", json=body, headers=auth)

    assert response.status_code == 200
    assert {k: response.get_json()[k] for k in body} == body
    db.session.expire_all()
    cb = db.session.get(Callback, cb.id)
    assert (cb.priority, cb.failure_policy, cb.fallback_response) == (
        5,
        "fallback",
        {"redirect_url": "/later"},
    )
    assert db.session.query(AuditEntry).filter_by(action="callback.sync_settings").count() == 1
    assert client.get(f"/api/v1/callbacks/{cb.id}/sync", headers=auth).get_json()["priority"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"failure_policy": "fallback"}, "fallback_response"),
        ({"failure_policy": "retry"}, "failure_policy"),
        ({"priority": "1"}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"fallback_response": "x" * 20000}, "fallback_response"),
    ],
)
def test_api_rejects_bad_sync_settings(client, auth, receiver, body, field):
    cb = make_callback(receiver.url(), DEF)
    response = client.patch(f"/api/v1/callbacks/{cb.id}/sync", json=body, headers=auth)
    assert response.status_code == 400 and field in response.get_json()["error"]["fields"]
    db.session.expire_all()
    assert (db.session.get(Callback, cb.id).failure_policy, db.session.get(Callback, cb.id).priority) == (
        "fail",
        100,
    )
