"""API tokens: random, shown once, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select

from ..extensions import db
from ..models import ApiToken, utcnow

PREFIX = "cbd_"
TOKEN_BYTES = 32


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create(name: str, role: str) -> tuple[ApiToken, str]:
    """A new token row (added, not committed) and its plaintext, which is never stored."""
    plaintext = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = ApiToken(name=name, role=role, prefix=plaintext[:10], token_hash=_hash(plaintext))
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
