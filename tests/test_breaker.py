"""The per-callback circuit breaker: opens, skips the receiver, half-opens, closes; shown and reset."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, Delivery, utcnow
from cbdash.services import breaker
from tests.conftest import login, make_callback
from tests.receiver import Reply

DEF = "redirect_cart_payment"


@pytest.fixture
def app_config() -> dict:
    return {"BREAKER_FAILURES": 3, "BREAKER_WINDOW": 60, "BREAKER_COOLDOWN": 30}


def invoke(client, auth):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    response = client.post(
        f"/api/v1/definitions/{DEF}/invoke", json={"payload": {"cart_id": "c1"}}, headers=auth
    )
    elapsed = time.monotonic() - t0  # what the caller waited
    response.get_data()
    response.close()  # as a WSGI server does after sending: runs the deferred recording
    return response, elapsed


def reload(cb: Callback) -> Callback:
    db.session.expire_all()
    fresh = db.session.get(Callback, cb.id)
    assert fresh is not None
    return fresh


def cool_down(cb: Callback) -> None:
    """Move the breaker's opening back past the cool-down instead of sleeping through it."""
    cb = reload(cb)
    cb.breaker_since = utcnow() - timedelta(seconds=31)
    db.session.commit()


def trip(client, auth, receiver, cb: Callback, n: int = 3) -> None:  # type: ignore[no-untyped-def]
    from flask import g

    receiver.reply(Reply(500, b'{"error": "down"}'))
    for _ in range(n):
        invoke(client, auth)
    assert reload(cb).breaker_state == "open"
    # The test app context outlives requests; drop the token so later browser requests are not "token:".
    g.pop("api_token", None)


def test_breaker_opens_after_n_failures_and_skips_the_receiver(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    receiver.reply(Reply(500, b'{"error": "down"}'))
    invoke(client, auth)
    invoke(client, auth)
    assert reload(cb).breaker_state == "closed" and reload(cb).breaker_failures == 2

    invoke(client, auth)

    cb = reload(cb)
    assert cb.breaker_state == "open"
    assert cb.breaker_since is not None and cb.breaker_since <= utcnow()
    assert "3 failed calls within 60 s" in cb.breaker_reason and "HTTP 500" in cb.breaker_reason
    receiver.reply(Reply(200, b'{"ok": true}'))

    response, elapsed = invoke(client, auth)

    assert len(receiver.requests) == 3  # the fourth call never reached the receiver
    assert response.status_code == 502 and elapsed < 1.0
    data = response.get_json()
    assert data["error"]["code"] == "circuit_open"
    assert "circuit breaker open since" in data["error"]["message"]
    d = db.session.get(Delivery, data["delivery_id"])
    assert (d.kind, d.status, d.attempt_count) == ("invoke", "skipped", 0)
    assert "circuit breaker open" in d.status_detail


def test_open_breaker_with_fallback_policy_answers_the_fallback_at_once(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    cb.failure_policy, cb.fallback_response = "fallback", {"redirect_url": "https://shop.example/later"}
    db.session.commit()
    trip(client, auth, receiver, cb)
    assert reload(cb).breaker_state == "open"

    response, elapsed = invoke(client, auth)

    data = response.get_json()
    assert response.status_code == 200 and data["fallback"] is True
    assert data["body"] == {"redirect_url": "https://shop.example/later"}
    assert "circuit breaker open" in data["fallback_reason"]
    assert len(receiver.requests) == 3 and elapsed < 1.0


def test_open_breaker_passes_the_call_to_the_next_callback(client, auth, receiver):
    from tests.receiver import Receiver

    backup = Receiver()
    backup.start()
    try:
        first = make_callback(receiver.url(), DEF)
        second = make_callback(backup.url(), DEF)
        first.priority, second.priority = 1, 2
        db.session.commit()
        trip(client, auth, receiver, first)
        backup_calls = len(backup.requests)
        receiver.reply(Reply(200, b"{}"))

        data = invoke(client, auth)[0].get_json()

        assert data["callback_id"] == second.id
        assert data["tried"][0]["error"] == "circuit_open" and data["tried"][0]["skipped"] is True
        assert len(receiver.requests) == 3 and len(backup.requests) == backup_calls + 1
    finally:
        backup.stop()


def test_after_the_cool_down_one_successful_trial_closes_it(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    trip(client, auth, receiver, cb)
    cool_down(cb)
    receiver.reply(Reply(200, b'{"redirect_url": "https://pay.example"}'))

    response, _ = invoke(client, auth)

    assert response.status_code == 200 and response.get_json()["body"] == {
        "redirect_url": "https://pay.example"
    }
    assert len(receiver.requests) == 4
    cb = reload(cb)
    assert (cb.breaker_state, cb.breaker_reason, cb.breaker_failures) == ("closed", "trial call succeeded", 0)
    invoke(client, auth)
    assert len(receiver.requests) == 5  # closed: calls go through again


def test_a_failed_trial_opens_it_again(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    trip(client, auth, receiver, cb)
    cool_down(cb)
    before = utcnow()

    response, _ = invoke(client, auth)

    assert response.status_code == 502 and len(receiver.requests) == 4
    cb = reload(cb)
    assert cb.breaker_state == "open" and cb.breaker_since >= before - timedelta(seconds=1)
    assert cb.breaker_reason.startswith("trial call failed: receiver answered HTTP 500")
    invoke(client, auth)
    assert len(receiver.requests) == 4  # open again: a new cool-down starts


def test_only_one_trial_at_a_time(app, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    cb.breaker_state, cb.breaker_since = "open", utcnow() - timedelta(seconds=60)
    db.session.commit()

    first = breaker.admit(reload(cb))
    second = breaker.admit(reload(cb))

    assert first.allowed and first.trial
    assert not second.allowed and "trial call is in progress" in second.reason
    assert reload(cb).breaker_state == "half_open"
    # A trial whose process died gives way once its lease has passed.
    stale = reload(cb)
    stale.breaker_trial_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert breaker.admit(reload(cb)).trial


def test_failures_outside_the_window_do_not_add_up(app, receiver):
    cb = make_callback(receiver.url(), DEF)
    breaker.record_failure(cb, False, "HTTP 500")
    breaker.record_failure(cb, False, "HTTP 500")
    db.session.commit()
    cb = reload(cb)
    cb.breaker_window_start = utcnow() - timedelta(seconds=61)
    db.session.commit()

    assert breaker.record_failure(reload(cb), False, "HTTP 500") is False
    db.session.commit()
    cb = reload(cb)
    assert (cb.breaker_state, cb.breaker_failures) == ("closed", 1)


def test_a_success_clears_the_count(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF)
    receiver.reply(Reply(500, b"{}"), Reply(500, b"{}"), Reply(200, b"{}"), Reply(500, b"{}"))
    for _ in range(4):
        invoke(client, auth)
    cb = reload(cb)
    assert (cb.breaker_state, cb.breaker_failures) == ("closed", 1)


def test_concurrent_failures_are_all_counted(app, receiver):
    """Failures are counted in SQL, so two sessions do not overwrite each other's increment."""
    cb = make_callback(receiver.url(), DEF)
    stale_view = db.session.get(Callback, cb.id)
    breaker.record_failure(stale_view, False, "x")
    breaker.record_failure(stale_view, False, "x")  # same stale object: the count still goes up
    db.session.commit()
    assert reload(cb).breaker_failures == 2


@pytest.mark.parametrize("app_config", [{"BREAKER_FAILURES": 0}])
def test_zero_failures_switches_the_breaker_off(client, auth, receiver, app_config):
    cb = make_callback(receiver.url(), DEF)
    receiver.reply(Reply(500, b"{}"))
    for _ in range(6):
        invoke(client, auth)
    assert reload(cb).breaker_state == "closed"
    assert len(receiver.requests) == 6


def test_state_shows_on_the_row_and_the_detail_page(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF)
    trip(client, auth, receiver, cb)
    login(client)

    row = client.get("/settings/callbacks").get_data(as_text=True)
    assert 'data-breaker="open"' in row and "Breaker open" in row
    assert "3 failed calls within 60 s" in row  # the why, in the badge's title

    page = client.get(f"/settings/callbacks/{cb.id}").get_data(as_text=True)
    assert 'data-breaker-state="open"' in page
    assert "3 failed calls within 60 s; last: receiver answered HTTP 500" in page
    assert "<time datetime=" in page.split('id="breaker-')[1].split("</dd>")[0]  # since when
    assert "Reset breaker" in page


def test_half_open_shows_on_the_row(client, receiver):
    cb = make_callback(receiver.url(), DEF)
    cb.breaker_state, cb.breaker_since = "half_open", utcnow()
    cb.breaker_trial_until = utcnow() + timedelta(seconds=30)
    db.session.commit()
    login(client)
    assert 'data-breaker="half_open"' in client.get("/settings/callbacks").get_data(as_text=True)


def test_closed_breaker_shows_no_badge_on_the_row(client, receiver):
    make_callback(receiver.url(), DEF)
    login(client)
    assert "data-breaker=" not in client.get("/settings/callbacks").get_data(as_text=True)


def test_admin_resets_it_and_the_reset_is_audited(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF)
    trip(client, auth, receiver, cb)
    login(client)

    response = client.post(f"/settings/callbacks/{cb.id}/breaker/reset")

    assert response.status_code == 303 and response.location.endswith(f"/settings/callbacks/{cb.id}#sync")
    cb = reload(cb)
    assert (cb.breaker_state, cb.breaker_failures, cb.breaker_reason) == ("closed", 0, "reset by hand")
    entry = db.session.query(AuditEntry).filter_by(action="callback.breaker_reset").one()
    assert (entry.actor, entry.target_id, entry.detail) == (
        "admin@example.com",
        str(cb.id),
        {"previous_state": "open"},
    )
    receiver.reply(Reply(200, b"{}"))
    assert invoke(client, auth)[0].status_code == 200 and len(receiver.requests) == 4


def test_reset_with_htmx_swaps_the_section(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF)
    trip(client, auth, receiver, cb)
    login(client)
    response = client.post(f"/settings/callbacks/{cb.id}/breaker/reset", headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and html.lstrip().startswith(
        f'<section class="card" id="sync-{cb.id}"'
    )
    assert 'data-breaker-state="closed"' in html and "cbdash:notice" in response.headers["HX-Trigger"]


@pytest.mark.parametrize("role", ["support", "viewer"])
def test_only_admins_reset(client, auth, receiver, role):
    cb = make_callback(receiver.url(), DEF)
    trip(client, auth, receiver, cb)
    login(client, f"{role}@example.com", role)
    assert client.post(f"/settings/callbacks/{cb.id}/breaker/reset").status_code == 403
    assert reload(cb).breaker_state == "open"
    assert "Reset breaker" not in client.get(f"/settings/callbacks/{cb.id}").get_data(as_text=True)


def test_api_shows_and_resets_the_breaker(client, auth, receiver):
    cb = make_callback(receiver.url(), DEF)
    trip(client, auth, receiver, cb)
    shown = client.get(f"/api/v1/callbacks/{cb.id}/breaker", headers=auth).get_json()
    assert shown["state"] == "open" and shown["since"].endswith("Z") and "HTTP 500" in shown["reason"]
    assert shown["threshold"] == 3 and shown["cooldown_seconds"] == 30

    reset = client.post(f"/api/v1/callbacks/{cb.id}/breaker/reset", headers=auth)

    assert reset.status_code == 200 and reset.get_json()["state"] == "closed"
    assert (
        db.session.query(AuditEntry).filter_by(action="callback.breaker_reset").one().actor == "token:tests"
    )
    assert client.post("/api/v1/callbacks/999/breaker/reset", headers=auth).status_code == 404
