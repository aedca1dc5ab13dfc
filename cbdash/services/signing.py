"""Standard Webhooks signing: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,...`` signature over the exact bytes sent."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signature_header(keys: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per active key, space-separated."""
    return " ".join(sign(key, msg_id, timestamp, body) for key in keys)


def mask(secret: str | None) -> str:
    """``whsec_••••••••1a2b``: enough to tell secrets apart, not enough to use one."""
    if not secret:
        return ""
    return SECRET_PREFIX + "••••••••" + secret[-4:]
