"""Headless Chromium: a session that expires under an open page, during an htmx action."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from cbdash.extensions import db
from cbdash.models import Callback
from tests.conftest import create_user, make_callback

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def app_config() -> dict:
    return {"WTF_CSRF_ENABLED": True}


@pytest.fixture
def live_url(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def page():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context()
        tab = context.new_page()
        tab.set_default_timeout(10_000)
        yield tab
        context.close()
        browser.close()


def _sign_in(page) -> None:  # type: ignore[no-untyped-def]
    page.fill("#email", "admin@example.com")
    page.fill("#password", "password-123")
    page.click("button[type=submit]")


def _active(cb_id: int) -> bool:
    db.session.expire_all()
    return db.session.get(Callback, cb_id).active


def test_session_expiry_during_an_htmx_action_goes_to_login_and_back(app, live_url, page) -> None:  # type: ignore[no-untyped-def]
    create_user()
    cb = make_callback("https://hooks.example.com/orders", "order.created")
    csp_errors: list[str] = []
    page.on("console", lambda msg: "Content Security Policy" in msg.text and csp_errors.append(msg.text))

    page.goto(f"{live_url}/settings/callbacks?status=active")
    assert "/login" in page.url
    _sign_in(page)
    page.wait_for_url(f"{live_url}/settings/callbacks?status=active")
    page.wait_for_selector(f"#callback-{cb.id}")

    # The session expires (or is signed out in another tab) while the page stays open.
    page.context.clear_cookies()
    page.click(f"#callback-{cb.id} summary")
    page.click(f"#callback-{cb.id} button:has-text('Deactivate')")

    # htmx follows HX-Redirect: a full login page, not a login form inside the table.
    page.wait_for_url(re.compile(r".*/login\?next="))
    assert page.url == f"{live_url}/login?next=/settings/callbacks?status%3Dactive"
    page.wait_for_selector("h1:has-text('Sign in')")
    assert page.locator("#callbacks-panel").count() == 0
    assert page.locator("form input[name=password]").count() == 1
    assert page.evaluate("document.querySelectorAll('html, body').length") == 2
    assert _active(cb.id) is True  # the refused action did nothing

    # Signing in again returns to the page the user was on, and the action now works.
    _sign_in(page)
    page.wait_for_url(f"{live_url}/settings/callbacks?status=active")
    page.click(f"#callback-{cb.id} summary")
    page.click(f"#callback-{cb.id} button:has-text('Deactivate')")
    # Locator waits, not wait_for_function: a string predicate is eval, which our CSP refuses.
    page.locator(f"#callbacks-panel #callback-{cb.id}").wait_for(state="detached")
    assert page.url == f"{live_url}/settings/callbacks?status=active"
    assert _active(cb.id) is False
    assert csp_errors == []
