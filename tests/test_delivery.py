"""The delivery engine with an in-process worker and real receivers on 127.0.0.1."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
import standardwebhooks.webhooks as swh
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cbdash import dispatch, jobs
from cbdash.extensions import db
from cbdash.models import Attempt, Callback, Delivery, Event, utcnow
from cbdash.queue import get_queue
from cbdash.services import delivery
from tests.conftest import make_callback, run_worker
from tests.rawservers import ChunkedForever, HugeBody
from tests.receiver import Reply


def trigger(definition: str = "order.created", payload: object | None = None) -> list[int]:
    """An event through the service layer (as the API does), queued after commit."""
    _event, deliveries = delivery.create_event(definition, payload if payload is not None else {"n": 1})
    db.session.commit()
    ids = [d.id for d in deliveries]
    dispatch.enqueue(ids)
    return ids


def attempt_now(delivery_id: int) -> None:
    """Make a retrying delivery due and run its job in process (as the scheduler would)."""
    db.session.execute(update(Delivery).where(Delivery.id == delivery_id).values(next_attempt_at=utcnow()))
    db.session.commit()
    jobs.deliver([delivery_id])


def reload(delivery_id: int) -> Delivery:
    db.session.expire_all()
    d = db.session.get(Delivery, delivery_id)
    assert d is not None
    return d


def shifted_verifier(monkeypatch, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Make ``standardwebhooks`` believe it is ``seconds`` later than now."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return datetime.now(tz) + timedelta(seconds=seconds)

    monkeypatch.setattr(swh, "datetime", Shifted)


def test_retry_is_the_same_message_with_a_fresh_signature(app, receiver, monkeypatch):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500), Reply(200))
    real_utcnow = delivery.utcnow
    # The event happened, and was first attempted, 400 s ago.
    monkeypatch.setattr(delivery, "utcnow", lambda: real_utcnow() - timedelta(seconds=400))
    monkeypatch.setattr(delivery, "unix_now", lambda: int(time.time()) - 400)
    (d_id,) = trigger(payload={"ünïcode": "✓", "n": 1})
    run_worker(app)
    monkeypatch.setattr(delivery, "utcnow", real_utcnow)
    monkeypatch.setattr(delivery, "unix_now", lambda: int(time.time()))
    assert reload(d_id).status == "retrying"
    attempt_now(d_id)
    first, second = receiver.wait_for(2)
    assert reload(d_id).status == "succeeded"

    assert first.headers["webhook-id"] == second.headers["webhook-id"] == reload(d_id).webhook_id
    assert first.body == second.body  # identical bytes
    changed = {k for k in first.headers if first.headers[k] != second.headers.get(k)}
    assert changed == {"webhook-timestamp", "webhook-signature"}
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) >= 399
    event_time = json.loads(second.body)["timestamp"]
    assert datetime.fromisoformat(event_time.rstrip("Z")) < utcnow() - timedelta(minutes=5)

    # Each signature verifies for its own timestamp: the retry now, the first one 400 s ago.
    assert Webhook(cb.secret).verify(second.body, second.headers)["data"]["n"] == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(cb.secret).verify(first.body, first.headers)  # too old today
    shifted_verifier(monkeypatch, -400)
    assert Webhook(cb.secret).verify(first.body, first.headers)["data"]["n"] == 1
    swapped = {**second.headers, "webhook-timestamp": first.headers["webhook-timestamp"]}
    with pytest.raises(WebhookVerificationError):
        Webhook(cb.secret).verify(second.body, swapped)


@pytest.fixture
def app_config() -> dict:
    return {"SECRET_OVERLAP_HOURS": 2.0}


def test_rotation_during_retries_signs_with_both_then_only_the_new(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    old = cb.secret
    receiver.reply(Reply(500), Reply(500), Reply(200))
    (d_id,) = trigger()
    run_worker(app)
    first = receiver.wait_for(1)[0]
    assert len(first.headers["webhook-signature"].split(" ")) == 1

    response = client.post(f"/api/v1/callbacks/{cb.id}/rotate-secret", headers=auth)
    assert response.status_code == 200
    new = response.get_json()["new_secret"]
    assert new != old and new.startswith("whsec_")
    cb = db.session.get(Callback, cb.id)
    overlap = cb.previous_secret_expires_at - utcnow()
    assert timedelta(hours=1.99) < overlap <= timedelta(hours=2)  # SECRET_OVERLAP_HOURS

    attempt_now(d_id)
    second = receiver.wait_for(2)[1]
    sigs = second.headers["webhook-signature"].split(" ")
    assert len(sigs) == 2  # new and old, space-separated
    Webhook(new).verify(second.body, second.headers)
    Webhook(old).verify(second.body, second.headers)  # receivers not yet updated keep working

    # After the overlap only the new secret signs.
    db.session.execute(
        update(Callback)
        .where(Callback.id == cb.id)
        .values(previous_secret_expires_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    attempt_now(d_id)
    third = receiver.wait_for(3)[2]
    assert len(third.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(third.body, third.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(third.body, third.headers)
    assert reload(d_id).status == "succeeded"


def test_redirect_is_a_failed_attempt_with_its_location(app, receiver):
    make_callback(receiver.url("/hook"))
    receiver.reply(Reply(302, body=b"", headers={"Location": "https://example.com/moved?x=1"}))
    (d_id,) = trigger()
    run_worker(app)
    d = reload(d_id)
    assert d.status == "retrying"  # not a success
    (a,) = d.attempts
    assert a.error_class == "redirect"
    assert a.status_code == 302
    assert a.location == "https://example.com/moved?x=1"
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_timeout_is_logged_and_follows_the_retry_policy(app, receiver):
    make_callback(receiver.url(), timeout=1)
    receiver.reply(Reply(200, delay=10))
    (d_id,) = trigger()
    t0 = time.monotonic()
    run_worker(app)
    assert time.monotonic() - t0 < 4  # the worker is free again after the 1 s timeout, not 10 s
    d = reload(d_id)
    assert d.status == "retrying"
    assert d.attempts[0].error_class == "timeout"
    assert d.next_attempt_at > utcnow()
    assert d.last_error == "timeout"


def test_job_timeout_is_derived_from_the_callback_timeout(app, receiver):
    slow = make_callback(receiver.url(), timeout=30)
    fast = make_callback(receiver.url(), timeout=2)
    ids = trigger()
    jobs_ = get_queue().get_jobs()
    assert len(jobs_) == 1
    assert jobs_[0].timeout >= slow.timeout + fast.timeout  # every attempt of the batch fits
    d = db.session.get(Delivery, ids[0])
    dispatch.schedule(d.id, utcnow() + timedelta(seconds=5), 30)
    from rq.registry import ScheduledJobRegistry

    registry = ScheduledJobRegistry(queue=get_queue())
    (job_id,) = registry.get_job_ids()
    assert get_queue().fetch_job(job_id).timeout > 30


@pytest.mark.slow
class TestMaxTimeout:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"MAX_TIMEOUT": 4}

    def test_a_callback_at_the_max_timeout_works(self, app, receiver):
        make_callback(receiver.url(), timeout=4)
        receiver.reply(Reply(200, body=b"slow", delay=3))
        (d_id,) = trigger()
        run_worker(app)  # RQ enforces job timeouts in process too (SIGALRM)
        d = reload(d_id)
        assert d.status == "succeeded", d.status_detail
        assert 2900 < d.attempts[0].duration_ms < 4000


def test_changed_url_is_used_when_the_job_runs(app, client, auth, receiver):
    cb = make_callback(receiver.url("/old"))
    (d_id,) = trigger()
    response = client.patch(f"/api/v1/callbacks/{cb.id}", json={"url": receiver.url("/new")}, headers=auth)
    assert response.status_code == 200
    run_worker(app)
    assert [r.path for r in receiver.wait_for(1)] == ["/new"]
    d = reload(d_id)
    assert d.status == "succeeded"
    assert d.attempts[0].url == receiver.url("/new")


def test_deactivated_after_queueing_is_skipped_without_a_request(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    (d_id,) = trigger()
    assert client.patch(f"/api/v1/callbacks/{cb.id}", json={"active": False}, headers=auth).status_code == 200
    run_worker(app)
    d = reload(d_id)
    assert d.status == "skipped"
    assert d.status_detail == "callback is inactive (manual)"
    assert d.attempt_count == 0 and d.attempts == []
    time.sleep(0.1)
    assert receiver.requests == []


def test_deleted_after_queueing_is_skipped_without_a_request(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    (d_id,) = trigger()
    assert client.delete(f"/api/v1/callbacks/{cb.id}", headers=auth).status_code == 204
    run_worker(app)
    d = reload(d_id)
    assert d.status == "skipped"
    assert "deleted" in d.status_detail
    assert d.attempts == []
    time.sleep(0.1)
    assert receiver.requests == []


def test_retrying_delivery_of_a_deactivated_callback_is_skipped(app, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500))
    (d_id,) = trigger()
    run_worker(app)
    cb.active, cb.inactive_reason = False, "manual"
    db.session.commit()
    attempt_now(d_id)
    d = reload(d_id)
    assert d.status == "skipped"
    assert d.attempt_count == 1 and len(d.attempts) == 1
    assert len(receiver.requests) == 1


@pytest.mark.slow
def test_huge_response_is_capped_and_recorded_once(app):
    server = HugeBody(50 * 1024 * 1024).start()
    try:
        make_callback(server.url())
        (d_id,) = trigger()
        run_worker(app)
    finally:
        server.stop()
    d = reload(d_id)
    assert d.status == "succeeded"
    (a,) = db.session.query(Attempt).filter_by(delivery_id=d_id).all()
    assert a.response_size == 50 * 1024 * 1024
    assert len(a.response_excerpt) == 4096  # RESPONSE_EXCERPT
    assert a.response_truncated


@pytest.mark.slow
def test_endless_chunked_response_is_capped_and_recorded_once(app):
    server = ChunkedForever(max_seconds=20).start()
    try:
        make_callback(server.url())
        (d_id,) = trigger()
        run_worker(app)
        assert server.finished.wait(5)
    finally:
        server.stop()
    d = reload(d_id)
    assert d.status == "succeeded"
    (a,) = db.session.query(Attempt).filter_by(delivery_id=d_id).all()
    assert a.response_size == 64 * 1024  # what was read; the total is unknown
    assert len(a.response_excerpt) == 4096
    assert a.response_truncated
    assert server.connections == 1


def test_binary_response_is_stored_and_shown_escaped(app, admin, receiver):
    make_callback(receiver.url())
    receiver.reply(Reply(200, body=b"\x00\xff<script>alert(1)</script>"))
    (d_id,) = trigger()
    run_worker(app)
    a = reload(d_id).attempts[0]
    assert a.response_excerpt == b"\x00\xff<script>alert(1)</script>"
    page = admin.get(f"/settings/callbacks/deliveries/{d_id}")
    assert page.status_code == 200
    assert b"<script>alert(1)" not in page.data
    assert b"&lt;script&gt;" in page.data


def test_event_payload_carries_id_and_creation_time(app, receiver):
    make_callback(receiver.url())
    (d_id,) = trigger(payload={"k": "v"})
    run_worker(app)
    body = json.loads(receiver.wait_for(1)[0].body)
    event = db.session.get(Event, reload(d_id).event_id)
    assert body["id"] == event.uid
    assert body["timestamp"].startswith(event.created_at.isoformat()[:19])
    assert body["data"] == {"k": "v"}
