"""CSRF with htmx and plain forms, expired sessions, and the bearer-only API."""

from __future__ import annotations

import json
import re
import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import Callback
from tests.conftest import create_user, make_callback

PAGE = "http://localhost/settings/callbacks?status=active"


@pytest.fixture
def app_config() -> dict:
    return {"WTF_CSRF_ENABLED": True}


def _token(client, path: str = "/settings/callbacks") -> str:  # type: ignore[no-untyped-def]
    """The token htmx sends: the one in <body hx-headers>."""
    page = client.get(path).get_data(as_text=True)
    match = re.search(r"hx-headers='(\{[^']*\})'", page)
    assert match, "no hx-headers on <body>"
    return json.loads(match.group(1))["X-CSRFToken"]


def _sign_in(client, email: str = "admin@example.com") -> None:  # type: ignore[no-untyped-def]
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"email": email, "password": "password-123", "csrf_token": token})
    assert response.status_code == 302, response.data[:300]


@pytest.fixture
def signed_in(app, client):  # type: ignore[no-untyped-def]
    create_user()
    _sign_in(client)
    return client


def _htmx(token: str | None = None) -> dict[str, str]:
    headers = {"HX-Request": "true", "HX-Current-URL": PAGE, "HX-Target": "callbacks-panel"}
    if token is not None:
        headers["X-CSRFToken"] = token
    return headers


def _active(cb_id: int) -> bool:
    db.session.expire_all()
    return db.session.get(Callback, cb_id).active


def test_login_form_needs_its_token(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    response = client.post("/login", data={"email": "admin@example.com", "password": "password-123"})
    assert response.status_code == 303 and response.location.startswith("/login")
    assert client.get("/settings/callbacks").status_code == 302  # not signed in
    follow = client.get(response.location).get_data(as_text=True)
    assert "The sign-in form had expired. Please try again." in follow


def test_htmx_action_with_the_header_token_passes(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    token = _token(signed_in)
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx(token))
    assert response.status_code == 200
    assert 'id="callbacks-panel"' in response.get_data(as_text=True)
    assert _active(cb.id) is False


def test_htmx_action_without_a_token_is_refused_with_a_message(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx())
    assert response.status_code == 400
    assert response.headers["HX-Reswap"] == "none"  # nothing lands in the table
    message = json.loads(response.headers["HX-Trigger"])["cbdash:error"]
    assert "refused" in message and "CSRF token" in message
    assert _active(cb.id) is True


def test_htmx_action_with_a_forged_token_is_refused(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx("forged.token.value"))
    assert response.status_code == 400
    assert "Reload the page" in json.loads(response.headers["HX-Trigger"])["cbdash:error"]
    assert _active(cb.id) is True


def test_plain_form_with_token_passes_and_without_is_refused(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    refused = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", data={})
    assert refused.status_code == 400
    assert "carried no CSRF token" in refused.get_data(as_text=True)
    assert "<html" in refused.get_data(as_text=True)  # a full page explains it
    assert _active(cb.id) is True
    ok = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", data={"csrf_token": _token(signed_in)})
    assert ok.status_code == 303
    assert _active(cb.id) is False


def test_every_browser_post_is_checked(app, signed_in) -> None:  # type: ignore[no-untyped-def]
    # Any POST route outside the bearer API and the inbound hooks must refuse a missing token.
    exempt_prefixes = ("/api/", "/hooks/")
    cb = make_callback("https://hooks.example.com/a")
    checked = 0
    for rule in app.url_map.iter_rules():
        if "POST" not in (rule.methods or ()) or rule.rule.startswith(exempt_prefixes):
            continue
        values = {arg: (cb.id if "id" in arg else "x") for arg in rule.arguments}
        try:
            path = rule.build(values, append_unknown=False)[1]
        except Exception:  # noqa: BLE001 - converters we cannot fill are skipped
            continue
        if path in ("/login", "/setup"):
            continue
        response = signed_in.post(path, data={})
        assert response.status_code == 400, (rule.rule, response.status_code)
        checked += 1
    assert checked >= 8


def test_expired_session_during_htmx_action_redirects_to_login_and_back(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    token = _token(signed_in)
    signed_in.delete_cookie("session")  # the session expired or was cleared in another tab
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx(token))
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=/settings/callbacks?status%3Dactive"
    assert b"<html" not in response.data and b"<tr" not in response.data
    assert _active(cb.id) is True
    # After signing in again, the user lands back on the page they were on.
    page = signed_in.get(response.headers["HX-Redirect"]).get_data(as_text=True)
    login_token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    back = signed_in.post(
        response.headers["HX-Redirect"],
        data={"email": "admin@example.com", "password": "password-123", "csrf_token": login_token},
    )
    assert back.location == "/settings/callbacks?status=active"


def test_signed_out_in_another_tab_gives_the_same_redirect(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    token = _token(signed_in)
    assert signed_in.post("/logout", data={"csrf_token": token}).status_code == 303
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx(token))
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login?next=/settings/callbacks")
    assert _active(cb.id) is True


def test_expired_session_on_a_plain_form_goes_to_login_with_a_message(signed_in) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/a")
    token = _token(signed_in, f"/settings/callbacks/{cb.id}")
    signed_in.delete_cookie("session")
    response = signed_in.post(
        f"/settings/callbacks/{cb.id}/toggle",
        data={"csrf_token": token},
        headers={"Referer": f"http://localhost/settings/callbacks/{cb.id}"},
    )
    assert response.status_code == 303
    assert response.location == f"/login?next=/settings/callbacks/{cb.id}"
    assert "Your session has expired" in signed_in.get(response.location).get_data(as_text=True)
    assert _active(cb.id) is True


def test_token_does_not_expire_under_a_page_left_open(app, signed_in, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert app.config["WTF_CSRF_TIME_LIMIT"] is None
    cb = make_callback("https://hooks.example.com/a")
    _token(signed_in)  # the page puts the raw token in the session
    with signed_in.session_transaction() as session:
        raw = session["csrf_token"]
    # The same token as signed ten hours ago, by a monitoring page open since the morning.
    serializer = URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token")
    with monkeypatch.context() as m:
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 36000)
        old_token = serializer.dumps(raw)
    response = signed_in.post(f"/settings/callbacks/{cb.id}/toggle", headers=_htmx(old_token))
    assert response.status_code == 200
    assert _active(cb.id) is False


def test_api_ignores_the_browser_session(signed_in) -> None:  # type: ignore[no-untyped-def]
    token = _token(signed_in)
    for method, path, body in (
        ("get", "/api/v1/callbacks", None),
        ("post", "/api/v1/callbacks", {"definition": "order.created", "url": "https://hooks.example.com/x"}),
        ("post", "/api/v1/events", {"definition": "order.created", "payload": {}}),
    ):
        response = getattr(signed_in, method)(path, json=body, headers={"X-CSRFToken": token})
        assert response.status_code == 401, path
        assert response.get_json()["error"]["code"] == "unauthorized"
    assert db.session.scalar(select(Callback)) is None


def test_bearer_api_calls_need_no_csrf_token(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    body = {"definition": "order.created", "url": "https://hooks.example.com/x"}
    response = client.post("/api/v1/callbacks", json=body, headers=auth)
    assert response.status_code == 201
