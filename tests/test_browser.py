"""The Callbacks page in headless Chromium against a real server: tabs, history, pings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from cbdash.extensions import db
from cbdash.models import Delivery
from tests.conftest import create_user, make_callback, run_worker

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def app_config() -> dict:
    # The browser goes through CSRF like a real user: htmx must send the token header.
    return {"WTF_CSRF_ENABLED": True}


@pytest.fixture
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def browser() -> Iterator:  # type: ignore[type-arg]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def seed(receiver_url: str):  # type: ignore[no-untyped-def]
    a = make_callback("https://webhook.test/123", "redirect_cart_payment")
    b = make_callback("https://webhook.test/131", "test_callback_system")
    c = make_callback("https://webhook.test/123", "test_callback_system", active=False)
    live = make_callback(receiver_url, "order.created")
    a.created_at = datetime(2025, 6, 19, 12, 48)
    b.created_at = datetime(2025, 5, 28, 10, 18)
    c.created_at = datetime(2025, 5, 28, 10, 17)
    db.session.commit()
    return live


def sign_in(page, base: str) -> None:  # type: ignore[no-untyped-def]
    create_user("admin@example.com", "admin", "password-123")
    page.goto(base + "/settings/callbacks")
    page.fill("#email", "admin@example.com")
    page.fill("#password", "password-123")
    page.click("form button[type=submit]")
    page.wait_for_url(base + "/settings/callbacks")


def counts(page) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        t.inner_text().split()[0]: t.locator(".tab-count").inner_text()
        for t in page.locator("#callbacks-panel a.tab").all()
    }


def names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator("#callbacks-table a.def-name").all_inner_texts()


def test_tabs_history_and_test_ping_in_a_real_browser(app, live_server, browser, receiver):
    from playwright.sync_api import expect

    live = seed(receiver.url())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    fragment_requests: list[dict] = []
    page.on(
        "request",
        lambda r: fragment_requests.append({"url": r.url, **r.headers}) if "/table" in r.url else None,
    )
    sign_in(page, live_server)
    assert counts(page) == {"All": "4", "Active": "3", "Inactive": "1"}

    # Mark the document and the old panel: a tab switch must keep the first, replace the second.
    page.evaluate(
        "window.__sameDocument = true; document.getElementById('callbacks-panel').dataset.old = '1'"
    )
    page.click("a.tab:has-text('Inactive')")
    page.wait_for_url(live_server + "/settings/callbacks?status=inactive")
    page.wait_for_selector("#callbacks-panel a.tab[aria-current=page]:has-text('Inactive')")
    assert page.evaluate("window.__sameDocument === true")
    assert page.evaluate("document.getElementById('callbacks-panel').dataset.old === undefined")
    assert names(page) == ["test_callback_system"]
    assert page.locator("h1").inner_text() == "Callbacks"
    assert [r["url"] for r in fragment_requests] == [
        live_server + "/settings/callbacks/table?status=inactive&sort=newest&page=1"
    ]
    assert fragment_requests[0].get("hx-request") == "true"

    # Back: the All tab again, as a full page with every row.
    page.go_back()
    page.wait_for_url(live_server + "/settings/callbacks")
    page.wait_for_selector("#callbacks-panel a.tab[aria-current=page]:has-text('All')")
    assert len(names(page)) == 4
    assert page.locator("nav.sidebar").count() == 1 and page.locator("h1").inner_text() == "Callbacks"

    # A bookmark and a reload of ?status=inactive each give the full page on that tab.
    page.goto(live_server + "/settings/callbacks?status=inactive")
    page.reload()
    assert page.locator("nav.sidebar").count() == 1
    assert page.locator("a.tab[aria-current=page]").inner_text().startswith("Inactive")
    assert names(page) == ["test_callback_system"]

    # Test ping: a double-click sends one ping; the row shows "sending…", then the answer.
    page.goto(live_server + "/settings/callbacks")
    row = page.locator(f"#callback-{live.id}")
    row.locator("button:has-text('Send test ping')").dblclick()
    box = page.locator(f"#ping-{live.id}")
    page.locator(f"#ping-{live.id}.ping-sending").wait_for()
    assert "sending…" in box.inner_text()
    # The server's own "sending…" fragment (it names the delivery) arrives after the job is
    # queued; app.js showed the placeholder at the click, before that.
    page.locator(f"#ping-{live.id}.ping-sending[data-delivery]").wait_for()
    run_worker(app)
    page.locator(f"#ping-{live.id}.ping-ok").wait_for(timeout=10_000)
    result = box.inner_text()
    assert "200" in result and "OK" in result and "ms" in result and '"ok": true' in result
    # It sits in the row right under its callback.
    assert page.locator(f"#callback-{live.id} + tr.ping-row #ping-{live.id}").count() == 1
    time.sleep(1.0)  # a second click, had one slipped through, would have queued by now
    run_worker(app)
    assert len(receiver.requests) == 1
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 1
    # Polling stopped: the result is final and nothing is asking for it any more.
    polls = "performance.getEntriesByType('resource').filter(e => e.name.includes('/ping/')).length"
    polls_before = page.evaluate(polls)
    time.sleep(1.6)  # two polling intervals
    assert page.evaluate(polls) == polls_before

    # Two racing posts (what a double-click without JavaScript's button lock would send)
    # still make one ping: the server-side guard.
    other = page.locator("a.def-name:has-text('redirect_cart_payment')").get_attribute("href")
    statuses = page.evaluate(
        """async (url) => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const headers = {'HX-Request': 'true', 'X-CSRFToken': token};
            const post = () => fetch(url, {method: 'POST', headers});
            const answers = await Promise.all([post(), post()]);
            return answers.map(a => a.status);
        }""",
        other + "/ping",
    )
    assert statuses == [200, 200]
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 2

    # Deactivate from the row menu: the table and the counts update in place (with CSRF).
    page.evaluate("window.__sameDocument = true")
    row.locator("summary").click()
    row.locator("button:has-text('Deactivate')").click()
    expect(page.locator("a.tab .tab-count").nth(1)).to_have_text("2")
    assert counts(page) == {"All": "4", "Active": "2", "Inactive": "2"}
    assert page.evaluate("window.__sameDocument === true")

    # Delete, confirmed in the browser dialog.
    page.once("dialog", lambda d: d.accept())
    row = page.locator(f"#callback-{live.id}")
    row.locator("summary").click()
    row.locator("button:has-text('Delete')").click()
    expect(page.locator("a.tab .tab-count").first).to_have_text("3")
    assert page.locator(f"#callback-{live.id}").count() == 0
    assert problems == []


def test_tabs_work_with_javascript_off(live_server, browser):
    seed("https://webhook.test/live")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live_server)
    page.click("a.tab:has-text('Inactive')")
    page.wait_for_url(live_server + "/settings/callbacks?status=inactive")
    assert page.locator("a.tab[aria-current=page]").inner_text().startswith("Inactive")
    assert names(page) == ["test_callback_system"]
    # The row menu and the no-JS delete confirmation page work too.
    page.locator("#callbacks-table summary").first.click()
    page.locator("#callbacks-table button:has-text('Delete')").first.click()
    page.wait_for_selector("h1:has-text('Delete this callback?')")
    page.click("button:has-text('Delete callback')")
    page.wait_for_url(live_server + "/settings/callbacks?status=inactive")
    assert page.locator("div.empty-state h2").inner_text() == "No inactive callbacks"
    context.close()


def _console_errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def test_failed_test_ping_takes_the_row_out_of_sending(app, live_server, browser, receiver):
    from playwright.sync_api import expect

    live = seed(receiver.url())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, live_server)
    box = page.locator(f"#ping-{live.id}")
    button = page.locator(f"#callback-{live.id} button:has-text('Send test ping')")

    # A stale CSRF token: the server refuses the post with 400 and explains it in HX-Trigger.
    stale = "Your session has changed or the page is stale. Reload the page and try again."
    page.route(
        "**/ping",
        lambda route: route.fulfill(
            status=400,
            headers={"HX-Reswap": "none", "HX-Trigger": '{"cbdash:error": "' + stale + '"}'},
            body=stale,
        ),
    )
    button.click()
    expect(box).to_have_class("ping-result ping-fail")
    expect(box).to_contain_text("Not sent")
    expect(box).to_contain_text(stale)
    assert "sending" not in box.inner_text()
    expect(page.locator("#toasts .toast-error")).to_contain_text(stale)
    expect(button).to_be_enabled()  # and the user can try again

    # The network is cut: same, with the connection named as the cause.
    page.unroute("**/ping")
    page.route("**/ping", lambda route: route.abort("connectionrefused"))
    button.click()
    expect(box).to_contain_text("cannot reach the server")
    expect(box).to_have_class("ping-result ping-fail")
    assert page.locator(".ping-sending").count() == 0

    # The ping goes out but asking for its result fails: the row stops polling and offers a retry.
    page.unroute("**/ping")

    def polls(url: str) -> bool:
        return "/ping/" in url

    page.route(polls, lambda route: route.abort("connectionrefused"))
    button.click()
    expect(box).to_contain_text("Result unavailable")
    assert page.locator(".ping-sending").count() == 0
    page.unroute(polls)
    run_worker(app)
    box.locator("button:has-text('Check again')").click()
    page.locator(f"#ping-{live.id}.ping-ok").wait_for(timeout=10_000)
    assert "200" in box.inner_text()


def test_deleting_the_last_rows_of_page_two_puts_page_one_in_the_address_bar(live_server, browser):
    from playwright.sync_api import expect

    for i in range(30):
        cb = make_callback(f"https://webhook.test/{i}", f"order.n{i:02d}")
        cb.created_at = datetime(2025, 1, 1 + i)
    db.session.commit()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _console_errors(page)
    sign_in(page, live_server)
    page.goto(live_server + "/settings/callbacks?page=2")
    assert names(page) == [f"order.n{i:02d}" for i in range(4, -1, -1)]
    page.on("dialog", lambda d: d.accept())
    for left in range(5, 0, -1):
        row = page.locator("#callbacks-table tr.cb-row").first
        row.locator("summary").click()
        row.locator("button:has-text('Delete')").click()
        expect(page.locator("a.tab .tab-count").first).to_have_text(str(25 + left - 1))
        if left > 1:
            assert page.url == live_server + "/settings/callbacks?page=2"
    # Page 2 is gone: the table shows page 1 and the address bar says so.
    expect(page.locator("#callbacks-table tr.cb-row")).to_have_count(25)
    assert page.url == live_server + "/settings/callbacks"
    # Reload shows the same rows.
    shown = names(page)
    page.reload()
    assert names(page) == shown
    assert problems == []


def test_enter_in_the_search_box_sends_one_request(live_server, browser):
    from playwright.sync_api import expect

    seed("https://webhook.test/live")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _console_errors(page)
    sign_in(page, live_server)
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if "/table" in r.url else None)
    box = page.locator("#callback-search")
    box.fill("131")
    box.press("Enter")
    page.wait_for_url(live_server + "/settings/callbacks?q=131")
    expect(page.locator("#callbacks-table a.def-name")).to_have_count(1)
    time.sleep(0.8)  # past the type-ahead delay: a second request would have gone by now
    assert searches == [live_server + "/settings/callbacks/table?q=131"]
    # Enter again on the same text: one more request, still nothing aborted.
    box.press("Enter")
    deadline = time.monotonic() + 5
    while len(searches) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    time.sleep(0.6)
    assert len(searches) == 2
    assert problems == []
