"""Cross-cutting web behaviour: login guard, security headers, errors, template helpers."""

from __future__ import annotations

from flask import Flask, Response, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

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
    if current_user.is_authenticated:
        return None
    if db.session.scalar(select(User.id).limit(1)) is None:
        target = url_for("auth.setup")
    else:
        back = request.headers.get("HX-Current-URL") if htmx.is_htmx() else request.full_path
        target = url_for("auth.login", next=_local_path(back))
    if htmx.is_htmx():
        # Never let a login page land inside a table cell: ask for a full navigation.
        response = Response("Your session has expired. Please sign in again.", status=401)
        return htmx.redirect(response, target)
    if endpoint is None or request.method != "GET":
        flash("Your session has expired. Please sign in again.", "warning")
    return redirect(target)


def _local_path(url: str | None) -> str | None:
    """Only same-site paths are valid ``next`` targets (no open redirect)."""
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//"):
        return None
    return path + (f"?{parts.query}" if parts.query else "")


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
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
    message = "Your session has expired or the form is stale. Reload the page and try again."
    if htmx.is_htmx():
        response = Response(message, status=400)
        response.headers["HX-Reswap"] = "none"
        return htmx.trigger(response, '{"cbdash:error": "' + message + '"}')
    return render_template("error.html", code=400, title="Session expired", message=message), 400


def _on_http_error(exc: HTTPException) -> Response | tuple[str, int]:
    code = exc.code or 500
    if _wants_json():
        return _json_error(code, (exc.name or "error").lower().replace(" ", "_"), exc.description or exc.name)
    if htmx.is_htmx():
        response = Response(exc.description or exc.name, status=code)
        response.headers["HX-Reswap"] = "none"
        return htmx.trigger(response, '{"cbdash:error": "' + (exc.name or "Error") + '"}')
    return render_template("error.html", code=code, title=exc.name, message=exc.description), code


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


def init_app(app: Flask) -> None:
    formatting.register(app)
    app.before_request(_login_required)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _on_csrf_error)
    app.register_error_handler(HTTPException, _on_http_error)
    app.register_error_handler(Exception, _on_unexpected)

    @app.context_processor
    def _nav() -> dict:
        """Sidebar entries for the pages this install has, filtered by role."""
        items = [(label, endpoint) for label, endpoint, perm in NAV
                 if endpoint in app.view_functions
                 and current_user.is_authenticated and current_user.can(perm)]
        return {"nav_items": items}

    @app.context_processor
    def _globals() -> dict:
        from .services.alerts import disabled_callbacks

        user = current_user if current_user.is_authenticated else None
        return {
            "can": (lambda perm: bool(user and user.can(perm))),
            "alerts": disabled_callbacks() if user else [],
        }
