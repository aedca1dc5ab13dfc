"""The Callbacks page (SPEC §3–§4): full page vs fragment, tabs, table, row actions, roles."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, Delivery
from tests.conftest import login, make_callback, run_worker
from tests.htmlq import parse
from tests.receiver import Reply

PAGE = "/settings/callbacks"
TABLE = "/settings/callbacks/table"
HX = {"HX-Request": "true"}


@pytest.fixture
def app_config() -> dict:
    return {"PAGE_SIZE": 5}


def seed_demo() -> tuple[Callback, Callback, Callback]:
    """The help page's three callbacks, with their creation times."""
    a = make_callback("https://webhook.test/123", "redirect_cart_payment")
    b = make_callback("https://webhook.test/131", "test_callback_system")
    c = make_callback("https://webhook.test/123", "test_callback_system", active=False)
    a.created_at = datetime(2025, 6, 19, 12, 48)
    b.created_at = datetime(2025, 5, 28, 10, 18)
    c.created_at = datetime(2025, 5, 28, 10, 17)
    db.session.commit()
    return a, b, c


def tab_counts(html: bytes) -> dict[str, int]:
    doc = parse(html)
    counts = {}
    for a in doc.find_all("a", class_="tab"):
        label, count = a.text.rsplit(" ", 1)
        counts[label.lower()] = int(count)
    return counts


def row_names(html: bytes) -> list[str]:
    doc = parse(html)
    return [a.text for a in doc.find_all("a", class_="def-name")]


def row_ids(doc) -> list[str]:  # type: ignore[no-untyped-def]
    return [tr.attrs["id"] for tr in doc.by_id("callbacks-table").find_all("tr", class_="cb-row")]


def delivery_count() -> int:
    return db.session.scalar(select(func.count()).select_from(Delivery)) or 0


# Full page vs fragment ------------------------------------------------------------------


def test_page_is_a_full_document_with_header_and_panel(admin):
    seed_demo()
    r = admin.get(PAGE)
    assert r.status_code == 200
    doc = parse(r.data)
    assert doc.find("html") is not None and doc.find("nav", class_="sidebar") is not None
    assert doc.find("h1").text == "Callbacks"
    docs_link = doc.find("a", href="/settings/callbacks/docs")
    assert docs_link is not None and docs_link.text == "View Callbacks Documentation"
    assert doc.find("img", class_="page-illustration").attrs["src"].endswith("callbacks-illustration.svg")
    assert doc.by_id("callbacks-panel") is not None
    assert "HX-Request" in r.headers["Vary"]


def test_table_fragment_is_only_the_panel_and_pushes_the_page_url(admin):
    seed_demo()
    r = admin.get(TABLE + "?status=inactive", headers=HX)
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="callbacks-panel"')
    assert "<html" not in body and "sidebar" not in body
    assert r.headers["HX-Push-Url"] == "/settings/callbacks?status=inactive"
    assert "HX-Request" in r.headers["Vary"]
    assert row_names(r.data) == ["test_callback_system"]


def test_search_as_you_type_replaces_the_url_instead_of_pushing(admin):
    seed_demo()
    r = admin.get(TABLE + "?q=131", headers={**HX, "HX-Trigger": "callbacks-search"})
    assert r.headers["HX-Replace-Url"] == "/settings/callbacks?q=131"
    assert "HX-Push-Url" not in r.headers


def test_fragment_url_opened_by_a_browser_redirects_to_the_full_page(admin):
    r = admin.get(TABLE + "?status=inactive&q=x")
    assert r.status_code == 302
    assert r.headers["Location"] == "/settings/callbacks?status=inactive&q=x"
    assert "HX-Request" in r.headers["Vary"]


def test_history_restore_requests_get_full_pages(admin):
    seed_demo()
    restore = {**HX, "HX-History-Restore-Request": "true"}
    r = admin.get(PAGE + "?status=inactive", headers=restore)
    assert r.status_code == 200 and b"<html" in r.data and b'class="sidebar"' in r.data
    assert row_names(r.data) == ["test_callback_system"]
    # A restore of the fragment URL must not put a bare fragment on screen either.
    r = admin.get(TABLE + "?status=inactive", headers=restore)
    assert r.status_code == 302 and r.headers["Location"] == "/settings/callbacks?status=inactive"


def test_page_url_requested_by_htmx_is_still_the_full_page(admin):
    r = admin.get(PAGE + "?status=active", headers={**HX, "HX-Target": "callbacks-panel"})
    assert b"<html" in r.data
    assert "HX-Request" in r.headers["Vary"]


def test_tabs_are_links_with_href_hx_get_and_page_push_url(admin):
    seed_demo()
    doc = parse(admin.get(PAGE + "?q=test").data)
    tabs = {a.text.split()[0]: a for a in doc.find_all("a", class_="tab")}
    assert list(tabs) == ["All", "Active", "Inactive"]
    assert tabs["All"].attrs["href"] == "/settings/callbacks?q=test"
    assert tabs["Inactive"].attrs["href"] == "/settings/callbacks?status=inactive&q=test"
    assert (
        tabs["Inactive"].attrs["hx-get"]
        == "/settings/callbacks/table?status=inactive&sort=newest&page=1&q=test"
    )
    assert tabs["Inactive"].attrs["hx-push-url"] == tabs["Inactive"].attrs["href"]
    assert tabs["Inactive"].attrs["hx-target"] == "#callbacks-panel"
    assert tabs["All"].attrs.get("aria-current") == "page"
    assert "aria-current" not in tabs["Active"].attrs


def test_bookmarked_inactive_tab_renders_that_tab(admin):
    seed_demo()
    r = admin.get(PAGE + "?status=inactive")
    doc = parse(r.data)
    current = doc.find("a", class_="tab", aria_current="page")
    assert current.text.startswith("Inactive")
    assert row_names(r.data) == ["test_callback_system"]


def test_unknown_query_values_fall_back_to_defaults(admin):
    seed_demo()
    r = admin.get(PAGE + "?status=bogus&sort=sideways&page=-3")
    assert r.status_code == 200
    assert len(row_names(r.data)) == 3
    assert admin.get(PAGE + "?page=abc").status_code == 200


# The table ------------------------------------------------------------------------------


def test_columns_in_order_and_values_read_like_the_help_page(admin):
    seed_demo()
    doc = parse(admin.get(PAGE).data)
    table = doc.by_id("callbacks-table")
    headers = [th.text for th in table.find_all("th")]
    assert headers[:5] == ["Definition Name", "URL", "Timeout", "Status", "Created At (UTC) ↓"]
    assert headers[5] == "Actions"
    first = table.find("tbody").find("tr")
    cells = [td.text for td in first.find_all("td")]
    assert cells[0] == "redirect_cart_payment"
    assert cells[1] == "https://webhook.test/123"
    assert cells[2] == "5 seconds"
    assert cells[3] == "Active"
    assert cells[4] == "June 19, 2025 12:48"
    time_el = first.find("time")
    assert time_el.attrs["datetime"] == "2025-06-19T12:48:00Z" == time_el.attrs["title"]


@pytest.mark.parametrize("app_config", [{"TIMEZONE": "Europe/Berlin"}])
def test_created_at_uses_the_display_time_zone_and_labels_it(admin):
    seed_demo()
    doc = parse(admin.get(PAGE).data)
    assert "Created At (Europe/Berlin)" in doc.find("th", class_="col-created").text
    first = doc.by_id("callbacks-table").find("tbody").find("tr")
    assert first.find("time").text == "June 19, 2025 14:48"
    assert first.find("time").attrs["datetime"] == "2025-06-19T12:48:00Z"


def test_one_second_timeout_is_singular(admin):
    make_callback("https://webhook.test/1", timeout=1)
    assert "1 second" in parse(admin.get(PAGE).data).find("td", data_label="Timeout").text


def test_tab_counts_and_filtering(admin):
    seed_demo()
    assert tab_counts(admin.get(PAGE).data) == {"all": 3, "active": 2, "inactive": 1}
    assert row_names(admin.get(PAGE + "?status=active").data) == [
        "redirect_cart_payment",
        "test_callback_system",
    ]
    assert len(row_names(admin.get(PAGE + "?status=all").data)) == 3


def test_several_callbacks_share_a_definition_name(admin):
    seed_demo()
    assert row_names(admin.get(PAGE).data).count("test_callback_system") == 2


def test_sort_newest_first_by_default_and_oldest_on_request(admin):
    a, b, c = seed_demo()
    doc = parse(admin.get(PAGE).data)
    ids = row_ids(doc)
    assert ids == [f"callback-{a.id}", f"callback-{b.id}", f"callback-{c.id}"]
    sort_link = doc.find("a", class_="th-sort")
    assert sort_link.attrs["href"] == "/settings/callbacks?sort=oldest"
    assert doc.find("th", class_="col-created").attrs["aria-sort"] == "descending"
    doc = parse(admin.get(PAGE + "?sort=oldest").data)
    ids = row_ids(doc)
    assert ids == [f"callback-{c.id}", f"callback-{b.id}", f"callback-{a.id}"]
    assert doc.find("th", class_="col-created").attrs["aria-sort"] == "ascending"


def test_search_matches_name_or_url_and_keeps_the_tab(admin):
    seed_demo()
    make_callback("https://crm.example.com/hooks", "customer.created")
    assert row_names(admin.get(PAGE + "?q=CUSTOMER").data) == ["customer.created"]
    assert row_names(admin.get(PAGE + "?q=webhook.test/131").data) == ["test_callback_system"]
    assert row_names(admin.get(PAGE + "?q=test_callback&status=inactive").data) == ["test_callback_system"]
    # LIKE wildcards are literal: "_" must not match any character.
    assert row_names(admin.get(PAGE + "?q=customer_created").data) == []


def test_pagination_is_server_side(admin):
    for i in range(7):
        cb = make_callback(f"https://webhook.test/{i}", f"order.n{i}")
        cb.created_at = datetime(2025, 1, 1 + i)
    db.session.commit()
    first = admin.get(PAGE)
    assert row_names(first.data) == ["order.n6", "order.n5", "order.n4", "order.n3", "order.n2"]
    doc = parse(first.data)
    pager = doc.find("nav", class_="pagination")
    assert "Showing 1–5 of 7" in pager.text and "page 1 of 2" in pager.text
    nxt = pager.find("a", rel="next")
    assert nxt.attrs["href"] == "/settings/callbacks?page=2"
    assert nxt.attrs["hx-get"] == "/settings/callbacks/table?status=all&sort=newest&page=2"
    second = admin.get(nxt.attrs["hx-get"], headers=HX)
    assert row_names(second.data) == ["order.n1", "order.n0"]
    assert second.headers["HX-Push-Url"] == "/settings/callbacks?page=2"
    # Past the end shows the last page instead of an empty table.
    assert row_names(admin.get(PAGE + "?page=99").data) == ["order.n1", "order.n0"]


@pytest.mark.parametrize(
    ("query", "heading"),
    [
        ("", "No callbacks yet"),
        ("?status=active", "No active callbacks"),
        ("?status=inactive", "No inactive callbacks"),
        ("?q=nothing-like-this", "No callbacks match “nothing-like-this”"),
    ],
)
def test_empty_state_per_tab_and_for_a_search(admin, query, heading):
    r = admin.get(PAGE + query)
    doc = parse(r.data)
    assert doc.by_id("callbacks-table") is None
    assert doc.find("div", class_="empty-state").find("h2").text == heading


def test_empty_search_offers_to_clear_it(admin):
    seed_demo()
    doc = parse(admin.get(PAGE + "?status=active&q=zzz").data)
    empty = doc.find("div", class_="empty-state")
    assert "in Active" in empty.find("h2").text
    clear = empty.find("a")
    assert clear.text == "Clear the search" and clear.attrs["href"] == "/settings/callbacks?status=active"


def test_auto_disabled_callbacks_are_visibly_distinct(admin):
    from cbdash.services import callbacks

    seed_demo()
    cb = make_callback("https://webhook.test/dead", "order.created")
    callbacks.set_active(cb, False, "auto-disabled: failing for 24 h (12 failed attempts)")
    db.session.commit()
    doc = parse(admin.get(PAGE).data)
    row = doc.by_id(f"callback-{cb.id}")
    assert "row-disabled" in row.classes
    assert row.find("span", class_="badge-disabled").text == "Auto-disabled"
    assert "failing for 24 h" in row.find("td", data_label="Status").text
    manual = doc.find("tr", class_="row-inactive")
    assert manual is not None and "row-disabled" not in manual.classes


def test_urls_are_shown_with_credentials_and_query_secrets_masked(admin):
    make_callback("https://user:hunter2@crm.example.com/hook?api_key=SECRET123&region=eu", "customer.created")
    body = admin.get(PAGE).get_data(as_text=True)
    assert "hunter2" not in body and "SECRET123" not in body
    url = parse(body).find("span", class_="url-text")
    assert url.text == url.attrs["title"] == "https://user:••••@crm.example.com/hook?api_key=••••&region=eu"


def test_http_urls_carry_an_https_recommended_badge(admin):
    make_callback("http://plain.example.com/hook")
    make_callback("https://tls.example.com/hook")
    doc = parse(admin.get(PAGE).data)
    badges = doc.find_all("span", class_="badge-warn")
    assert len(badges) == 1 and "HTTPS recommended" in badges[0].attrs["title"]


def test_script_in_names_and_urls_is_escaped(admin):
    evil = Callback(
        definition="<script>alert(1)</script>",
        url="https://example.com/<script>alert(2)</script>?q=\"'><img src=x>",
        timeout=5,
        secret="whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0",
    )
    db.session.add(evil)
    db.session.commit()
    for url in (PAGE, f"{PAGE}/{evil.id}", f"{PAGE}/{evil.id}/delete", f"{PAGE}/{evil.id}/edit"):
        body = admin.get(url).get_data(as_text=True)
        assert "<script>alert" not in body, url
        assert "<img src=x>" not in body, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, url
    body = admin.get(PAGE + "?q=<script>x</script>").get_data(as_text=True)
    assert "<script>x</script>" not in body and "&lt;script&gt;x&lt;/script&gt;" in body


# Row actions ----------------------------------------------------------------------------


def test_toggle_via_htmx_swaps_the_panel_with_new_counts(admin):
    a, _b, _c = seed_demo()
    r = admin.post(
        f"{PAGE}/{a.id}/toggle", data={"status": "active", "sort": "newest", "page": "1"}, headers=HX
    )
    assert r.status_code == 200
    assert r.get_data(as_text=True).lstrip().startswith('<section id="callbacks-panel"')
    assert tab_counts(r.data) == {"all": 3, "active": 1, "inactive": 2}
    # The panel re-renders the tab the user was on: the deactivated row left the Active tab.
    assert row_names(r.data) == ["test_callback_system"]
    assert "redirect_cart_payment deactivated." in r.headers["HX-Trigger"]
    db.session.refresh(a)
    assert a.active is False and a.inactive_reason == "manual"
    assert (
        db.session.scalar(select(AuditEntry.action).order_by(AuditEntry.id.desc())) == "callback.deactivate"
    )


def test_toggle_via_plain_post_redirects_to_the_same_tab_search_and_page(admin):
    _a, _b, c = seed_demo()
    r = admin.post(
        f"{PAGE}/{c.id}/toggle", data={"status": "inactive", "q": "test", "sort": "oldest", "page": "1"}
    )
    assert r.status_code == 303
    assert r.headers["Location"] == "/settings/callbacks?status=inactive&sort=oldest&q=test"
    db.session.refresh(c)
    assert c.active is True
    page = admin.get(r.headers["Location"])
    assert tab_counts(page.data) == {"all": 3, "active": 3, "inactive": 0}
    assert "test_callback_system activated." in page.get_data(as_text=True)


def test_delete_via_htmx_removes_the_row_and_updates_counts(admin):
    a, b, _c = seed_demo()
    r = admin.post(f"{PAGE}/{b.id}/delete", data={"status": "all", "sort": "newest", "page": "1"}, headers=HX)
    assert r.status_code == 200
    assert tab_counts(r.data) == {"all": 2, "active": 1, "inactive": 1}
    assert f'id="callback-{b.id}"' not in r.get_data(as_text=True)
    assert f'id="callback-{a.id}"' in r.get_data(as_text=True)
    assert admin.get(f"{PAGE}/{b.id}").status_code == 404


def _seed_pages(n: int) -> list[Callback]:
    """``n`` callbacks, newest last: with PAGE_SIZE 5 the oldest ones fill page 2."""
    made = []
    for i in range(n):
        cb = make_callback(f"https://webhook.test/{i}", f"order.n{i}")
        cb.created_at = datetime(2025, 1, 1 + i)
        made.append(cb)
    db.session.commit()
    return made


def test_deleting_the_last_row_of_a_page_corrects_the_address_bar(admin):
    made = _seed_pages(7)
    state = {"status": "all", "sort": "newest", "page": "2"}
    # Page 2 keeps a row: the URL stays on page 2.
    r = admin.post(f"{PAGE}/{made[0].id}/delete", data=state, headers=HX)
    assert r.status_code == 200
    assert r.headers["HX-Replace-Url"] == "/settings/callbacks?page=2"
    assert "HX-Push-Url" not in r.headers
    assert row_names(r.data) == ["order.n1"]
    # Its last row goes: the panel shows page 1, and the URL must say page 1, not ?page=2.
    r = admin.post(f"{PAGE}/{made[1].id}/delete", data=state, headers=HX)
    assert row_names(r.data) == ["order.n6", "order.n5", "order.n4", "order.n3", "order.n2"]
    assert r.headers["HX-Replace-Url"] == "/settings/callbacks"
    assert "page 2" not in r.get_data(as_text=True)


def test_deactivating_the_last_row_of_a_tab_page_corrects_the_address_bar(admin):
    made = _seed_pages(6)
    state = {"status": "active", "sort": "newest", "page": "2", "q": "order"}
    r = admin.post(f"{PAGE}/{made[0].id}/toggle", data=state, headers=HX)
    assert r.headers["HX-Replace-Url"] == "/settings/callbacks?status=active&q=order"


def test_plain_delete_of_a_pages_last_row_redirects_to_the_page_shown(admin):
    made = _seed_pages(6)
    r = admin.post(f"{PAGE}/{made[0].id}/delete", data={"status": "all", "sort": "oldest", "page": "2"})
    assert r.status_code == 303
    assert r.headers["Location"] == "/settings/callbacks?sort=oldest"


def test_table_fragment_past_the_end_pushes_the_page_it_shows(admin):
    _seed_pages(7)
    r = admin.get(TABLE + "?page=9", headers=HX)
    assert r.headers["HX-Push-Url"] == "/settings/callbacks?page=2"


def test_delete_without_javascript_confirms_on_a_page_then_returns_to_the_list(admin):
    _a, b, _c = seed_demo()
    # The row's Delete is a GET form to the confirmation page carrying the list state.
    row = parse(admin.get(PAGE + "?status=active&q=test").data).by_id(f"callback-{b.id}")
    form = [f for f in row.find_all("form") if f.attrs.get("method") == "get"][0]
    assert form.attrs["action"] == f"{PAGE}/{b.id}/delete"
    confirm = admin.get(f"{PAGE}/{b.id}/delete?status=active&q=test&sort=newest&page=1")
    assert confirm.status_code == 200
    doc = parse(confirm.data)
    assert doc.find("h1").text == "Delete this callback?"
    post_form = doc.find("form", method="post", action=f"{PAGE}/{b.id}/delete")
    fields = {i.attrs["name"]: i.attrs["value"] for i in post_form.find_all("input")}
    assert fields["status"] == "active" and fields["q"] == "test"
    assert Callback.query.filter_by(id=b.id).one().deleted_at is None  # the GET changed nothing
    r = admin.post(f"{PAGE}/{b.id}/delete", data=fields)
    assert r.status_code == 303
    assert r.headers["Location"] == "/settings/callbacks?status=active&q=test"
    assert tab_counts(admin.get(r.headers["Location"]).data) == {"all": 2, "active": 1, "inactive": 1}


def test_edit_from_the_list_returns_to_the_same_list_view(admin):
    a, _b, _c = seed_demo()
    row = parse(admin.get(PAGE + "?status=active&q=redirect").data).by_id(f"callback-{a.id}")
    edit_href = row.find(
        "a", href=f"{PAGE}/{a.id}/edit?back=/settings/callbacks?status%3Dactive%26q%3Dredirect"
    )
    assert edit_href is not None
    form = parse(admin.get(edit_href.attrs["href"]).data)
    assert form.find("input", name="back").attrs["value"] == "/settings/callbacks?status=active&q=redirect"
    r = admin.post(
        f"{PAGE}/{a.id}/edit",
        data={
            "definition": "redirect_cart_payment",
            "url": "https://webhook.test/999",
            "timeout": "7",
            "active": "active",
            "back": "/settings/callbacks?status=active&q=redirect",
        },
    )
    assert r.status_code == 303 and r.headers["Location"] == "/settings/callbacks?status=active&q=redirect"
    db.session.refresh(a)
    assert (a.url, a.timeout) == ("https://webhook.test/999", 7)


def test_edit_ignores_a_back_url_that_leaves_the_callbacks_page(admin):
    a, _b, _c = seed_demo()
    data = {
        "definition": "redirect_cart_payment",
        "url": "https://webhook.test/1",
        "timeout": "5",
        "active": "active",
    }
    for back in ("https://evil.example/settings/callbacks", "//evil.example", "/settings/callbacksx"):
        r = admin.post(f"{PAGE}/{a.id}/edit", data={**data, "back": back})
        assert r.headers["Location"] == f"{PAGE}/{a.id}", back


def test_actions_on_a_missing_callback_are_404_not_500(admin):
    assert admin.post(f"{PAGE}/999/toggle").status_code == 404
    r = admin.post(f"{PAGE}/999/delete", headers=HX)
    assert r.status_code == 404 and r.headers["HX-Reswap"] == "none"
    assert admin.post(f"{PAGE}/999/ping").status_code == 404


# Test pings -----------------------------------------------------------------------------


def test_ping_shows_sending_then_the_result_and_stops_polling(app, admin, receiver):
    receiver.reply(Reply(200, b'{"ok": true, "note": "<script>alert(1)</script>"}'))
    cb = make_callback(receiver.url(), "order.created")
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    assert r.status_code == 200
    box = parse(r.data).by_id(f"ping-{cb.id}")
    assert "sending…" in box.text
    assert box.attrs["hx-trigger"] == "load delay:700ms"
    poll_url = box.attrs["hx-get"]
    run_worker(app)
    [request] = receiver.wait_for(1)
    assert request.headers["x-cbdash-test"] == "true"
    result = admin.get(poll_url, headers=HX)
    body = result.get_data(as_text=True)
    box = parse(body).by_id(f"ping-{cb.id}")
    assert "ping-ok" in box.classes
    assert box.find("strong", class_="ping-code").text == "200"
    assert box.find("span", class_="ping-latency").text.endswith("ms")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert" not in body
    # Final: nothing left that would poll again.
    assert "hx-get" not in box.attrs and "hx-trigger" not in body


def test_ping_to_a_closed_port_reports_the_connection_failure(app, admin):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cb = make_callback(f"http://127.0.0.1:{port}/hook")
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    run_worker(app)
    result = parse(admin.get(parse(r.data).by_id(f"ping-{cb.id}").attrs["hx-get"], headers=HX).data)
    err = result.find("strong", class_="ping-error")
    assert err.attrs["data-error-class"] == "connect"
    assert err.text == "Connection failed"
    box = result.by_id(f"ping-{cb.id}")
    assert "ping-fail" in box.classes
    detail = box.find("span", class_="ping-detail")
    assert detail.text.startswith("· connection refused")
    assert "failed: connection refused" in detail.attrs["title"]  # the transport's full message


def test_ping_timeout_is_reported_as_timed_out(app, admin, receiver):
    receiver.reply(Reply(200, delay=2.0))
    cb = make_callback(receiver.url(), timeout=1)
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    run_worker(app)
    result = parse(admin.get(parse(r.data).by_id(f"ping-{cb.id}").attrs["hx-get"], headers=HX).data)
    err = result.find("strong", class_="ping-error")
    assert err.attrs["data-error-class"] == "timeout" and err.text == "Timed out"
    assert "no complete answer within 1 s" in result.find("span", class_="ping-detail").text


@pytest.mark.parametrize("app_config", [{"ALLOWED_TARGETS": "127.0.0.1/32,no-such-host.invalid"}])
def test_ping_to_an_unknown_host_is_reported_as_dns(app, admin):
    cb = make_callback("https://no-such-host.invalid/hook")
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    run_worker(app)
    result = parse(admin.get(parse(r.data).by_id(f"ping-{cb.id}").attrs["hx-get"], headers=HX).data)
    err = result.find("strong", class_="ping-error")
    assert err.attrs["data-error-class"] == "dns" and err.text == "DNS lookup failed"


def test_http_error_status_shows_code_and_escaped_excerpt(app, admin, receiver):
    receiver.reply(Reply(500, b"Internal <b>error</b>\x00\xff", {"Content-Type": "text/plain"}))
    cb = make_callback(receiver.url())
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    run_worker(app)
    body = admin.get(parse(r.data).by_id(f"ping-{cb.id}").attrs["hx-get"], headers=HX).get_data(as_text=True)
    box = parse(body).by_id(f"ping-{cb.id}")
    assert box.find("strong", class_="ping-code").text == "500" and "ping-fail" in box.classes
    assert box.find("span", class_="ping-phrase").text == "Internal Server Error"
    assert "Internal &lt;b&gt;error&lt;/b&gt;\\x00\\xff" in body


def test_double_click_sends_one_ping(app, admin, receiver):
    cb = make_callback(receiver.url())
    first = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    second = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    assert delivery_count() == 1
    first_box = parse(first.data).by_id(f"ping-{cb.id}")
    second_box = parse(second.data).by_id(f"ping-{cb.id}")
    assert first_box.attrs["data-delivery"] == second_box.attrs["data-delivery"]
    run_worker(app)
    assert len(receiver.wait_for(1)) == 1
    assert len(receiver.wait_for(2, timeout=0.3)) == 1


def test_ping_without_javascript_redirects_to_the_detail_page_with_the_result(app, admin, receiver):
    cb = make_callback(receiver.url())
    r = admin.post(f"{PAGE}/{cb.id}/ping")
    assert r.status_code == 303
    d = db.session.scalars(select(Delivery)).one()
    assert r.headers["Location"] == f"{PAGE}/{cb.id}?ping={d.id}"
    assert d.kind == "ping"
    run_worker(app)
    page = parse(admin.get(r.headers["Location"]).data)
    assert page.by_id(f"ping-{cb.id}").find("strong", class_="ping-code").text == "200"


def test_ping_polling_gives_up_when_no_worker_answers(admin, receiver):
    cb = make_callback(receiver.url(), timeout=1)
    r = admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    url = parse(r.data).by_id(f"ping-{cb.id}").attrs["hx-get"]
    assert "sending…" in admin.get(url, headers=HX).get_data(as_text=True)
    stale = admin.get(url.replace("n=0", "n=100000"), headers=HX).get_data(as_text=True)
    assert "Still queued" in stale and "hx-trigger" not in stale


def test_ping_result_of_another_callback_is_404(admin, receiver):
    a = make_callback(receiver.url())
    b = make_callback(receiver.url("/b"))
    admin.post(f"{PAGE}/{a.id}/ping", headers=HX)
    d = db.session.scalars(select(Delivery)).one()
    assert admin.get(f"{PAGE}/{b.id}/ping/{d.id}").status_code == 404


# Roles ----------------------------------------------------------------------------------


def _buttons(html: bytes) -> set[str]:
    doc = parse(html)
    panel = doc.by_id("callbacks-panel")
    labels = {b.text for b in panel.find_all("button")} | {a.text for a in panel.find_all("a", class_="btn")}
    labels |= {a.text for a in panel.find_all("a", class_="menu-item")}
    return labels


def test_admin_sees_every_action(admin):
    seed_demo()
    labels = _buttons(admin.get(PAGE).data)
    assert {"Send test ping", "Edit", "Deactivate", "Activate", "Delete…", "+ Add callback"} <= labels


def test_support_sees_only_test_ping_and_gets_403_for_the_rest(client, receiver):
    login(client, "support@example.com", "support")
    cb = make_callback(receiver.url())
    labels = _buttons(client.get(PAGE).data)
    assert "Send test ping" in labels
    assert not labels & {"Edit", "Deactivate", "Activate", "Delete…", "+ Add callback"}
    assert client.post(f"{PAGE}/{cb.id}/ping", headers=HX).status_code == 200
    assert client.post(f"{PAGE}/{cb.id}/toggle").status_code == 403
    assert client.post(f"{PAGE}/{cb.id}/delete").status_code == 403
    assert client.get(f"{PAGE}/{cb.id}/delete").status_code == 403
    assert client.get(f"{PAGE}/{cb.id}/edit").status_code == 403
    assert client.post(f"{PAGE}/{cb.id}/edit", data={"definition": "x.y.z"}).status_code == 403
    assert client.get(f"{PAGE}/new").status_code == 403
    r = client.post(f"{PAGE}/{cb.id}/toggle", headers=HX)
    assert r.status_code == 403 and r.headers["HX-Reswap"] == "none"
    db.session.refresh(cb)
    assert cb.active is True and cb.deleted_at is None


def test_viewer_sees_no_actions_and_cannot_ping(client, receiver):
    login(client, "viewer@example.com", "viewer")
    cb = make_callback(receiver.url())
    r = client.get(PAGE)
    assert r.status_code == 200 and row_names(r.data) == ["order.created"]
    labels = _buttons(r.data)
    assert not labels & {"Send test ping", "Edit", "Deactivate", "Delete…", "+ Add callback"}
    assert client.post(f"{PAGE}/{cb.id}/ping", headers=HX).status_code == 403
    assert delivery_count() == 0
    detail = parse(client.get(f"{PAGE}/{cb.id}").data)
    assert detail.find("button", type="submit") is None or "Send test ping" not in detail.find("main").text


def test_signed_out_htmx_request_gets_a_redirect_header_not_a_login_page(client):
    from tests.conftest import create_user

    create_user()
    r = client.get(
        TABLE + "?status=active", headers={**HX, "HX-Current-URL": "http://localhost/settings/callbacks"}
    )
    assert r.status_code == 401
    assert r.headers["HX-Redirect"].startswith("/login")
    assert b"<form" not in r.data


# Counts read as English ------------------------------------------------------------------


def test_plural_filter_counts_one_and_many():
    from cbdash.formatting import plural

    assert plural(1, "event") == "1 event"
    assert plural(0, "event") == "0 events"
    assert plural(1234, "delivery", "deliveries") == "1,234 deliveries"
    assert plural(1, "match", "matches") == "1 match"


def test_one_callback_is_counted_in_the_singular(admin):
    make_callback("https://webhook.test/1", "order.created")
    doc = parse(admin.get(PAGE + "?status=all").data)
    labels = [a.find("span", class_="tab-count").attrs["aria-label"] for a in doc.find_all("a", class_="tab")]
    assert labels == ["1 callback", "1 callback", "0 callbacks"]
    assert doc.find("div", class_="table-meta").find("span").text == "1 callback"
    meta = parse(admin.get(PAGE + "?q=order").data).find("div", class_="table-meta").find("span").text
    assert meta == "1 match for “order”"


def _auto_disabled_with_missed(app, count: int) -> Callback:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from cbdash.constants import AUTO_DISABLED_PREFIX
    from cbdash.models import utcnow
    from cbdash.services import callbacks as callbacks_service
    from cbdash.services import delivery

    cb = make_callback("https://webhook.test/hook", "order.created")
    callbacks_service.set_active(cb, False, AUTO_DISABLED_PREFIX + "410 Gone")
    cb.disabled_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    for _ in range(count):
        delivery.create_event("order.created", {"n": 1})
    db.session.commit()
    return cb


def test_reenable_page_says_one_event_not_one_events(app, admin):
    cb = _auto_disabled_with_missed(app, 1)
    r = admin.get(f"{PAGE}/{cb.id}/reenable")
    assert r.status_code == 200
    doc = parse(r.data)
    assert doc.by_id("missed-count").text == "1"
    missed = doc.find("dl", class_="facts").find_all("dd")[-1].text
    assert "1 event of order.created since then" in " ".join(missed.split())
    body = r.get_data(as_text=True)
    assert "Re-enable and replay 1 missed event<" in body
    assert "1 events" not in body and "1 missed events" not in body
    r = admin.post(f"{PAGE}/{cb.id}/reenable", data={"replay": "1"}, follow_redirects=True)
    body = r.get_data(as_text=True)
    assert "Replaying 1 missed event," in body and "1 missed events" not in body


def test_reenable_page_counts_several_events_in_the_plural(app, admin):
    cb = _auto_disabled_with_missed(app, 2)
    r = admin.get(f"{PAGE}/{cb.id}/reenable")
    missed = parse(r.data).find("dl", class_="facts").find_all("dd")[-1].text
    assert "2 events of order.created since then" in " ".join(missed.split())
    assert "Re-enable and replay 2 missed events<" in r.get_data(as_text=True)


# Detail page ----------------------------------------------------------------------------


def test_detail_page_shows_configuration_and_recent_deliveries(app, admin, receiver):
    cb = make_callback(receiver.url(), "order.created", description="Sends orders to the ERP")
    admin.post(f"{PAGE}/{cb.id}/ping", headers=HX)
    run_worker(app)
    r = admin.get(f"{PAGE}/{cb.id}")
    doc = parse(r.data)
    dl = doc.find("dl", class_="facts")
    facts = dict(
        zip([dt.text for dt in dl.find_all("dt")], [dd.text for dd in dl.find_all("dd")], strict=True)
    )
    assert facts["Timeout"] == "5 seconds"
    assert facts["Description"] == "Sends orders to the ERP"
    assert facts["Created At"].endswith("(UTC)")
    assert facts["Retry schedule"].startswith("8 attempts: first at once, then after 5 s, 5 min, 30 min")
    assert "→ 200" in facts["Health"]
    assert cb.secret not in r.get_data(as_text=True)
    assert "HTTPS recommended." in doc.find("p", class_="warn-note").text
    rows = doc.find_all("td", data_label="Kind")
    assert [td.text for td in rows] == ["ping"]
    assert doc.find("td", data_label="Status").text == "succeeded"
