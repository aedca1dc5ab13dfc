"""API tokens: random, shown once, stored as SHA-256, compared in constant time.

A live token is remembered per process for ``CACHE_SECONDS``: looking it up costs
more than the rest of an event's ingestion. Any change to a token row made in
this process (revoke, rename) empties the memory at once; a revocation made by
another web process takes effect here within ``CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import event, select

from ..constants import Role
from ..extensions import db
from ..models import ApiToken, utcnow

PREFIX = "cbd_"
TOKEN_BYTES = 32
MAX_NAME = 100
CACHE_SECONDS = 5.0
CACHE_SIZE = 1000
_lock = threading.Lock()


@dataclass(frozen=True)
class Principal:
    """Who an API request acts as: what views and the audit log need of its token."""

    id: int
    name: str
    role: str


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


def _cache() -> dict[str, tuple[float, Principal]]:
    return current_app.extensions.setdefault("cbdash_token_cache", {})  # type: ignore[no-any-return]


def forget_all() -> None:
    """Empty this app's token memory in this process (a token row changed)."""
    from flask import has_app_context

    if has_app_context():
        with _lock:
            _cache().clear()


@event.listens_for(ApiToken, "after_update")
@event.listens_for(ApiToken, "after_delete")
def _token_changed(*_args: Any) -> None:
    forget_all()


def authenticate(header: str | None) -> Principal | None:
    """The live token an ``Authorization: Bearer …`` header names, or None (any input)."""
    if not header or not isinstance(header, str):
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 200:
        return None
    digest = _hash(value)
    cache = _cache()
    hit = cache.get(digest)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    principal = _lookup(digest)
    if principal is not None:
        with _lock:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[digest] = (time.monotonic() + CACHE_SECONDS, principal)
    return principal


def _lookup(digest: str) -> Principal | None:
    # populate_existing: a row already in this session is re-read, never trusted stale.
    row = db.session.scalar(
        select(ApiToken).where(ApiToken.token_hash == digest).execution_options(populate_existing=True)
    )
    # The lookup is by hash (no timing signal about the token); compare again in
    # constant time anyway so a future index change cannot introduce one.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
        db.session.commit()
    return Principal(row.id, row.name, row.role)
