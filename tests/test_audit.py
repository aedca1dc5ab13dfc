"""The audit log: who did what and when; filterable, paginated, append-only."""

from __future__ import annotations

import re

from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import AuditEntry, Callback, Delivery
from cbdash.services import audit
from tests.conftest import create_user, login, make_callback


def _actions() -> list[str]:
    return list(db.session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def test_changes_are_recorded_with_who_and_when(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    login(client)
    form = {
        "definition": "order.created",
        "url": "https://hooks.example.com/a",
        "timeout": "5",
        "active": "active",
    }
    client.post("/settings/callbacks/new", data=form)
    cb = db.session.scalar(select(Callback))
    client.post(f"/settings/callbacks/{cb.id}/edit", data={**form, "timeout": "7"})
    client.post(f"/settings/callbacks/{cb.id}/toggle")  # deactivate
    client.post(f"/settings/callbacks/{cb.id}/toggle")  # activate
    client.post(f"/settings/callbacks/{cb.id}/secret/reveal")
    client.post(f"/settings/callbacks/{cb.id}/secret/rotate")
    client.post(f"/settings/callbacks/{cb.id}/ping")
    d = db.session.scalar(select(Delivery))
    client.post(f"/settings/callbacks/deliveries/{d.id}/redeliver")
    client.post(
        "/settings/users", data={"email": "sam@example.com", "role": "viewer", "password": "long-enough-1"}
    )
    sam = db.session.scalar(select(AuditEntry.target_id).where(AuditEntry.action == "user.create"))
    client.post(f"/settings/users/{sam}/role", data={"role": "support"})
    client.post(f"/settings/users/{sam}/active", data={"active": "0"})
    client.post("/settings/tokens", data={"name": "erp", "role": "viewer"})
    token_id = db.session.scalar(select(AuditEntry.target_id).where(AuditEntry.action == "token.create"))
    client.post(f"/settings/tokens/{token_id}/revoke")
    client.post(f"/settings/callbacks/{cb.id}/delete")
    client.application.test_client().post("/login", data={"email": "admin@example.com", "password": "nope"})
    api = client.application.test_client()
    api.patch(
        f"/api/v1/callbacks/{make_callback('https://hooks.example.com/b').id}",
        json={"timeout": 9},
        headers=auth,
    )

    expected = [
        "login",
        "callback.create",
        "callback.edit",
        "callback.deactivate",
        "callback.activate",
        "callback.reveal_secret",
        "callback.rotate_secret",
        "delivery.redeliver",
        "user.create",
        "user.role",
        "user.deactivate",
        "token.create",
        "token.revoke",
        "callback.delete",
        "login.failed",
        "callback.edit",
    ]
    assert _actions() == expected
    entries = list(db.session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    assert {e.actor for e in entries[:-2]} == {"admin@example.com"}
    assert entries[-2].actor == "admin@example.com"  # the address tried, for a failed login
    assert entries[-1].actor == "token:tests"
    assert all(e.at is not None and e.ip == "127.0.0.1" for e in entries)
    assert entries[2].detail["changes"]["timeout"] == [5, 7]

    page = client.get("/settings/audit").get_data(as_text=True)
    for action in set(expected):
        assert action in page


def test_bulk_recover_and_other_service_actions_show_up(app, client) -> None:  # type: ignore[no-untyped-def]
    # Other features record through the same helper; the page shows whatever is recorded.
    audit.record("delivery.bulk_redeliver", "delivery", None, {"count": 12, "status": "failed"}, actor="ops")
    db.session.commit()
    login(client)
    page = client.get("/settings/audit?action=delivery").get_data(as_text=True)
    assert "delivery.bulk_redeliver" in page and "&#34;count&#34;: 12" in page


def test_filter_by_action_and_actor(app, client) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        audit.record("callback.create", "callback", i, actor="alice@example.com")
        audit.record("token.create", "token", i, actor="bob@example.com")
    db.session.commit()
    login(client)  # adds a "login" entry
    by_action = client.get("/settings/audit?action=token.create").get_data(as_text=True)
    assert by_action.count("token.create</span>") == 3 and "callback.create</span>" not in by_action
    group = client.get("/settings/audit?action=callback").get_data(as_text=True)
    assert group.count("callback.create</span>") == 3
    by_actor = client.get("/settings/audit?actor=ALICE").get_data(as_text=True)
    assert by_actor.count("alice@example.com") >= 3 and "bob@example.com" not in by_actor
    fragment = client.get(
        "/settings/audit?actor=bob", headers={"HX-Request": "true", "HX-Target": "audit-table"}
    ).get_data(as_text=True)
    assert fragment.startswith('<div id="audit-table">') and "<html" not in fragment
    wild = client.get("/settings/audit?actor=%25&action=%27%22%3C").get_data(as_text=True)
    assert "No entries match this filter." in wild


def test_pagination_newest_first(app, client) -> None:  # type: ignore[no-untyped-def]
    for i in range(60):
        audit.record("callback.edit", "callback", i, {"n": i}, actor="bulk")
    db.session.commit()
    login(client)
    first = client.get("/settings/audit?actor=bulk").get_data(as_text=True)
    second = client.get("/settings/audit?actor=bulk&page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Page 2 of 2" in second
    assert "callback #59" in first and "callback #0" not in first
    assert "callback #0" in second and "callback #59" not in second
    rows = r'<td data-label="When">'
    assert len(re.findall(rows, first)) == 50 and len(re.findall(rows, second)) == 10
    assert client.get("/settings/audit?page=999").status_code == 200
    assert client.get("/settings/audit?page=abc").status_code == 200


def test_the_log_is_append_only(app, client) -> None:  # type: ignore[no-untyped-def]
    audit.record("callback.create", "callback", 1, actor="x")
    db.session.commit()
    login(client)
    entry_id = db.session.scalar(select(AuditEntry.id))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert client.open("/settings/audit", method=method).status_code == 405
        assert client.open(f"/settings/audit/{entry_id}", method=method).status_code == 404
    routes = [r for r in app.url_map.iter_rules() if "audit" in r.rule or r.endpoint.startswith("audit.")]
    assert [(r.rule, sorted(r.methods - {"HEAD", "OPTIONS"})) for r in routes] == [
        ("/settings/audit", ["GET"])
    ]
    assert db.session.get(AuditEntry, entry_id) is not None


def test_secrets_in_details_are_masked(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    form = {
        "definition": "order.created",
        "url": "https://u:pw-sekrit@hooks.example.com/a?api_key=key-sekrit",
        "timeout": "5",
        "active": "active",
        "headers": "Authorization: Bearer hdr-sekrit",
    }
    client.post("/settings/callbacks/new", data=form)
    cb = db.session.scalar(select(Callback))
    client.post(
        f"/settings/callbacks/{cb.id}/edit", data={**form, "headers": "Authorization: Bearer hdr-sekrit-2"}
    )
    stored = str([e.detail for e in db.session.scalars(select(AuditEntry))])
    page = client.get("/settings/audit").get_data(as_text=True)
    for secret in ("pw-sekrit", "key-sekrit", "hdr-sekrit"):
        assert secret not in stored and secret not in page
    assert "hooks.example.com" in page


def test_user_supplied_text_in_the_log_is_escaped(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    client.post("/login", data={"email": "<script>alert(1)</script>", "password": "x"})
    login(client)
    page = client.get("/settings/audit").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
