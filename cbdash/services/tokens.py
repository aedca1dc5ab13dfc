"""API tokens: random, shown once, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import select

from ..constants import Role
from ..extensions import db
from ..models import ApiToken, utcnow

PREFIX = "cbd_"
TOKEN_BYTES = 32
MAX_NAME = 100


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def validate(name: Any, role: Any) -> dict[str, str]:
    """Errors by field for a new token's name and role."""
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "Give the token a name (what uses it, e.g. storefront-prod)."
    elif len(name.strip()) > MAX_NAME or any(ord(c) < 32 for c in name):
        errors["name"] = f"Use up to {MAX_NAME} characters, without control characters."
    if role not in {r.value for r in Role}:
        errors["role"] = "Choose admin, support or viewer."
    return errors


def listing() -> list[ApiToken]:
    """Every token, live ones first, newest first."""
    return list(
        db.session.scalars(
            select(ApiToken).order_by(
                ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc(), ApiToken.id.desc()
            )
        )
    )


def revoke(row: ApiToken) -> bool:
    """Revoke a token; False when it already was."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def create(name: str, role: str) -> tuple[ApiToken, str]:
    """A new token row (added, not committed) and its plaintext, which is never stored."""
    plaintext = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = ApiToken(name=name.strip(), role=role, prefix=plaintext[:10], token_hash=_hash(plaintext))
    db.session.add(row)
    return row, plaintext


def authenticate(header: str | None) -> ApiToken | None:
    """The live token an ``Authorization: Bearer …`` header names, or None (any input)."""
    if not header or not isinstance(header, str):
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 200:
        return None
    digest = _hash(value)
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    # The lookup is by hash (no timing signal about the token); compare again in
    # constant time anyway so a future index change cannot introduce one.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
        db.session.commit()
    return row
