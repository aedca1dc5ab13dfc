"""API tokens: the admin page (shown once, revoke, last used), the CLI, and bad tokens."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import ApiToken, AuditEntry
from cbdash.services import tokens
from tests.conftest import login

UNAUTHORIZED = {
    "error": {
        "code": "unauthorized",
        "message": "A valid API token is required (Authorization: Bearer <token>).",
        "fields": {},
    }
}


def _create_on_page(client, name: str = "storefront", role: str = "admin") -> str:  # type: ignore[no-untyped-def]
    response = client.post("/settings/tokens", data={"name": name, "role": role})
    assert response.status_code == 201
    match = re.search(r'<code class="mono secret-value">(cbd_[^<]+)</code>', response.get_data(as_text=True))
    assert match, "the new token is shown"
    return match.group(1)


def test_token_is_shown_once_and_stored_hashed(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    plaintext = _create_on_page(client)
    row = db.session.scalar(select(ApiToken))
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in (row.prefix, row.name) and len(row.prefix) < len(plaintext) / 3
    again = client.get("/settings/tokens").get_data(as_text=True)
    assert plaintext not in again
    assert row.prefix in again  # enough to tell tokens apart
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "token.create"))
    assert plaintext not in str(entry.detail)


def test_created_token_works_and_last_use_is_shown(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    plaintext = _create_on_page(client, "crm-sync")
    assert "never" in client.get("/settings/tokens").get_data(as_text=True)
    api = app.test_client()
    assert api.get("/api/v1/callbacks", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 200
    page = client.get("/settings/tokens").get_data(as_text=True)
    row = re.search(r'<tr id="token-\d+".*?</tr>', page, re.S).group(0)
    assert "never" not in row and "<time" in row


def test_revoked_token_gets_401(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    plaintext = _create_on_page(client)
    headers = {"Authorization": f"Bearer {plaintext}"}
    api = app.test_client()
    assert api.get("/api/v1/callbacks", headers=headers).status_code == 200
    row = db.session.scalar(select(ApiToken))
    response = client.post(f"/settings/tokens/{row.id}/revoke")
    assert response.status_code == 303
    assert "Revoked" in client.get("/settings/tokens").get_data(as_text=True)
    refused = api.get("/api/v1/callbacks", headers=headers)
    assert refused.status_code == 401 and refused.get_json() == UNAUTHORIZED
    actions = set(db.session.scalars(select(AuditEntry.action)))
    assert {"token.create", "token.revoke"} <= actions


def test_revocation_by_another_process_takes_effect_within_the_cache_time(app, client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from cbdash.models import utcnow

    now = [1000.0]
    monkeypatch.setattr(tokens.time, "monotonic", lambda: now[0])
    row, plaintext = tokens.create("elsewhere", "admin")
    db.session.commit()
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/v1/callbacks", headers=headers).status_code == 200
    # Another web process revokes it: a plain UPDATE this process's ORM never sees.
    with db.engine.begin() as conn:
        conn.execute(update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=utcnow()))
    now[0] += tokens.CACHE_SECONDS - 0.5
    assert client.get("/api/v1/callbacks", headers=headers).status_code == 200  # remembered
    now[0] += 1.0
    refused = client.get("/api/v1/callbacks", headers=headers)
    assert refused.status_code == 401 and refused.get_json() == UNAUTHORIZED


def test_token_form_validates_its_fields(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    for data, field in (({"name": "", "role": "admin"}, "name"), ({"name": "x", "role": "root"}, "role")):
        response = client.post("/settings/tokens", data=data)
        assert response.status_code == 422
        assert 'class="field-error"' in response.get_data(as_text=True), field
    assert db.session.scalar(select(ApiToken)) is None


def test_token_role_limits_the_api(app, client) -> None:  # type: ignore[no-untyped-def]
    _row, plaintext = tokens.create("read-only", "viewer")
    db.session.commit()
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/v1/callbacks", headers=headers).status_code == 200
    body = {"definition": "order.created", "payload": {}}
    assert client.post("/api/v1/events", json=body, headers=headers).status_code == 403


def test_cli_create_token_prints_it_alone_on_the_last_line(app, runner, client) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(args=["create-token", "--name", "ci", "--role", "support"])
    assert result.exit_code == 0, result.output
    plaintext = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"cbd_[A-Za-z0-9_-]{40,}", plaintext)
    assert (
        client.get("/api/v1/callbacks", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 200
    )


@pytest.fixture
def live_token(app) -> str:  # type: ignore[no-untyped-def]
    _row, plaintext = tokens.create("live", "admin")
    db.session.commit()
    return plaintext


def _bad_headers(live: str, revoked: str) -> list[tuple[str, dict]]:
    wrong_same_length = live[:-6] + ("AAAAAA" if not live.endswith("AAAAAA") else "BBBBBB")
    return [
        ("wrong token of the right length", {"HTTP_AUTHORIZATION": f"Bearer {wrong_same_length}"}),
        ("too short", {"HTTP_AUTHORIZATION": "Bearer cbd_x"}),
        ("too long", {"HTTP_AUTHORIZATION": "Bearer " + "a" * 10000}),
        ("raw non-ASCII bytes", {"HTTP_AUTHORIZATION": "Bearer cbd_\xff\xfe\x80caf\xe9"}),
        ("UTF-8 read as latin-1", {"HTTP_AUTHORIZATION": "Bearer " + "ключ".encode().decode("latin-1")}),
        ("NUL and control bytes", {"HTTP_AUTHORIZATION": "Bearer cbd_\x00\x01\x7f"}),
        ("empty header", {"HTTP_AUTHORIZATION": ""}),
        ("scheme only", {"HTTP_AUTHORIZATION": "Bearer"}),
        ("scheme and spaces", {"HTTP_AUTHORIZATION": "Bearer    "}),
        ("other scheme", {"HTTP_AUTHORIZATION": f"Basic {live}"}),
        ("token without scheme", {"HTTP_AUTHORIZATION": live}),
        ("no header", {}),
        ("revoked", {"HTTP_AUTHORIZATION": f"Bearer {revoked}"}),
    ]


def test_bad_tokens_all_get_the_same_401(app, client, live_token) -> None:  # type: ignore[no-untyped-def]
    row, revoked = tokens.create("old", "admin")
    tokens.revoke(row)
    db.session.commit()
    assert (
        client.get("/api/v1/callbacks", headers={"Authorization": f"Bearer {live_token}"}).status_code == 200
    )
    for label, environ in _bad_headers(live_token, revoked):
        for method, path in (("GET", "/api/v1/callbacks"), ("POST", "/api/v1/events")):
            # environ_overrides puts the header value into the WSGI environ as is, the way
            # a server passes raw header bytes (decoded as latin-1).
            response = client.open(path, method=method, environ_overrides=environ, json={"x": 1})
            assert response.status_code == 401, (label, method, response.status_code)
            assert response.get_json() == UNAUTHORIZED, label
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="cbdash"'


def test_lowercase_bearer_scheme_is_accepted(app, client, live_token) -> None:  # type: ignore[no-untyped-def]
    assert (
        client.get("/api/v1/callbacks", headers={"Authorization": f"bearer {live_token}"}).status_code == 200
    )


def _selected_roles(html: bytes) -> list[str]:
    from tests.htmlq import parse

    select_el = parse(html).by_id("token-role")
    return [o.attrs["value"] for o in select_el.find_all("option") if "selected" in o.attrs]


def test_token_form_defaults_to_the_least_privileged_role(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    assert _selected_roles(client.get("/settings/tokens").data) == ["viewer"]
    # A refused submission keeps the role that was chosen...
    refused = client.post("/settings/tokens", data={"name": "", "role": "admin"})
    assert refused.status_code == 422 and _selected_roles(refused.data) == ["admin"]
    tampered = client.post("/settings/tokens", data={"name": "", "role": "root"})
    assert tampered.status_code == 422 and _selected_roles(tampered.data) == ["viewer"]
    # ...and after a token is created the form starts over at viewer.
    created = client.post("/settings/tokens", data={"name": "crm", "role": "admin"})
    assert created.status_code == 201 and _selected_roles(created.data) == ["viewer"]
    # A form posted without choosing (no role field) is refused, never made admin.
    assert client.post("/settings/tokens", data={"name": "x"}).status_code == 422
    assert [r.role for r in db.session.scalars(select(ApiToken))] == ["admin"]
