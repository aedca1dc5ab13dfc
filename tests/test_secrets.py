"""Secrets: masked everywhere; reveal and rotate are admin-only and audit-logged; URLs and
request headers are masked wherever they are shown."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, utcnow
from tests.conftest import login, make_callback, run_worker

HTMX = {"HX-Request": "true", "HX-Target": "secret-1"}


def _audit(action: str) -> list[AuditEntry]:
    return list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


@pytest.mark.parametrize("role", ["admin", "support", "viewer"])
def test_secret_is_masked_on_every_page_and_in_the_api(app, client, auth, role: str) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    login(client, f"{role}@example.com", role)
    for path in (
        "/settings/callbacks",
        f"/settings/callbacks/{cb.id}",
        f"/settings/callbacks/{cb.id}/secret",
    ):
        page = client.get(path).get_data(as_text=True)
        assert cb.secret not in page, path
        assert cb.secret[6:20] not in page, path
    assert "whsec_••••••••" + cb.secret[-4:] in client.get(f"/settings/callbacks/{cb.id}").get_data(
        as_text=True
    )
    api = client.application.test_client()
    assert cb.secret not in api.get(f"/api/v1/callbacks/{cb.id}", headers=auth).get_data(as_text=True)
    assert cb.secret not in api.get("/api/v1/callbacks", headers=auth).get_data(as_text=True)


def test_admin_reveals_the_secret_with_htmx_and_it_is_recorded(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    login(client)
    response = client.post(f"/settings/callbacks/{cb.id}/secret/reveal", headers=HTMX)
    assert response.status_code == 200
    fragment = response.get_data(as_text=True)
    assert fragment.lstrip().startswith(f'<div id="secret-{cb.id}"')  # just the row, for the swap
    assert cb.secret in fragment
    assert response.headers["Cache-Control"] == "no-store"
    [entry] = _audit("callback.reveal_secret")
    assert (entry.actor, entry.target_id) == ("admin@example.com", str(cb.id))
    assert cb.secret not in str(entry.detail)
    # "Hide" swaps the masked row back in.
    hidden = client.get(f"/settings/callbacks/{cb.id}/secret", headers=HTMX).get_data(as_text=True)
    assert cb.secret not in hidden and "whsec_••••" in hidden


def test_reveal_without_javascript_shows_a_page(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    login(client)
    response = client.post(f"/settings/callbacks/{cb.id}/secret/reveal")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<html" in page and cb.secret in page and "Back to the callback" in page


def test_reveal_is_a_post_only(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    login(client)
    assert client.get(f"/settings/callbacks/{cb.id}/secret/reveal").status_code == 405
    assert _audit("callback.reveal_secret") == []


@pytest.mark.parametrize("role", ["support", "viewer"])
def test_other_roles_cannot_reveal_or_rotate(app, client, role: str) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    secret = cb.secret
    login(client, f"{role}@example.com", role)
    page = client.get(f"/settings/callbacks/{cb.id}").get_data(as_text=True)
    assert "Reveal" not in page and "Rotate" not in page
    for action in ("reveal", "rotate"):
        response = client.post(f"/settings/callbacks/{cb.id}/secret/{action}", headers=HTMX)
        assert response.status_code == 403
        assert secret not in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Callback, cb.id).secret == secret
    assert _audit("callback.reveal_secret") == [] and _audit("callback.rotate_secret") == []


def test_rotation_keeps_the_old_secret_signing_for_the_overlap(app, client, receiver) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback(receiver.url())
    old = cb.secret
    login(client)
    response = client.post(f"/settings/callbacks/{cb.id}/secret/rotate", headers=HTMX)
    assert response.status_code == 200
    db.session.expire_all()
    cb = db.session.get(Callback, cb.id)
    assert cb.secret != old and cb.previous_secret == old
    shown = response.get_data(as_text=True)
    assert cb.secret in shown  # the new one is shown to give to the receiver
    assert "New secret created. Give it to the receiver now." in shown and ">Hide</a>" in shown
    assert shown.index(cb.secret) < shown.index("New secret created") < shown.index(">Hide</a>")
    overlap = cb.previous_secret_expires_at - utcnow()
    assert timedelta(hours=23, minutes=59) < overlap <= timedelta(hours=24)
    [entry] = _audit("callback.rotate_secret")
    assert old not in str(entry.detail) and cb.secret not in str(entry.detail)
    # A delivery now carries two signatures; a receiver with either secret verifies it.
    client.post(f"/settings/callbacks/{cb.id}/ping")
    run_worker(app)
    [request] = receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, cb.secret):
        Webhook(secret).verify(request.body, request.headers)


def test_rotate_without_javascript_shows_the_new_secret_on_a_page(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    login(client)
    response = client.post(f"/settings/callbacks/{cb.id}/secret/rotate")
    db.session.expire_all()
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" in page
    assert db.session.get(Callback, cb.id).secret in page
    assert "previous secret keeps signing" in page


def test_reveal_of_a_deleted_callback_is_404(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    cb.deleted_at = utcnow()
    db.session.commit()
    login(client)
    assert client.post(f"/settings/callbacks/{cb.id}/secret/reveal").status_code == 404
    assert client.post("/settings/callbacks/999999/secret/rotate").status_code == 404


SECRET_URL = "http://ops:hunter2pass@127.0.0.1:{port}/hook?token=tok-sekrit-1&plain=visible"


def test_url_credentials_and_query_tokens_are_masked_everywhere(app, client, auth, receiver) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback(SECRET_URL.format(port=receiver.port))
    login(client)
    client.post(f"/settings/callbacks/{cb.id}/ping")
    run_worker(app)
    assert receiver.wait_for(1)
    delivery_id = (
        client.application.test_client().get("/api/v1/deliveries", headers=auth).get_json()["data"][0]["id"]
    )
    pages = {
        path: client.get(path).get_data(as_text=True)
        for path in (
            "/settings/callbacks",
            "/settings/callbacks?q=127.0.0.1",
            f"/settings/callbacks/{cb.id}",
            "/settings/callbacks/deliveries",
            f"/settings/callbacks/deliveries/{delivery_id}",
            f"/settings/callbacks/{cb.id}/delete",
            "/settings/audit",
        )
    }
    for path, page in pages.items():
        assert "hunter2pass" not in page, path
        assert "tok-sekrit-1" not in page, path
    assert "visible" in pages[f"/settings/callbacks/{cb.id}"]  # only the secret parts are masked
    api = client.application.test_client()
    shown = api.get(f"/api/v1/deliveries/{delivery_id}", headers=auth).get_json()
    assert "hunter2pass" not in str(shown["attempts"])


def test_request_headers_in_the_delivery_log_are_redacted(app, client, receiver) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback(
        receiver.url(),
        headers={"Authorization": "Bearer hdr-sekrit-1", "X-Api-Key": "hdr-sekrit-2", "X-Shop": "shop-42"},
    )
    login(client)
    client.post(f"/settings/callbacks/{cb.id}/ping")
    run_worker(app)
    [request] = receiver.wait_for(1)
    assert request.headers["authorization"] == "Bearer hdr-sekrit-1"  # sent for real
    from cbdash.models import Delivery

    d = db.session.scalar(select(Delivery))
    page = client.get(f"/settings/callbacks/deliveries/{d.id}").get_data(as_text=True)
    assert "hdr-sekrit-1" not in page and "hdr-sekrit-2" not in page
    assert request.headers["webhook-signature"].split(",", 1)[1][:20] not in page
    assert "shop-42" in page  # ordinary headers stay readable
    detail = client.get(f"/settings/callbacks/{cb.id}").get_data(as_text=True)
    assert "hdr-sekrit" not in detail
