"""The "Synchronous calls" section of the callback page: Call now, failure policy, priority."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, Delivery, Event
from tests.conftest import login, make_callback
from tests.receiver import Reply

DEF = "redirect_cart_payment"
HX = {"HX-Request": "true"}


def page(client, cb: Callback, **args) -> str:  # type: ignore[no-untyped-def]
    response = client.get(f"/settings/callbacks/{cb.id}", query_string=args)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def section(html: str, cb: Callback) -> str:
    start = html.index(f'id="sync-{cb.id}"')
    return html[start : html.index("</section>", start)]


def test_sync_definition_page_offers_call_now_with_the_sample_payload(admin, receiver):
    cb = make_callback(receiver.url(), DEF, timeout=3)
    html = section(page(admin, cb), cb)
    assert "Synchronous calls" in html and "sync definition" in html
    assert '<details class="call-now" open>' in html
    assert "&#34;cart_id&#34;: &#34;cart_1042&#34;" in html  # the catalogue's sample, escaped in the textarea
    assert 'data-breaker-state="closed"' in html and "0 of 5 failed calls within 60 s" in html
    assert "Fail — the caller gets a 502 or 504" in html


def test_other_definitions_keep_call_now_folded(admin, receiver):
    cb = make_callback(receiver.url(), "order.created")
    html = section(page(admin, cb), cb)
    assert '<details class="call-now" >' in html  # folded: no "open"
    assert "ord_1042" in html  # the definition's own sample


def test_call_now_with_htmx_shows_the_parsed_answer_inline(admin, receiver):
    receiver.reply(Reply(200, b'{"redirect_url": "https://pay.example/c/1", "note": "<b>hi</b>"}'))
    cb = make_callback(receiver.url(), DEF, timeout=3)
    edited = {"cart_id": "cart_edited", "amount": "1.00"}

    response = admin.post(
        f"/settings/callbacks/{cb.id}/call", data={"payload": json.dumps(edited)}, headers=HX
    )

    html = response.get_data(as_text=True)
    assert response.status_code == 200 and html.startswith(f'<div id="call-result-{cb.id}"')
    assert 'data-http-status="200"' in html and 'data-fallback="false"' in html
    assert "Receiver answered <strong" in html and ">200<" in html
    assert "&#34;redirect_url&#34;: &#34;https://pay.example/c/1&#34;" in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html
    (request,) = receiver.wait_for(1)
    envelope = Webhook(cb.secret).verify(request.body, request.headers)
    assert envelope["data"] == edited and envelope["test"] is True
    d = db.session.query(Delivery).one()
    assert (d.kind, d.status) == ("invoke", "succeeded")
    assert db.session.get(Event, d.event_id).is_test


def test_call_now_without_javascript_redirects_to_the_result(admin, receiver):
    receiver.reply(Reply(200, b'{"redirect_url": "https://pay.example/c/2"}'))
    cb = make_callback(receiver.url(), DEF)

    response = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": '{"cart_id": "x"}'})

    d = db.session.query(Delivery).one()
    assert response.status_code == 303
    assert response.location.endswith(f"/settings/callbacks/{cb.id}?call={d.id}#sync")
    html = section(page(admin, cb, call=d.id), cb)
    assert 'data-http-status="200"' in html and "https://pay.example/c/2" in html
    assert "&#34;cart_id&#34;: &#34;x&#34;" in html  # the payload sent stays in the form


def test_call_now_reports_a_non_json_answer(admin, receiver):
    receiver.reply(Reply(200, b"<p>pay</p>", {"Content-Type": "text/html"}))
    cb = make_callback(receiver.url(), DEF)
    html = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}, headers=HX).get_data(
        as_text=True
    )
    assert "not JSON" in html and "&lt;p&gt;pay&lt;/p&gt;" in html and "text/html" in html


def test_call_now_shows_the_fallback(admin, receiver):
    receiver.reply(Reply(500, b"{}"))
    cb = make_callback(receiver.url(), DEF)
    cb.failure_policy, cb.fallback_response = "fallback", {"redirect_url": "https://shop.example/later"}
    db.session.commit()
    html = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}, headers=HX).get_data(
        as_text=True
    )
    assert 'data-fallback="true"' in html and "Fallback response" in html
    assert "https://shop.example/later" in html and "HTTP 500" in html


def test_call_now_shows_the_error_the_store_would_get(admin, receiver):
    receiver.reply(Reply(500, b"{}"))
    cb = make_callback(receiver.url(), DEF)
    html = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}, headers=HX).get_data(
        as_text=True
    )
    assert 'data-http-status="502"' in html and "bad_gateway" in html and "receiver answered HTTP 500" in html


def test_bad_payload_is_explained_and_nothing_is_sent(admin, receiver):
    cb = make_callback(receiver.url(), DEF)
    htmx = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{nope"}, headers=HX)
    assert htmx.status_code == 200 and "Not called:" in htmx.get_data(as_text=True)
    assert "not valid JSON" in htmx.get_data(as_text=True)

    plain = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{nope"})

    assert plain.status_code == 422
    html = section(plain.get_data(as_text=True), cb)
    assert "not valid JSON" in html and ">{nope</textarea>" in html
    assert receiver.requests == [] and db.session.query(Delivery).count() == 0


def test_call_now_on_an_inactive_callback_says_so(admin, receiver):
    cb = make_callback(receiver.url(), DEF, active=False)
    html = admin.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}, headers=HX).get_data(
        as_text=True
    )
    assert "inactive" in html and receiver.requests == []


def test_support_may_call_now_but_not_edit_the_policy(client, receiver):
    cb = make_callback(receiver.url(), DEF)
    login(client, "support@example.com", "support")
    html = section(page(client, cb), cb)
    assert "Call now" in html and "Edit priority and failure policy" not in html
    assert client.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}).status_code == 303
    saved = client.post(
        f"/settings/callbacks/{cb.id}/sync-settings", data={"failure_policy": "fail", "priority": "1"}
    )
    assert saved.status_code == 403


def test_viewer_sees_the_state_but_no_forms(client, receiver):
    cb = make_callback(receiver.url(), DEF)
    login(client, "viewer@example.com", "viewer")
    html = section(page(client, cb), cb)
    assert 'data-breaker-state="closed"' in html
    assert "<form" not in html
    assert client.post(f"/settings/callbacks/{cb.id}/call", data={"payload": "{}"}).status_code == 403
    assert receiver.requests == []


def test_admin_sets_fallback_policy_and_priority(admin, receiver):
    cb = make_callback(receiver.url(), DEF)
    data = {"failure_policy": "fallback", "fallback_response": '{"redirect_url": "/later"}', "priority": "5"}

    response = admin.post(f"/settings/callbacks/{cb.id}/sync-settings", data=data, headers=HX)

    assert response.status_code == 200 and "cbdash:notice" in response.headers["HX-Trigger"]
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith(f'<section class="card" id="sync-{cb.id}"')
    assert "Fallback — the caller gets this static response" in html
    assert "&#34;redirect_url&#34;: &#34;/later&#34;" in html.split('class="code-block fallback-body">')[1]
    db.session.expire_all()
    cb = db.session.get(Callback, cb.id)
    assert (cb.failure_policy, cb.fallback_response, cb.priority) == (
        "fallback",
        {"redirect_url": "/later"},
        5,
    )
    entry = db.session.query(AuditEntry).filter_by(action="callback.sync_settings").one()
    assert entry.detail["changes"]["failure_policy"] == ["fail", "fallback"]
    assert entry.detail["changes"]["priority"] == [100, 5]


def test_plain_save_redirects_back_to_the_section(admin, receiver):
    cb = make_callback(receiver.url(), DEF)
    response = admin.post(
        f"/settings/callbacks/{cb.id}/sync-settings",
        data={"failure_policy": "fail", "fallback_response": "", "priority": "7"},
    )
    assert response.status_code == 303 and response.location.endswith(f"/settings/callbacks/{cb.id}#sync")
    db.session.expire_all()
    assert db.session.get(Callback, cb.id).priority == 7


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {"failure_policy": "fallback", "fallback_response": "{oops", "priority": "1"},
            "fallback_response",
            "Not valid JSON",
        ),
        (
            {"failure_policy": "fallback", "fallback_response": "", "priority": "1"},
            "fallback_response",
            "needs a JSON",
        ),
        (
            {"failure_policy": "retry", "fallback_response": "", "priority": "1"},
            "failure_policy",
            "Choose fail or fallback",
        ),
        (
            {"failure_policy": "fail", "fallback_response": "", "priority": "-3"},
            "priority",
            "whole number from 0",
        ),
        (
            {"failure_policy": "fail", "fallback_response": "", "priority": "ten"},
            "priority",
            "whole number from 0",
        ),
        (
            {"failure_policy": "fail", "fallback_response": "x" * 20000, "priority": "1"},
            "fallback_response",
            "under 16 KiB",
        ),
    ],
)
def test_invalid_settings_show_inline_and_change_nothing(admin, receiver, data, field, message):
    cb = make_callback(receiver.url(), DEF)

    htmx = admin.post(f"/settings/callbacks/{cb.id}/sync-settings", data=data, headers=HX)
    plain = admin.post(f"/settings/callbacks/{cb.id}/sync-settings", data=data)

    assert htmx.status_code == 200 and message in htmx.get_data(as_text=True)
    assert plain.status_code == 422
    html = section(plain.get_data(as_text=True), cb)
    assert '<details class="sync-settings" open>' in html
    assert message in html.split(f'id="{field}-{cb.id}"')[1].split("</div>")[0]  # next to its field
    db.session.expire_all()
    cb = db.session.get(Callback, cb.id)
    assert (cb.failure_policy, cb.priority, cb.fallback_response) == ("fail", 100, None)
    assert db.session.query(AuditEntry).filter_by(action="callback.sync_settings").count() == 0


def test_unknown_callback_is_a_404(admin):
    assert admin.post("/settings/callbacks/999/call", data={"payload": "{}"}).status_code == 404
    assert admin.post("/settings/callbacks/999/breaker/reset").status_code == 404


@pytest.fixture
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.mark.browser
@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
def test_call_now_in_a_browser(app, live_server, receiver, app_config):
    """Real Chromium, CSRF on: Call now swaps in the answer without a reload; Reset swaps the section."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import create_user

    create_user()
    receiver.reply(Reply(200, b'{"redirect_url": "https://pay.example/c/9"}'))
    cb = make_callback(receiver.url(), DEF, timeout=3)
    cb.breaker_state, cb.breaker_reason = "open", "5 failed calls within 60 s; last: HTTP 500"
    from cbdash.models import utcnow

    cb.breaker_since = utcnow()
    db.session.commit()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            tab = browser.new_page()
            tab.goto(f"{live_server}/login")
            tab.fill("input[name=email]", "admin@example.com")
            tab.fill("input[name=password]", "password-123")
            tab.click("button[type=submit]")
            tab.goto(f"{live_server}/settings/callbacks/{cb.id}")
            tab.evaluate("window.notReloaded = true")
            tab.on("dialog", lambda dialog: dialog.accept())
            tab.click("text=Reset breaker")
            tab.wait_for_selector('[data-breaker-state="closed"]', timeout=10000)
            tab.fill(f"#payload-{cb.id}", '{"cart_id": "from-the-browser"}')
            tab.click("button:has-text('Call now')")
            tab.wait_for_selector(f'#call-result-{cb.id}[data-http-status="200"]', timeout=10000)
            text = tab.inner_text(f"#call-result-{cb.id}")
            assert tab.evaluate("window.notReloaded") is True
        finally:
            browser.close()
    assert "https://pay.example/c/9" in text and "200" in text
    (request,) = receiver.wait_for(1)
    assert json.loads(request.body)["data"] == {"cart_id": "from-the-browser"}
