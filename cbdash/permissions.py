"""Who may do what. One table, read by views, templates and the API."""

from __future__ import annotations

from .constants import Role

# view: read pages; ping: send test pings / call now; redeliver: redeliver and bulk recover;
# manage: create/edit/activate/delete callbacks; secrets: reveal/rotate; admin: users, tokens.
PERMISSIONS: dict[str, set[str]] = {
    Role.ADMIN: {"view", "ping", "redeliver", "manage", "secrets", "admin"},
    Role.SUPPORT: {"view", "ping", "redeliver"},
    Role.VIEWER: {"view"},
}


def allowed(role: str, permission: str) -> bool:
    """True when ``role`` grants ``permission``."""
    return permission in PERMISSIONS.get(role, set())


def require(permission: str):  # type: ignore[no-untyped-def]
    """View decorator: 403 unless the signed-in user's role grants ``permission``."""
    from functools import wraps

    from flask import abort
    from flask_login import current_user

    def decorator(view):  # type: ignore[no-untyped-def]
        @wraps(view)
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not current_user.is_authenticated or not current_user.can(permission):
                abort(403, description="Your role does not allow this action.")
            return view(*args, **kwargs)

        return wrapped

    return decorator
