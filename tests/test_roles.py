"""Roles: every action for every role -- the button is hidden and the server refuses (403)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import ApiToken, AuditEntry, Callback, Delivery, User
from cbdash.services import delivery, tokens
from tests.conftest import login, make_callback


def _callback() -> Callback:
    return make_callback("https://hooks.example.com/x", "order.created")


def _delivery() -> Delivery:
    d = delivery.create_ping(_callback())
    db.session.commit()
    return d


_serial = itertools.count()


def _user() -> int:
    # A user who never signs in: no password hash needed (hashing is slow on purpose).
    user = User(email=f"target{next(_serial)}@example.com", role="viewer", password_hash="!")
    db.session.add(user)
    db.session.commit()
    return user.id


def _token() -> int:
    row, _ = tokens.create("target", "viewer")
    db.session.commit()
    return row.id


@dataclass
class Action:
    name: str
    permission: str
    method: str
    path: Callable[[], str]
    data: dict | None = None


FORM = {
    "definition": "order.created",
    "url": "https://hooks.example.com/y",
    "timeout": "5",
    "active": "active",
}
ACTIONS = [
    Action("open the create form", "manage", "GET", lambda: "/settings/callbacks/new"),
    Action("create a callback", "manage", "POST", lambda: "/settings/callbacks/new", FORM),
    Action("open the edit form", "manage", "GET", lambda: f"/settings/callbacks/{_callback().id}/edit"),
    Action("edit a callback", "manage", "POST", lambda: f"/settings/callbacks/{_callback().id}/edit", FORM),
    Action("deactivate a callback", "manage", "POST", lambda: f"/settings/callbacks/{_callback().id}/toggle"),
    Action("confirm a delete", "manage", "GET", lambda: f"/settings/callbacks/{_callback().id}/delete"),
    Action("delete a callback", "manage", "POST", lambda: f"/settings/callbacks/{_callback().id}/delete"),
    Action("send a test ping", "ping", "POST", lambda: f"/settings/callbacks/{_callback().id}/ping"),
    Action(
        "redeliver",
        "redeliver",
        "POST",
        lambda: f"/settings/callbacks/deliveries/{_delivery().id}/redeliver",
    ),
    Action(
        "reveal a secret", "secrets", "POST", lambda: f"/settings/callbacks/{_callback().id}/secret/reveal"
    ),
    Action(
        "rotate a secret", "secrets", "POST", lambda: f"/settings/callbacks/{_callback().id}/secret/rotate"
    ),
    Action("see users", "admin", "GET", lambda: "/settings/users"),
    Action(
        "create a user",
        "admin",
        "POST",
        lambda: "/settings/users",
        {"email": "new@example.com", "role": "viewer", "password": "long-enough-1"},
    ),
    Action("change a role", "admin", "POST", lambda: f"/settings/users/{_user()}/role", {"role": "support"}),
    Action(
        "deactivate a user", "admin", "POST", lambda: f"/settings/users/{_user()}/active", {"active": "0"}
    ),
    Action("reset a password", "admin", "POST", lambda: f"/settings/users/{_user()}/password"),
    Action("see API tokens", "admin", "GET", lambda: "/settings/tokens"),
    Action(
        "create an API token", "admin", "POST", lambda: "/settings/tokens", {"name": "n", "role": "viewer"}
    ),
    Action("revoke an API token", "admin", "POST", lambda: f"/settings/tokens/{_token()}/revoke"),
    Action("see the audit log", "admin", "GET", lambda: "/settings/audit"),
]
GRANTS = {
    "admin": {"view", "ping", "redeliver", "manage", "secrets", "admin"},
    "support": {"view", "ping", "redeliver"},
    "viewer": {"view"},
}


def _state() -> tuple:
    """Everything an action could change, to prove a refused one changed nothing."""
    count = lambda model: db.session.scalar(select(func.count()).select_from(model))  # noqa: E731
    db.session.expire_all()
    return (
        count(Callback),
        count(Delivery),
        count(ApiToken),
        db.session.scalar(select(func.count()).where(Callback.active.is_(False))),
        db.session.scalar(select(func.count()).where(Callback.deleted_at.is_not(None))),
        tuple(db.session.scalars(select(Callback.secret).order_by(Callback.id))),
        db.session.scalar(select(func.count()).where(ApiToken.revoked_at.is_not(None))),
        db.session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action != "login")),
    )


@pytest.mark.parametrize("role", ["admin", "support", "viewer"])
def test_each_action_is_allowed_or_refused_by_role(app, client, role: str) -> None:  # type: ignore[no-untyped-def]
    login(client, f"{role}@example.com", role)
    wrong = []
    for action in ACTIONS:
        path = action.path()
        before = _state()
        response = client.open(path, method=action.method, data=action.data or {})
        allowed = action.permission in GRANTS[role]
        if allowed and response.status_code >= 400:
            wrong.append((action.name, "should be allowed", response.status_code))
        if not allowed:
            if response.status_code != 403:
                wrong.append((action.name, "should be 403", response.status_code))
            elif _state() != before:
                wrong.append((action.name, "refused but changed something"))
            elif b"Your role does not allow this action." not in response.data:
                wrong.append((action.name, "403 without the explanation"))
    assert wrong == []


def test_refusal_of_an_htmx_action_is_a_toast_not_a_swap(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client, "viewer@example.com", "viewer")
    cb = _callback()
    response = client.post(f"/settings/callbacks/{cb.id}/toggle", headers={"HX-Request": "true"})
    assert response.status_code == 403
    assert response.headers["HX-Reswap"] == "none"
    assert "cbdash:error" in response.headers["HX-Trigger"]


# What each role sees: buttons for actions it cannot use are not rendered.
MARKERS = {
    "manage": ["Add callback", "/toggle", "/edit", "/delete"],
    "ping": ["/ping"],
    "redeliver": ["/redeliver"],
    "secrets": ["/secret/reveal", "/secret/rotate"],
    "admin": ['href="/settings/users"', 'href="/settings/tokens"', 'href="/settings/audit"'],
}


@pytest.mark.parametrize("role", ["admin", "support", "viewer"])
def test_buttons_are_shown_only_for_allowed_actions(app, client, role: str) -> None:  # type: ignore[no-untyped-def]
    login(client, f"{role}@example.com", role)
    d = _delivery()
    pages = "".join(
        client.get(path).get_data(as_text=True)
        for path in (
            "/settings/callbacks",
            f"/settings/callbacks/{d.callback_id}",
            f"/settings/callbacks/deliveries/{d.id}",
        )
    )
    assert 'href="/settings/callbacks/deliveries"' in pages  # everyone can look around
    for permission, markers in MARKERS.items():
        for marker in markers:
            shown = marker in pages
            assert shown == (permission in GRANTS[role]), (role, permission, marker)
