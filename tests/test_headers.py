"""Security headers on every response, and pages that need no inline script or style."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cbdash.services import delivery
from tests.conftest import create_user, login, make_callback

ROOT = Path(__file__).resolve().parent.parent


def _csp(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: part.strip() for part in policy.split(";") if part.strip()}


def _assert_security_headers(response, where: str) -> None:  # type: ignore[no-untyped-def]
    csp = _csp(response)
    assert csp["script-src"] == "script-src 'self'", where
    assert csp["style-src"] == "style-src 'self'", where
    assert csp["frame-ancestors"] == "frame-ancestors 'none'", where
    assert csp["object-src"] == "object-src 'none'", where
    assert csp["base-uri"] == "base-uri 'none'", where
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"], where
    assert "unsafe-eval" not in response.headers["Content-Security-Policy"], where
    assert response.headers["X-Frame-Options"] == "DENY", where
    assert response.headers["X-Content-Type-Options"] == "nosniff", where
    assert response.headers["Referrer-Policy"] == "same-origin", where


def test_every_kind_of_response_carries_the_headers(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    anonymous = app.test_client()
    responses = {
        "login page": anonymous.get("/login"),
        "redirect": anonymous.get("/settings/callbacks"),
        "static": anonymous.get("/static/app.css"),
        "api": anonymous.get("/api/v1/callbacks", headers=auth),
        "api error": anonymous.get("/api/v1/callbacks"),
        "healthz": anonymous.get("/healthz"),
    }
    login(client, "viewer@example.com", "viewer")
    responses.update(
        {
            "page": client.get("/settings/callbacks"),
            "fragment": client.get("/settings/callbacks/table", headers={"HX-Request": "true"}),
            "404": client.get("/settings/callbacks/999999"),
            "403": client.post(f"/settings/callbacks/{cb.id}/toggle"),
            "405": client.get("/logout"),
        }
    )
    for where, response in responses.items():
        _assert_security_headers(response, where)
    assert responses["page"].headers["Cache-Control"] == "no-store"
    assert "no-store" not in responses["static"].headers.get("Cache-Control", "")


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "inline <script>"),
    (re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I), "on* event handler attribute"),
    (re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I), "style attribute"),
    (re.compile(r"<style", re.I), "<style> element"),
    (re.compile(r"\b(href|src|action)\s*=\s*[\"']?\s*javascript:", re.I), "javascript: URL"),
    (re.compile(r"hx-on", re.I), "hx-on (needs eval)"),
]


def test_templates_have_no_inline_script_or_style() -> None:
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern, what in INLINE:
            for match in pattern.finditer(text):
                found.append((str(path.relative_to(ROOT)), what, match.group(0)[:80]))
    assert found == []


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_TARGETS": "127.0.0.1/32"}


def test_rendered_pages_have_no_inline_script_or_style(app, client) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x", description="style=color:red onload=x")
    d = delivery.create_ping(cb)
    from cbdash.extensions import db

    db.session.commit()
    login(client)
    paths = [r.rule for r in app.url_map.iter_rules() if "GET" in r.methods and not r.arguments]
    paths = [p for p in paths if p.startswith("/settings")] + [
        f"/settings/callbacks/{cb.id}",
        f"/settings/callbacks/{cb.id}/edit",
        f"/settings/callbacks/{cb.id}/delete",
        f"/settings/callbacks/deliveries/{d.id}",
    ]
    checked = 0
    for path in paths:
        response = client.get(path)
        if response.status_code != 200 or response.mimetype != "text/html":
            continue
        checked += 1
        page = response.get_data(as_text=True)
        for pattern, what in INLINE:
            match = pattern.search(page)
            assert match is None, (path, what, match and match.group(0)[:80])
    assert checked >= 8


def test_htmx_is_configured_for_a_strict_csp(app, client) -> None:  # type: ignore[no-untyped-def]
    create_user()
    page = client.get("/login").get_data(as_text=True)
    config = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'>', page).group(1)
    assert '"includeIndicatorStyles": false' in config  # htmx would inject a <style> otherwise
    assert '"allowEval": false' in config
    assert re.search(r'<script src="/static/htmx-2\.\d+\.\d+\.min\.js" defer></script>', page)


@pytest.mark.parametrize(
    "path",
    [
        "/static/../cbdash/config.py",
        "/static/%2e%2e/cbdash/config.py",
        "/static/..%2fcbdash%2fconfig.py",
        "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/..\\cbdash\\config.py",
        "/static/docs/../../instance/secret_key",
    ],
)
def test_static_files_cannot_escape_their_folder(app, client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code in (302, 404), path
    assert b"SETTINGS" not in response.data and b"root:" not in response.data
