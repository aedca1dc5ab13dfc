"""The delivery log: what a receiver got is what the log shows; filters, look-ups, pages, detail."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from cbdash.extensions import db
from cbdash.models import Callback, Delivery, Event, new_uid, utcnow
from tests.conftest import login, make_callback, run_worker
from tests.receiver import Reply

LOG = "/settings/callbacks/deliveries"


@pytest.fixture
def app_config() -> dict:
    # A tiny response excerpt shows the cap; a one-hour retry keeps failures open.
    return {"RESPONSE_EXCERPT": 16, "RETRY_SCHEDULE": "3600"}


def row_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-delivery-id="(\d+)">', page)]


def add_delivery(
    cb: Callback, *, status: str = "succeeded", kind: str = "event", age: timedelta = timedelta(0)
):  # type: ignore[no-untyped-def]
    """A delivery row (and its event) written directly, for paging and filter tests."""
    at = utcnow() - age
    event = Event(uid=new_uid("evt"), definition=cb.definition, body='{"data":{}}', created_at=at)
    d = Delivery(event=event, callback_id=cb.id, kind=kind, status=status, created_at=at, attempt_count=1)
    db.session.add(d)
    db.session.commit()
    return d


def test_log_shows_exactly_the_three_events_and_the_ping_the_receiver_got(app, admin, auth, receiver):
    cb = make_callback(receiver.url(), "order.created")
    make_callback(receiver.url("/other"), "order.paid")  # another definition: gets nothing
    for i in range(3):
        response = admin.post(
            "/api/v1/events", json={"definition": "order.created", "payload": {"i": i}}, headers=auth
        )
        assert response.status_code == 202
    assert admin.post(f"/settings/callbacks/{cb.id}/ping").status_code in (200, 303)
    run_worker(app)
    got = receiver.wait_for(4)
    assert len(got) == 4
    page = admin.get(LOG).get_data(as_text=True)
    ids = row_ids(page)
    assert len(ids) == 4 and 'data-total="4"' in page
    shown = {d.webhook_id: d.kind for d in db.session.query(Delivery).filter(Delivery.id.in_(ids))}
    assert sorted(shown.values()) == ["event", "event", "event", "ping"]
    assert set(shown) == {r.headers["webhook-id"] for r in got}
    assert [r.path for r in got] == ["/hook"] * 4


def test_filters_by_callback_definition_status_kind_and_window(app, admin):
    a = make_callback("http://127.0.0.1:9/a", "order.created")
    b = make_callback("http://127.0.0.1:9/b", "order.paid")
    ok = add_delivery(a)
    failed = add_delivery(a, status="failed")
    ping = add_delivery(b, kind="ping")
    old = add_delivery(b, status="failed", age=timedelta(days=3))
    assert sorted(row_ids(admin.get(f"{LOG}?callback_id={a.id}").get_data(as_text=True))) == [
        ok.id,
        failed.id,
    ]
    assert sorted(row_ids(admin.get(f"{LOG}?definition=order.paid").get_data(as_text=True))) == [
        ping.id,
        old.id,
    ]
    assert sorted(row_ids(admin.get(f"{LOG}?status=failed").get_data(as_text=True))) == [failed.id, old.id]
    assert row_ids(admin.get(f"{LOG}?kind=ping").get_data(as_text=True)) == [ping.id]
    assert old.id not in row_ids(admin.get(f"{LOG}?window=24h").get_data(as_text=True))
    assert old.id in row_ids(admin.get(f"{LOG}?window=7d").get_data(as_text=True))
    both = admin.get(f"{LOG}?status=failed&window=24h&callback_id={a.id}").get_data(as_text=True)
    assert row_ids(both) == [failed.id]


def test_lookup_by_delivery_number_webhook_id_and_event_id(app, admin):
    cb = make_callback("http://127.0.0.1:9/a")
    d = add_delivery(cb)
    other = add_delivery(cb)
    for ident in (str(d.id), f"%23{d.id}", d.webhook_id, d.event.uid):
        assert row_ids(admin.get(f"{LOG}?id={ident}").get_data(as_text=True)) == [d.id], ident
    assert other.id not in row_ids(admin.get(f"{LOG}?id={d.event.uid}").get_data(as_text=True))
    none = admin.get(f"{LOG}?id=evt_doesnotexist").get_data(as_text=True)
    assert row_ids(none) == [] and "No deliveries match" in none


def test_bad_filters_are_explained_and_never_an_error_page(app, admin):
    cb = make_callback("http://127.0.0.1:9/a")
    d = add_delivery(cb)
    response = admin.get(
        f"{LOG}?callback_id=abc&definition=Bad Name!&status=lost&kind=fax&window=3y"
        "&from=yesterday&to=2025-13-40&id=<script>&before=x&after=-1"
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    for message in (
        "Choose a callback",
        "definition name",
        "Unknown status",
        "Unknown kind",
        "Unknown time window",
    ):
        assert message in page
    assert "is not a date and time" in page and "Enter a delivery number" in page
    assert "<script>" not in page.split('id="deliveries-results"')[1]
    assert row_ids(page) == [d.id]  # ignored filters do not hide anything
    assert admin.get(f"{LOG}/999999").status_code == 404


def test_pages_are_cursors_newest_first_without_gaps_or_repeats(app, admin):
    cb = make_callback("http://127.0.0.1:9/a")
    made = [add_delivery(cb, age=timedelta(seconds=200 - i)).id for i in range(120)]
    newest_first = list(reversed(made))
    first = admin.get(LOG).get_data(as_text=True)
    assert row_ids(first) == newest_first[:50] and 'data-total="120"' in first
    older = re.search(r'href="([^"]*before=\d+[^"]*)"', first).group(1).replace("&amp;", "&")
    second = admin.get(older).get_data(as_text=True)
    assert row_ids(second) == newest_first[50:100]
    third_url = re.search(r'href="([^"]*before=\d+[^"]*)"', second).group(1).replace("&amp;", "&")
    third = admin.get(third_url).get_data(as_text=True)
    assert row_ids(third) == newest_first[100:] and "Older" not in third
    newer = re.search(r'href="([^"]*after=\d+[^"]*)"', third).group(1).replace("&amp;", "&")
    assert row_ids(admin.get(newer).get_data(as_text=True)) == newest_first[50:100]
    filtered = admin.get(f"{LOG}?kind=event&before={newest_first[9]}").get_data(as_text=True)
    assert row_ids(filtered) == newest_first[10:60]
    assert "kind=event" in re.search(r'href="([^"]*before=\d+[^"]*)"', filtered).group(1)


def test_htmx_swap_pushes_a_clean_url_and_history_restore_gets_the_full_page(app, admin):
    cb = make_callback("http://127.0.0.1:9/a")
    add_delivery(cb, status="failed")
    headers = {"HX-Request": "true", "HX-Target": "deliveries-results"}
    swap = admin.get(
        f"{LOG}?callback_id={cb.id}&definition=&status=failed&kind=&window=&from=&to=&id=", headers=headers
    )
    fragment = swap.get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="deliveries-results">') and "<html" not in fragment
    pushed = urlsplit(swap.headers["HX-Push-Url"])
    assert pushed.path == LOG and parse_qs(pushed.query) == {
        "callback_id": [str(cb.id)],
        "status": ["failed"],
    }
    assert "HX-Request" in swap.headers["Vary"]
    restore = admin.get(
        f"{LOG}?status=failed", headers={**headers, "HX-History-Restore-Request": "true"}
    ).get_data(as_text=True)
    assert "<html" in restore and 'value="failed" selected' in restore
    form = re.search(r'<form id="deliveries-filters"[^>]*>', admin.get(LOG).get_data(as_text=True)).group(0)
    assert (
        'hx-push-url="true"' in form and 'method="get"' in form and 'hx-target="#deliveries-results"' in form
    )


def test_detail_shows_the_request_sent_redacted_every_attempt_and_the_next_one(app, admin, auth, receiver):
    receiver.reply(
        Reply(500, b"first failure: the database is down, " + b"x" * 100, headers={"X-Trace": "abc123"}),
        Reply(201, b'{"ok": true}'),
    )
    make_callback(receiver.url(), headers={"Authorization": "Bearer s3cret-value", "X-Shop": "acme"})
    admin.post("/api/v1/events", json={"definition": "order.created", "payload": {"order": 42}}, headers=auth)
    run_worker(app)
    d = db.session.query(Delivery).one()
    page = admin.get(f"{LOG}/{d.id}").get_data(as_text=True)
    assert d.status == "retrying"
    assert "s3cret-value" not in page and "Authorization: ••••••" in page and "X-Shop: acme" in page
    assert "webhook-signature: ••••••" in page
    assert '"order":42' in page.replace("&#34;", '"')
    assert "HTTP 500" in page and "X-Trace: abc123" in page.replace("x-trace", "X-Trace")
    assert "first failure: t" in page and "the database is down" not in page  # capped at 16 bytes
    assert "truncated" in page
    assert "Next attempt" in page and "datetime=" in page
    assert "Redeliver" in page
    # The retry, sent now, succeeds: the newest attempt is listed first.
    d.next_attempt_at = utcnow()
    db.session.commit()
    from cbdash.services import delivery as delivery_service

    delivery_service.process(d.id)
    page = admin.get(f"{LOG}/{d.id}").get_data(as_text=True)
    assert page.index("Attempt 2") < page.index("Attempt 1")
    assert "HTTP 201" in page and "Next attempt" not in page


def test_redeliver_keeps_the_webhook_id_and_needs_the_permission(app, client, receiver):
    cb = make_callback(receiver.url())
    d = add_delivery(cb, status="failed")
    login(client, "viewer@example.com", "viewer")
    page = client.get(f"{LOG}/{d.id}").get_data(as_text=True)
    assert page.count(f"{LOG}/{d.id}/redeliver") == 0  # no Redeliver button for a viewer
    assert client.post(f"{LOG}/{d.id}/redeliver").status_code == 403
    client.post("/logout")
    login(client, "support@example.com", "support")
    assert f"{LOG}/{d.id}/redeliver" in client.get(f"{LOG}/{d.id}").get_data(as_text=True)
    response = client.post(f"{LOG}/{d.id}/redeliver")
    assert response.status_code == 303
    again = db.session.query(Delivery).filter(Delivery.redelivery_of_id == d.id).one()
    assert again.webhook_id == d.webhook_id and again.kind == "redelivery"
    assert response.headers["Location"].endswith(f"{LOG}/{again.id}")


def test_many_callbacks_filter_by_id_instead_of_a_long_list(app, admin):
    db.session.add_all(
        Callback(definition="order.created", url=f"http://127.0.0.1:9/{i}", secret="whsec_x")
        for i in range(201)
    )
    db.session.commit()
    page = admin.get(LOG).get_data(as_text=True)
    assert '<input name="callback_id"' in page and '<select name="callback_id"' not in page


@pytest.mark.browser
@pytest.mark.slow
def test_filters_swap_in_place_update_the_address_and_back_restores(app, receiver):
    import threading

    from playwright.sync_api import expect, sync_playwright
    from werkzeug.serving import make_server

    from tests.conftest import create_user

    create_user()
    cb = make_callback(receiver.url())
    failed = add_delivery(cb, status="failed")
    ok = add_delivery(cb)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                tab = browser.new_page()
                tab.goto(f"{base}/login")
                tab.fill("input[name=email]", "admin@example.com")
                tab.fill("input[name=password]", "password-123")
                tab.click("button[type=submit]")
                tab.goto(f"{base}{LOG}")
                assert tab.locator("tr[data-delivery-id]").count() == 2
                tab.evaluate("window.notReloaded = true")
                tab.select_option("select[name=status]", "failed")
                # Locator waits: a wait_for_function string is eval, which the CSP refuses.
                expect(tab.locator("tr[data-delivery-id]")).to_have_count(1)
                assert tab.url == f"{base}{LOG}?status=failed"  # clean and shareable
                assert tab.get_attribute("tr[data-delivery-id]", "data-delivery-id") == str(failed.id)
                assert tab.evaluate("window.notReloaded") is True
                tab.go_back()
                expect(tab.locator("tr[data-delivery-id]")).to_have_count(2)
                assert tab.url == f"{base}{LOG}"
                assert tab.eval_on_selector("select[name=status]", "e => e.value") == ""
                tab.goto(f"{base}{LOG}?status=succeeded")  # a shared link opens filtered
                assert tab.get_attribute("tr[data-delivery-id]", "data-delivery-id") == str(ok.id)
            finally:
                browser.close()
    finally:
        server.shutdown()
        thread.join(5)
