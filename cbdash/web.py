"""Cross-cutting web behaviour: login guard, security headers, errors, template helpers."""

from __future__ import annotations

import json

from flask import (
    Flask,
    Response,
    flash,
    g,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from . import formatting, htmx
from .extensions import db, login_manager
from .models import User

# Pages and endpoints reachable without a browser login. The API and /metrics
# authenticate with bearer tokens instead; static files are public.
PUBLIC_ENDPOINTS = {
    "auth.login",
    "auth.setup",
    "static",
    "ops.healthz",
    "ops.readyz",
    "ops.metrics",
    "inbound.receive",  # third parties post webhooks; verified by signature, not login
}

# Settings › System pages, in sidebar order: (label, endpoint, permission needed).
# A page shows up only when its blueprint is registered.
NAV = [
    ("Callbacks", "callbacks.index", "view"),
    ("Deliveries", "deliveries.index", "view"),
    ("Monitoring", "monitoring.index", "view"),
    ("Inbound webhooks", "inbound.index", "view"),
    ("API tokens", "tokens.index", "admin"),
    ("Users", "users.index", "admin"),
    ("Audit log", "audit.index", "admin"),
]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    try:
        user = db.session.get(User, int(user_id))
    except (TypeError, ValueError):
        return None
    return user if user and user.active else None


def _login_required() -> Response | None:
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC_ENDPOINTS or endpoint.startswith("api."):
        return None
    if not endpoint and request.path.startswith("/api/"):
        return None  # an unmatched API URL: its 404/405 is JSON, never a login redirect
    if current_user.is_authenticated:
        return None
    return _to_login()


def _to_login() -> Response:
    """Send a signed-out browser to the login (or first-run) page, then back here."""
    if db.session.scalar(select(User.id).limit(1)) is None:
        target = url_for("auth.setup")
    else:
        # htmx tells us the page the user is looking at; a plain GET comes back to itself;
        # a plain POST cannot be replayed, so it comes back to the page it was posted from.
        if request.endpoint in ("auth.login", "auth.setup"):
            back = request.args.get("next")
        elif htmx.is_htmx():
            back = request.headers.get("HX-Current-URL")
        elif request.method == "GET":
            back = request.full_path
        else:
            back = request.referrer
        target = url_for("auth.login", next=_local_path(back, same_host=True))
    if htmx.is_htmx():
        # Never let a login page land inside a table cell: ask for a full navigation.
        response = Response("Your session has expired. Please sign in again.", status=401)
        return htmx.redirect(response, target)
    if request.endpoint in ("auth.login", "auth.setup") and request.method != "GET":
        flash("The sign-in form had expired. Please try again.", "warning")
    elif request.method != "GET":
        flash("Your session has expired. Please sign in again.", "warning")
    return redirect(target, code=302 if request.method == "GET" else 303)


def _local_path(url: str | None, same_host: bool = False) -> str | None:
    """Only same-site paths are valid ``next`` targets (no open redirect).

    ``/\\evil.example`` and paths with tabs or newlines count as absolute URLs in
    browsers, so anything but a plain path is refused. With ``same_host``, a full
    URL (a Referer or HX-Current-URL header) is accepted when it names this host.
    """
    if not url or not isinstance(url, str) or len(url) > 2048:
        return None
    if "\\" in url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme or parts.netloc:
        if not (same_host and has_request_context() and parts.netloc == request.host):
            return None
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//"):
        return None
    return path + (f"?{parts.query}" if parts.query else "")


class SessionInterface(SecureCookieSessionInterface):
    """Signed-cookie sessions whose cookie is ``Secure`` whenever the request came over HTTPS.

    Behind a TLS-terminating proxy, set CBDASH_TRUSTED_PROXIES so ``request.is_secure``
    sees X-Forwarded-Proto, or CBDASH_SECURE_COOKIES=1 to always mark cookies Secure.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        forced = bool(app.config.get("SESSION_COOKIE_SECURE"))
        return forced or (has_request_context() and request.is_secure)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or (request.accept_mimetypes.best == "application/json")


def _json_error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "fields": {}}})
    response.status_code = status
    return response


def _on_csrf_error(exc: CSRFError) -> Response | tuple[str, int]:
    if not current_user.is_authenticated:
        # The session cookie is gone (signed out or expired in another tab): the token
        # could not match. Same answer as the login guard: sign in, then come back.
        return _to_login()
    if "missing" in (exc.description or "") and "session" not in (exc.description or ""):
        message = "This request was refused because it carried no CSRF token. Reload the page and try again."
    else:
        message = "Your session has changed or the page is stale. Reload the page and try again."
    if htmx.is_htmx():
        response = Response(message, status=400)
        response.headers["HX-Reswap"] = "none"
        return htmx.trigger(response, json.dumps({"cbdash:error": message}))
    return render_template("error.html", code=400, title="Request refused", message=message), 400


def _on_http_error(exc: HTTPException) -> Response | tuple[str, int]:
    code = exc.code or 500
    if _wants_json():
        return _json_error(code, (exc.name or "error").lower().replace(" ", "_"), exc.description or exc.name)
    if htmx.is_htmx():
        response = Response(exc.description or exc.name, status=code)
        response.headers["HX-Reswap"] = "none"
        return htmx.trigger(response, '{"cbdash:error": "' + (exc.name or "Error") + '"}')
    return render_template("error.html", code=code, title=exc.name, message=exc.description), code


class BoundedInt(IntegerConverter):
    """``<int:...>`` in routes, capped at a 64-bit id: a larger number is a 404, not a database error."""

    def __init__(self, map, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


# Bad input that only shows up deep in a library: the request was wrong, not the server.
BAD_INPUT = {
    OverflowError: ("out_of_range", "A number in the request is too large."),
    DataError: ("out_of_range", "A value in the request is out of range or too long."),
    RecursionError: ("too_deep", "The request's JSON is nested too deeply."),
    UnicodeEncodeError: ("invalid_text", "The request contains text that is not valid Unicode."),
}


def _on_bad_input(exc: Exception) -> Response | tuple[str, int]:
    db.session.rollback()
    code, message = next(v for k, v in BAD_INPUT.items() if isinstance(exc, k))
    import logging

    logging.getLogger("cbdash").warning("bad input on %s: %s", request.path, type(exc).__name__)
    if _wants_json():
        return _json_error(400, code, message)
    if htmx.is_htmx():
        response = Response(message, status=400)
        response.headers["HX-Reswap"] = "none"
        return htmx.trigger(response, json.dumps({"cbdash:error": message}))
    return render_template("error.html", code=400, title="Bad request", message=message), 400


def _on_unexpected(exc: Exception) -> Response | tuple[str, int]:
    if isinstance(exc, HTTPException):
        return _on_http_error(exc)
    db.session.rollback()
    import logging

    logging.getLogger("cbdash").exception("unexpected error on %s", request.path)
    if _wants_json():
        return _json_error(500, "internal_error", "Something went wrong on our side.")
    return render_template(
        "error.html",
        code=500,
        title="Something went wrong",
        message="The error was logged. Please try again.",
    ), 500


def _fresh_globals() -> None:
    # Per-request state (the signed-in user, the API token, the CSRF token) lives in
    # ``g``. A server gives every request a new app context, but a test that holds one
    # open shares ``g`` between its requests; start each request clean either way.
    g.__dict__.clear()


def init_app(app: Flask) -> None:
    formatting.register(app)
    # First of all before_request hooks, ahead of the CSRF check that reads the session.
    app.before_request_funcs.setdefault(None, []).insert(0, _fresh_globals)
    app.session_interface = SessionInterface()
    app.url_map.converters["int"] = BoundedInt  # before any blueprint adds its routes
    # Flask's defaults include SESSION_COOKIE_SAMESITE=None, so setdefault cannot set it.
    for name in ("SESSION_COOKIE_SAMESITE", "REMEMBER_COOKIE_SAMESITE"):
        if not app.config.get(name):
            app.config[name] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["REMEMBER_COOKIE_HTTPONLY"] = True
    if app.config.get("SECURE_COOKIES"):
        app.config["SESSION_COOKIE_SECURE"] = True
        app.config["REMEMBER_COOKIE_SECURE"] = True
    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies > 0:
        # Only as many X-Forwarded-* hops as there are proxies: a client cannot spoof
        # its address (throttling) or HTTPS (Secure cookies) past them.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    app.before_request(_login_required)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _on_csrf_error)
    for kind in BAD_INPUT:
        app.register_error_handler(kind, _on_bad_input)
    app.register_error_handler(HTTPException, _on_http_error)
    app.register_error_handler(Exception, _on_unexpected)

    @app.context_processor
    def _nav() -> dict:
        """Sidebar entries for the pages this install has, filtered by role."""
        items = [
            (label, endpoint)
            for label, endpoint, perm in NAV
            if endpoint in app.view_functions and current_user.is_authenticated and current_user.can(perm)
        ]
        return {"nav_items": items}

    @app.context_processor
    def _globals() -> dict:
        from .services.alerts import disabled_callbacks

        user = current_user if current_user.is_authenticated else None
        return {
            "can": (lambda perm: bool(user and user.can(perm))),
            "alerts": disabled_callbacks() if user else [],
        }
