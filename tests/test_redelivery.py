"""Redelivery of one delivery, and bulk recovery by callback, status and time window."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import AuditEntry, Delivery, utcnow
from cbdash.queue import get_queue
from tests.conftest import login, make_callback, run_worker
from tests.receiver import Reply
from tests.test_delivery import reload, trigger


def failed_deliveries(app, receiver, n: int, definition: str = "order.created") -> list[int]:  # type: ignore[no-untyped-def]
    receiver.reply(Reply(500))
    ids = [i for _ in range(n) for i in trigger(definition)]
    db.session.execute(
        update(Delivery).where(Delivery.id.in_(ids)).values(status="failed", finished_at=utcnow())
    )
    db.session.commit()
    get_queue().empty()
    return ids


def test_redeliver_through_the_api_keeps_the_webhook_id(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500), Reply(200))
    (d_id,) = trigger()
    run_worker(app)
    original = reload(d_id)
    original.status = "failed"
    db.session.commit()
    response = client.post(f"/api/v1/deliveries/{d_id}/redeliver", headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    assert body["kind"] == "redelivery" and body["webhook_id"] == original.webhook_id
    run_worker(app)
    first, second = receiver.wait_for(2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    Webhook(cb.secret).verify(second.body, second.headers)
    again = reload(body["id"])
    assert (again.status, again.attempt_count, again.redelivery_of_id) == ("succeeded", 1, d_id)
    assert reload(d_id).status == "failed"  # the original keeps its own history
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "delivery.redeliver"))
    assert entry.target_id == str(d_id)


def test_redeliver_button_on_the_detail_page(app, admin, receiver):
    make_callback(receiver.url())
    (d_id,) = trigger()
    run_worker(app)
    page = admin.get(f"/settings/callbacks/deliveries/{d_id}").get_data(as_text=True)
    assert f"/settings/callbacks/deliveries/{d_id}/redeliver" in page
    response = admin.post(f"/settings/callbacks/deliveries/{d_id}/redeliver")
    assert response.status_code == 303
    run_worker(app)
    a, b = receiver.wait_for(2)
    assert a.headers["webhook-id"] == b.headers["webhook-id"]
    kinds = list(db.session.scalars(select(Delivery.kind).order_by(Delivery.id)))
    assert kinds == ["event", "redelivery"]


def test_bulk_preview_counts_without_sending(app, admin, receiver):
    cb = make_callback(receiver.url())
    other = make_callback(receiver.url("/other"), "order.updated")
    failed_deliveries(app, receiver, 3)
    failed_deliveries(app, receiver, 2, "order.updated")
    receiver.requests.clear()
    page = admin.get(f"/settings/callbacks/recovery?callback_id={cb.id}&status=failed&window=24h")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "3 deliveries match" in html
    assert 'name="expected" value="3"' in html
    assert "csrf_token" in html
    everything = admin.get("/settings/callbacks/recovery?status=failed&window=24h").get_data(as_text=True)
    assert "5 deliveries match" in everything
    htmx = admin.get(
        f"/settings/callbacks/recovery?callback_id={other.id}&status=failed&window=1h",
        headers={"HX-Request": "true"},
    )
    fragment = htmx.get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="recovery-preview"')
    assert "2 deliveries match" in fragment
    assert receiver.requests == []
    assert db.session.scalar(select(Delivery.id).where(Delivery.kind == "redelivery")) is None


def test_bulk_window_excludes_older_deliveries(app, admin, receiver):
    cb = make_callback(receiver.url())
    old = failed_deliveries(app, receiver, 2)
    failed_deliveries(app, receiver, 1)
    db.session.execute(
        update(Delivery).where(Delivery.id.in_(old)).values(created_at=utcnow() - timedelta(days=3))
    )
    db.session.commit()
    html = admin.get(f"/settings/callbacks/recovery?callback_id={cb.id}&window=24h").get_data(as_text=True)
    assert "1 delivery matches" in html
    start = (utcnow() - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")
    end = (utcnow() - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    html = admin.get(f"/settings/callbacks/recovery?callback_id={cb.id}&from={start}&to={end}").get_data(
        as_text=True
    )
    assert "2 deliveries match" in html


def test_bulk_confirm_redelivers_at_a_bounded_rate_and_is_audited(app, admin, receiver):
    app.config["RECOVERY_RATE"] = 2
    cb = make_callback(receiver.url())
    ids = failed_deliveries(app, receiver, 5)
    receiver.requests.clear()
    receiver.reply(Reply(200))
    form = {"callback_id": str(cb.id), "status": "failed", "window": "24h", "expected": "5"}
    response = admin.post("/settings/callbacks/recovery", data=form)
    assert response.status_code == 303
    redeliveries = select(Delivery).where(Delivery.kind == "redelivery").order_by(Delivery.id)
    new = list(db.session.scalars(redeliveries))
    assert [d.redelivery_of_id for d in new] == ids
    assert [d.webhook_id for d in new] == [reload(i).webhook_id for i in ids]
    # 2 a second: two now, two a second later, the last one two seconds later.
    offsets = [round((d.next_attempt_at - new[0].next_attempt_at).total_seconds()) for d in new]
    assert offsets == [0, 0, 1, 1, 2]
    assert get_queue().count == 1  # the first group is queued now ...
    assert len(ScheduledJobRegistry(queue=get_queue()).get_job_ids()) == 2  # ... the others later
    run_worker(app)
    assert len(receiver.wait_for(2, 3)) == 2
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "delivery.bulk_recover"))
    assert entry.actor == "admin@example.com"
    assert entry.detail["count"] == 5 and entry.detail["status"] == "failed"
    assert entry.detail["callback_id"] == cb.id
    # The same selection again finds nothing: they are being recovered already.
    html = admin.get(f"/settings/callbacks/recovery?callback_id={cb.id}&status=failed&window=24h")
    assert "No deliveries match" in html.get_data(as_text=True)


def test_bulk_confirm_refuses_when_the_count_changed(app, admin, receiver):
    cb = make_callback(receiver.url())
    failed_deliveries(app, receiver, 3)
    form = {"callback_id": str(cb.id), "status": "failed", "window": "24h", "expected": "2"}
    response = admin.post("/settings/callbacks/recovery", data=form)
    assert response.status_code == 409
    assert "changed from 2 to 3" in response.get_data(as_text=True)
    assert db.session.scalar(select(Delivery.id).where(Delivery.kind == "redelivery")) is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=retrying&window=24h", "open deliveries are still being sent"),
        ("status=failed", "Choose a time window"),
        ("status=failed&window=24h&from=yesterday", "is not a date and time"),
        ("status=failed&window=24h&callback_id=abc", "Choose a callback"),
        ("status=failed&window=24h&callback_id=999999", "No such callback"),
    ],
)
def test_bulk_bad_input_is_explained_inline(app, admin, receiver, query, message):
    page = admin.get(f"/settings/callbacks/recovery?{query}")
    assert page.status_code == 200
    assert message in page.get_data(as_text=True)
    post = admin.post("/settings/callbacks/recovery", data=dict(p.split("=") for p in query.split("&")))
    assert post.status_code == 400
    assert message in post.get_data(as_text=True)


def test_bulk_skips_pings_and_invocations(app, admin, client, auth, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500))
    client.post(f"/api/v1/callbacks/{cb.id}/ping", headers=auth)
    run_worker(app)
    assert reload(1).kind == "ping" and reload(1).status == "failed"
    html = admin.get("/settings/callbacks/recovery?status=failed&window=24h").get_data(as_text=True)
    assert "No deliveries match" in html


def test_bulk_needs_the_redeliver_permission(app, client, receiver):
    cb = make_callback(receiver.url())
    failed_deliveries(app, receiver, 1)
    login(client, "viewer@example.com", "viewer")
    assert client.get("/settings/callbacks/recovery").status_code == 403
    form = {"callback_id": str(cb.id), "status": "failed", "window": "24h", "expected": "1"}
    assert client.post("/settings/callbacks/recovery", data=form).status_code == 403


def _token(html: str) -> str:
    match = re.search(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class TestCsrf:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"WTF_CSRF_ENABLED": True}

    def test_bulk_confirm_without_a_csrf_token_is_refused(self, app, client, receiver):
        cb = make_callback(receiver.url())
        failed_deliveries(app, receiver, 1)
        from tests.conftest import create_user

        create_user()
        page = client.get("/login")
        token = _token(page.get_data(as_text=True))
        assert (
            client.post(
                "/login", data={"email": "admin@example.com", "password": "password-123", "csrf_token": token}
            ).status_code
            == 302
        )
        form = {"callback_id": str(cb.id), "status": "failed", "window": "24h", "expected": "1"}
        refused = client.post("/settings/callbacks/recovery", data=form)
        assert refused.status_code in (400, 403)
        assert db.session.scalar(select(Delivery.id).where(Delivery.kind == "redelivery")) is None
        html = client.get(f"/settings/callbacks/recovery?callback_id={cb.id}&status=failed&window=24h")
        token = _token(html.get_data(as_text=True))
        accepted = client.post("/settings/callbacks/recovery", data={**form, "csrf_token": token})
        assert accepted.status_code == 303
        assert db.session.scalar(select(Delivery.id).where(Delivery.kind == "redelivery")) is not None


def test_delivery_log_links_to_bulk_recovery_with_its_filters(app, admin, client, receiver):
    cb = make_callback(receiver.url())
    page = admin.get(f"/settings/callbacks/deliveries?callback_id={cb.id}&status=failed")
    html = page.get_data(as_text=True)
    assert f"/settings/callbacks/recovery?callback_id={cb.id}&amp;status=failed" in html
