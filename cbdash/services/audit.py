"""The audit log: append-only records of who changed what."""

from __future__ import annotations

import re
from typing import Any

from ..extensions import db
from ..formatting import MASK, mask_url
from ..models import AuditEntry


def _actor() -> tuple[str, str | None]:
    from flask import g, has_request_context, request
    from flask_login import current_user

    if not has_request_context():
        return "cli", None
    ip = request.remote_addr
    token = getattr(g, "api_token", None)
    if token is not None:
        return f"token:{token.name}", ip
    if current_user.is_authenticated:
        return current_user.email, ip
    return "anonymous", ip


def record(
    action: str,
    target_type: str | None = None,
    target_id: Any = None,
    detail: dict[str, Any] | None = None,
    *,
    actor: str | None = None,
) -> AuditEntry:
    """Add an audit entry to the current transaction (committed with the change)."""
    who, ip = _actor()
    entry = AuditEntry(
        actor=(actor or who)[:254],
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        detail=_jsonable(detail or {}),
        ip=ip,
    )
    db.session.add(entry)
    return entry


# Detail keys whose values are URLs (credentials and query tokens get masked) or
# secrets (never written to the log at all).
_URL_KEYS = {"url", "location", "alert_url"}
_SECRET_KEYS = re.compile(r"secret|password|token|headers", re.I)
_MAX_STRING = 1000


def _jsonable(value: Any, key: str = "") -> Any:
    """A JSON-safe copy of ``value`` with URLs masked and secret values redacted."""
    if isinstance(value, dict):
        if _SECRET_KEYS.search(key):
            return {str(k): MASK for k in value}  # keep the header names, drop the values
        return {str(k): _jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, key) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = str(value)
    if _SECRET_KEYS.search(key) and key not in _PLAIN_KEYS:
        return MASK if text else ""
    if key in _URL_KEYS:
        text = mask_url(text)
    return text[:_MAX_STRING]


# Names that match the secret pattern but hold no secret.
_PLAIN_KEYS = {"token_name", "token_prefix"}
