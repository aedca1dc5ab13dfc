"""Logins: the login guard, first-admin setup, logout, throttling, cookies, safe ``next``."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import AuditEntry, User
from tests.conftest import create_user, login

PASSWORD = "password-123"


def _users() -> int:
    return db.session.scalar(select(func.count()).select_from(User)) or 0


def _sign_in(client, email: str, password: str = PASSWORD, ip: str = "10.9.8.7", **kw):  # type: ignore[no-untyped-def]
    return client.post(
        "/login", data={"email": email, "password": password}, environ_base={"REMOTE_ADDR": ip}, **kw
    )


def test_every_page_needs_a_login(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    for path in (
        "/settings/callbacks",
        "/settings/callbacks/table",
        "/settings/callbacks/deliveries",
        "/settings/users",
        "/settings/tokens",
        "/settings/audit",
        "/settings/callbacks/docs",
        "/no-such-page",
    ):
        response = client.get(path)
        assert response.status_code in (302, 303), path
        assert response.location.startswith("/login?next="), path


def test_htmx_request_without_a_session_gets_a_full_page_redirect(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    response = client.get(
        "/settings/callbacks/table?status=active",
        headers={"HX-Request": "true", "HX-Current-URL": "http://localhost/settings/callbacks?status=active"},
    )
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=/settings/callbacks?status%3Dactive"
    assert b"<html" not in response.data  # never a login page inside a table cell


def test_first_run_offers_setup_once(app, client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/settings/callbacks").location == "/setup"
    assert client.get("/login").location == "/setup"
    page = client.get("/setup")
    assert page.status_code == 200 and b"Create the first admin" in page.data
    short = client.post("/setup", data={"email": "boss@example.com", "password": "short"})
    assert short.status_code == 422 and _users() == 0
    done = client.post("/setup", data={"email": "Boss@Example.com", "password": "a-long-password"})
    assert done.status_code == 303
    user = db.session.scalar(select(User))
    assert (user.email, user.role) == ("boss@example.com", "admin")
    assert user.password_hash != "a-long-password"
    assert client.get("/settings/callbacks").status_code == 200  # signed in
    # Gone for good, for everyone.
    assert client.get("/setup").status_code == 404
    other = client.application.test_client()
    assert other.get("/setup").status_code in (302, 404)
    assert other.post(
        "/setup", data={"email": "evil@example.com", "password": "a-long-password"}
    ).status_code in (
        302,
        404,
    )
    assert _users() == 1
    assert db.session.scalar(select(AuditEntry.action)) == "user.create"


def test_login_and_logout(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user("ops@example.com", "support")
    response = _sign_in(client, "OPS@example.com ")
    assert response.status_code == 302 and response.location == "/settings/callbacks"
    assert client.get("/settings/callbacks").status_code == 200
    assert client.get("/logout").status_code == 405  # signing out is a POST (CSRF-checked)
    out = client.post("/logout")
    assert out.status_code == 303 and out.location == "/login"
    assert client.get("/settings/callbacks").status_code == 302
    actions = set(db.session.scalars(select(AuditEntry.action)))
    assert {"login", "logout"} <= actions


def test_wrong_password_and_unknown_email_get_the_same_answer(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    wrong = _sign_in(client, "admin@example.com", "not-the-password")
    unknown = _sign_in(client, "nobody@example.com", "not-the-password")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert b"That email and password do not match an active account." in response.data
    assert client.get("/settings/callbacks").status_code == 302


def test_deactivated_user_cannot_sign_in_and_is_signed_out(app, client) -> None:  # type: ignore[no-untyped-def]
    user = create_user("gone@example.com", "viewer")
    login(client, "gone@example.com")
    user.active = False
    db.session.commit()
    assert client.get("/settings/callbacks").status_code == 302  # the live session ends
    assert _sign_in(client, "gone@example.com").status_code == 401


def test_failed_logins_are_throttled_per_account(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    create_user("other@example.com", "viewer")
    for i in range(5):
        assert _sign_in(client, "admin@example.com", "wrong", ip=f"10.0.0.{i}").status_code == 401
    # Even the right password, from a fresh address, waits now.
    blocked = _sign_in(client, "admin@example.com", ip="10.0.0.99")
    assert blocked.status_code == 429
    assert b"Too many failed sign-ins" in blocked.data
    assert int(blocked.headers["Retry-After"]) > 0
    assert client.get("/settings/callbacks").status_code == 302
    # Another account is not affected.
    assert _sign_in(client, "other@example.com", ip="10.0.0.1").status_code == 302


@pytest.mark.slow
def test_failed_logins_are_throttled_per_address(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    for i in range(20):  # many accounts, one address: password spraying
        assert _sign_in(client, f"user{i}@example.com", "wrong", ip="10.5.5.5").status_code == 401
    assert _sign_in(client, "admin@example.com", ip="10.5.5.5").status_code == 429
    assert _sign_in(client, "admin@example.com", ip="10.6.6.6").status_code == 302


def _cookie_header(response) -> str:  # type: ignore[no-untyped-def]
    cookies = [
        v for k, v in response.headers.items() if k.lower() == "set-cookie" and v.startswith("session=")
    ]
    assert cookies, "no session cookie set"
    return cookies[-1]


def test_session_cookie_flags_over_http(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    cookie = _cookie_header(_sign_in(client, "admin@example.com"))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # a plain-HTTP laptop install must still be able to sign in


def test_session_cookie_is_secure_over_https(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    response = _sign_in(client, "admin@example.com", base_url="https://cbdash.example")
    cookie = _cookie_header(response)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_forwarded_proto_is_ignored_unless_a_proxy_is_trusted(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    response = _sign_in(client, "admin@example.com", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in _cookie_header(response)


class TestBehindAProxy:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"TRUSTED_PROXIES": 1}

    def test_forwarded_https_marks_the_cookie_secure(self, app, client) -> None:  # type: ignore[no-untyped-def]
        create_user()
        response = _sign_in(client, "admin@example.com", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in _cookie_header(response)

    def test_throttle_sees_the_forwarded_client_address(self, app, client) -> None:  # type: ignore[no-untyped-def]
        create_user()
        for _ in range(5):
            _sign_in(client, "admin@example.com", "wrong", headers={"X-Forwarded-For": "203.0.113.9"})
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "login.failed"))
        assert entry.ip == "203.0.113.9"


class TestSecureCookiesSetting:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"SECURE_COOKIES": True}

    def test_cookies_are_always_secure(self, app, client) -> None:  # type: ignore[no-untyped-def]
        create_user()
        assert "Secure" in _cookie_header(_sign_in(client, "admin@example.com"))


@pytest.mark.parametrize(
    "next_value, lands_on",
    [
        ("/settings/callbacks/deliveries?status=failed", "/settings/callbacks/deliveries?status=failed"),
        ("//evil.example/", "/settings/callbacks"),
        ("/\\evil.example/", "/settings/callbacks"),
        ("\\\\evil.example", "/settings/callbacks"),
        ("/\t/evil.example/", "/settings/callbacks"),
        ("https://evil.example/settings", "/settings/callbacks"),
        ("javascript:alert(1)", "/settings/callbacks"),
        ("http://localhost/settings/users", "/settings/callbacks"),
        ("", "/settings/callbacks"),
    ],
)
def test_next_only_leads_to_a_local_path(app, client, next_value: str, lands_on: str) -> None:  # type: ignore[no-untyped-def]
    create_user()
    response = client.post(
        "/login", query_string={"next": next_value}, data={"email": "admin@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response.location == lands_on


def test_cli_create_user(app, runner) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        args=["create-user", "--email", "cli@example.com", "--password", "long-enough-1", "--role", "support"]
    )
    assert result.exit_code == 0, result.output
    user = db.session.scalar(select(User).where(User.email == "cli@example.com"))
    assert user.role == "support" and user.check_password("long-enough-1")
    again = runner.invoke(args=["create-user", "--email", "cli@example.com", "--password", "long-enough-1"])
    assert again.exit_code != 0 and "already exists" in again.output
