"""The audit log: append-only records of who changed what."""

from __future__ import annotations

from typing import Any

from ..extensions import db
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
