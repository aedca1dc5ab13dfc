"""Callback health: failing, auto-disable, 410 Gone, the alert banner and webhook, re-enable and replay."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, utcnow
from cbdash.queue import get_queue
from cbdash.services import delivery
from cbdash.services.signing import generate_secret
from tests.conftest import make_callback, run_worker
from tests.receiver import Receiver, Reply
from tests.test_delivery import attempt_now, reload, trigger


def api_callback(client, auth, cb_id: int) -> dict:  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/callbacks/{cb_id}", headers=auth).get_json()


def fail_once(app) -> int:  # type: ignore[no-untyped-def]
    (d_id,) = trigger()
    run_worker(app)
    return d_id


def test_failing_after_three_consecutive_failures_and_healthy_after_a_success(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500), Reply(500), Reply(500), Reply(200))
    fail_once(app)
    fail_once(app)
    assert api_callback(client, auth, cb.id)["health"] == "healthy"
    fail_once(app)
    body = api_callback(client, auth, cb.id)
    assert (body["health"], body["consecutive_failures"]) == ("failing", 3)
    assert body["active"] is True
    fail_once(app)  # 200
    assert api_callback(client, auth, cb.id)["health"] == "healthy"


def test_pings_do_not_count_for_health(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(410))
    for _ in range(3):
        assert client.post(f"/api/v1/callbacks/{cb.id}/ping", headers=auth).status_code == 202
        run_worker(app)
    body = api_callback(client, auth, cb.id)
    assert (body["health"], body["active"]) == ("healthy", True)


class TestFailingAfterSetting:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"FAILING_AFTER": 1}

    def test_failing_threshold_is_configurable(self, app, client, auth, receiver):
        cb = make_callback(receiver.url())
        receiver.reply(Reply(500))
        fail_once(app)
        assert api_callback(client, auth, cb.id)["health"] == "failing"


def _failing_for(cb: Callback, hours: float, failures: int) -> None:
    cb.failing_since = utcnow() - timedelta(hours=hours)
    cb.consecutive_failures = failures
    db.session.commit()


@pytest.mark.parametrize(
    ("hours", "failures_before", "disabled"),
    [(25, 9, True), (23, 50, False), (25, 5, False)],
)
def test_auto_disable_needs_both_the_hours_and_the_failures(
    app, admin, receiver, hours, failures_before, disabled
):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500))
    _failing_for(cb, hours, failures_before)
    d_id = fail_once(app)
    cb = db.session.get(Callback, cb.id, populate_existing=True)
    assert cb.active is not disabled
    if not disabled:
        assert reload(d_id).status == "retrying"
        return
    assert cb.inactive_reason == "auto-disabled: failing for 25 h (10 failed attempts in a row)"
    assert utcnow() - cb.disabled_at < timedelta(seconds=10)
    d = reload(d_id)
    assert d.status == "failed"  # no pointless retry into a disabled callback
    assert "auto-disabled" in d.status_detail
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "callback.auto_disable"))
    assert (entry.actor, entry.target_id) == ("system", str(cb.id))
    inactive_tab = admin.get("/settings/callbacks?status=inactive").get_data(as_text=True)
    assert "auto-disabled: failing for 25 h" in inactive_tab
    active_tab = admin.get("/settings/callbacks?status=active").get_data(as_text=True)
    assert cb.url not in active_tab


class TestDisableSettings:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"DISABLE_AFTER_HOURS": 0.0, "DISABLE_MIN_FAILURES": 2}

    def test_thresholds_are_configurable(self, app, receiver):
        cb = make_callback(receiver.url())
        receiver.reply(Reply(500))
        fail_once(app)
        assert db.session.get(Callback, cb.id, populate_existing=True).active
        fail_once(app)
        cb = db.session.get(Callback, cb.id, populate_existing=True)
        assert not cb.active
        assert cb.inactive_reason.startswith("auto-disabled: failing for 0 h (2 failed attempts")


def test_410_gone_disables_at_once_and_later_deliveries_are_skipped(app, admin, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(410))
    d_id = fail_once(app)
    cb = db.session.get(Callback, cb.id, populate_existing=True)
    assert not cb.active
    assert cb.inactive_reason == "auto-disabled: receiver answered 410 Gone"
    assert cb.disabled_at is not None
    assert reload(d_id).status == "failed"
    page = admin.get("/settings/callbacks").get_data(as_text=True)
    assert "banner-danger" in page and "receiver answered 410 Gone" in page
    assert f"/settings/callbacks/{cb.id}/reenable" in page
    # Nothing more reaches the receiver: new events do not fan out to it.
    assert trigger() == []
    assert len(receiver.requests) == 1


def test_retrying_deliveries_of_a_disabled_callback_are_skipped(app, receiver):
    cb = make_callback(receiver.url())
    receiver.reply(Reply(500), Reply(410))
    first = fail_once(app)
    fail_once(app)  # 410: disabled
    attempt_now(first)
    d = reload(first)
    assert d.status == "skipped"
    assert d.status_detail == "callback is inactive (auto-disabled: receiver answered 410 Gone)"
    assert len(receiver.requests) == 2
    assert not db.session.get(Callback, cb.id, populate_existing=True).active


class TestAlertWebhook:
    @pytest.fixture
    def alert_receiver(self):  # type: ignore[no-untyped-def]
        r = Receiver()
        r.start()
        yield r
        r.stop()

    @pytest.fixture
    def app_config(self, alert_receiver) -> dict:  # type: ignore[no-untyped-def]
        self.secret = generate_secret()
        return {"ALERT_URL": alert_receiver.url("/alerts"), "ALERT_SECRET": self.secret}

    def test_auto_disable_sends_a_signed_alert(self, app, receiver, alert_receiver):
        cb = make_callback(receiver.url())
        receiver.reply(Reply(410))
        fail_once(app)  # the delivery job queues the alert job, which this burst also runs
        (alert,) = alert_receiver.wait_for(1, 5)
        payload = Webhook(self.secret).verify(alert.body, alert.headers)
        assert payload["type"] == "callback.auto_disabled"
        assert payload["data"]["callback_id"] == cb.id
        assert payload["data"]["reason"] == "auto-disabled: receiver answered 410 Gone"
        assert json.loads(alert.body)["data"]["definition"] == "order.created"

    def test_failed_alert_is_retried_by_rq(self, app, receiver, alert_receiver):
        make_callback(receiver.url())
        receiver.reply(Reply(410))
        alert_receiver.reply(Reply(502))
        fail_once(app)
        assert len(alert_receiver.wait_for(1, 5)) == 1
        from rq.registry import ScheduledJobRegistry

        assert len(ScheduledJobRegistry(queue=get_queue()).get_job_ids()) == 1  # RQ's retry


def test_no_alert_job_without_an_alert_url(app, receiver):
    make_callback(receiver.url())
    receiver.reply(Reply(410))
    (d_id,) = trigger()
    get_queue().empty()
    outcome = delivery.process(d_id)
    db.session.commit()
    assert outcome.disabled_callback_id is not None
    from cbdash import dispatch

    assert dispatch.enqueue_alert(outcome.disabled_callback_id) is False
    assert get_queue().count == 0


def _disable_with_backlog(app, receiver) -> Callback:  # type: ignore[no-untyped-def]
    """A callback that was auto-disabled, with events it missed meanwhile."""
    cb = make_callback(receiver.url())
    other = make_callback(receiver.url("/other"), "order.updated")
    receiver.reply(Reply(500), Reply(410), Reply(200))
    retrying = fail_once(app)  # will be skipped once the callback is disabled
    fail_once(app)  # 410 Gone: disabled now
    attempt_now(retrying)
    assert reload(retrying).status == "skipped"
    for _ in range(3):
        trigger("order.created")  # missed: no delivery to the disabled callback
    trigger("order.updated")  # another definition: not this callback's business
    run_worker(app)
    assert other.active
    return db.session.get(Callback, cb.id, populate_existing=True)


def test_reenable_page_counts_missed_events_and_offers_a_ping(app, admin, receiver):
    cb = _disable_with_backlog(app, receiver)
    page = admin.get(f"/settings/callbacks/{cb.id}/reenable")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # 3 created while disabled + the 410 one and the skipped retry = 5 it never received.
    assert 'id="missed-count">5<' in html
    assert "Re-enable and replay 5 missed events" in html
    assert f"/settings/callbacks/{cb.id}/ping" in html


def test_reenable_and_replay_sends_what_was_missed_once(app, admin, receiver):
    cb = _disable_with_backlog(app, receiver)
    receiver.requests.clear()
    response = admin.post(f"/settings/callbacks/{cb.id}/reenable", data={"replay": "1"})
    assert response.status_code == 303
    assert f"/settings/callbacks/{cb.id}" in response.headers["Location"]
    cb = db.session.get(Callback, cb.id, populate_existing=True)
    assert cb.active and cb.inactive_reason is None
    run_worker(app)
    paths = [r.path for r in receiver.wait_for(5, 5)]
    assert paths == ["/hook"] * 5
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 5
    actions = list(db.session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert actions[-2:] == ["callback.activate", "callback.replay"]
    # Replaying again finds nothing left: everything was received.
    page = admin.get(f"/settings/callbacks/{cb.id}/reenable").get_data(as_text=True)
    assert 'id="missed-count">0<' in page


def test_reenable_without_replay_sends_nothing(app, admin, receiver):
    cb = _disable_with_backlog(app, receiver)
    receiver.requests.clear()
    response = admin.post(f"/settings/callbacks/{cb.id}/reenable", data={"replay": "0"})
    assert response.status_code == 303
    assert "reenabled=1" in response.headers["Location"]
    run_worker(app)
    assert receiver.requests == []
    assert db.session.get(Callback, cb.id, populate_existing=True).active


def test_reenable_needs_the_manage_permission(app, client, receiver):
    from tests.conftest import login

    cb = _disable_with_backlog(app, receiver)
    login(client, "support@example.com", "support")
    assert client.get(f"/settings/callbacks/{cb.id}/reenable").status_code == 403
    assert client.post(f"/settings/callbacks/{cb.id}/reenable", data={"replay": "1"}).status_code == 403
    assert not db.session.get(Callback, cb.id, populate_existing=True).active


def test_auto_disabled_callback_is_re_enabled_through_the_replay_page(app, admin):
    from cbdash.services import callbacks as callback_rules

    cb = make_callback("http://127.0.0.1:9/hook")
    callback_rules.set_active(cb, False, "auto-disabled: receiver answered 410 Gone")
    db.session.commit()
    for page in ("/settings/callbacks?status=inactive", f"/settings/callbacks/{cb.id}"):
        html = admin.get(page).get_data(as_text=True)
        assert f"/settings/callbacks/{cb.id}/reenable" in html
    assert admin.get(f"/settings/callbacks/{cb.id}/reenable").status_code == 200
