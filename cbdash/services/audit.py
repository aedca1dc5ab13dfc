"""The audit log: append-only records of who changed what."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select

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


@dataclass
class AuditPage:
    items: list[AuditEntry]
    page: int
    pages: int
    total: int


def actions() -> list[str]:
    """Every action recorded so far, for the filter."""
    return list(db.session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action)))


def search(action: str = "", actor: str = "", page: int = 1, per_page: int = 50) -> AuditPage:
    """One page of entries, newest first, filtered by action (or its prefix) and actor."""
    stmt = select(AuditEntry)
    if action:
        # "callback" matches callback.create, callback.edit, ...
        stmt = stmt.where(or_(AuditEntry.action == action, AuditEntry.action.startswith(action + ".")))
    if actor:
        like = "%" + actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(AuditEntry.actor.ilike(like, escape="\\"))
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    ordered = stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    rows = db.session.scalars(ordered.limit(per_page).offset((page - 1) * per_page))
    return AuditPage(list(rows), page, pages, total)
