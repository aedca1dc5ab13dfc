"""Regressions from attacking a running instance: each of these once produced a 500 or a leak."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import Event
from tests.conftest import login, make_callback

HUGE = "99999999999999999999999"


def test_huge_ids_in_routes_are_404_not_500(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    login(client)
    for method, path in (
        ("GET", f"/settings/callbacks/{HUGE}"),
        ("GET", f"/settings/callbacks/{HUGE}/edit"),
        ("GET", f"/settings/callbacks/{HUGE}/secret"),
        ("GET", f"/settings/callbacks/deliveries/{HUGE}"),
        ("POST", f"/settings/callbacks/{HUGE}/toggle"),
        ("POST", f"/settings/callbacks/{HUGE}/secret/reveal"),
        ("POST", f"/settings/users/{HUGE}/role"),
        ("POST", f"/settings/tokens/{HUGE}/revoke"),
        ("POST", f"/settings/callbacks/deliveries/{HUGE}/redeliver"),
    ):
        assert client.open(path, method=method).status_code == 404, path
    api = app.test_client()
    for method, path in (
        ("GET", f"/api/v1/callbacks/{HUGE}"),
        ("PATCH", f"/api/v1/callbacks/{HUGE}"),
        ("GET", f"/api/v1/deliveries/{HUGE}"),
        ("POST", f"/api/v1/callbacks/{HUGE}/ping"),
        ("POST", f"/api/v1/deliveries/{HUGE}/redeliver"),
    ):
        response = api.open(path, method=method, headers=auth, json={"timeout": 3})
        assert response.status_code in (404, 405), path  # JSON either way, never a login redirect
        assert response.get_json()["error"]["code"] in ("not_found", "method_not_allowed"), path


def test_huge_numbers_in_query_strings_are_400_not_500(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    for path in (f"/api/v1/deliveries?callback_id={HUGE}", f"/api/v1/deliveries?before_id={HUGE}"):
        response = client.get(path, headers=auth)
        assert response.status_code in (200, 400), path
        assert "error" not in response.get_json() or response.get_json()["error"]["code"] != "internal_error"
    login(client)
    for path in (
        f"/settings/callbacks/deliveries?callback_id={HUGE}",
        f"/settings/callbacks?page={HUGE}",
        f"/settings/audit?page={HUGE}",
    ):
        assert client.get(path).status_code in (200, 400), path


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100000 + b"]" * 100000,
        b'{"definition": "order.created", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"definition": "order.created", "payload": NaN}',
        b'{"definition": "order.created", "payload": -Infinity}',
        b'{"definition": "order.created", "payload": 1e400}',
        b'{"definition": "order.created", "payload": "\\ud800"}',
    ],
)
def test_json_that_cannot_be_sent_on_is_refused(app, client, auth, body: bytes) -> None:  # type: ignore[no-untyped-def]
    make_callback("https://hooks.example.com/x")
    response = client.post("/api/v1/events", data=body, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert db.session.scalar(select(func.count()).select_from(Event)) == 0


def test_search_cannot_probe_url_credentials(app, client) -> None:  # type: ignore[no-untyped-def]
    make_callback("https://shop:s3cretpass@hooks.example.com/in?token=tok123&region=eu")
    make_callback("https://plain.example.com/hooks")
    login(client, "viewer@example.com", "viewer")

    def hits(q: str) -> int:
        page = client.get("/settings/callbacks", query_string={"q": q}).get_data(as_text=True)
        return page.count('<tr id="callback-')

    assert hits("s3cret") == 0 and hits("s3") == 0 and hits("tok123") == 0  # no oracle
    assert hits("hooks.example.com") == 1 and hits("region=eu") == 1 and hits("plain") == 1
    assert hits("shop") == 1  # the user name stays visible and searchable


def test_invisible_characters_in_urls_are_refused(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    for url in (
        "https://hooks.example.com/\u202egnp.exe",
        "https://hooks.example.com/\u200b",
        "https://a\u00a0b.example/",
    ):
        body = {"definition": "order.created", "url": url}
        response = client.post("/api/v1/callbacks", json=body, headers=auth)
        assert response.status_code == 400, url


def test_oversized_form_posts_get_413(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    response = client.post(
        "/settings/callbacks/new",
        data=b"definition=" + b"a" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert b"<html" in response.data
