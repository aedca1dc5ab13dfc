"""Inbound webhooks (SPEC §6a): verify what providers send, store it as an event, relay it.

A provider POSTs to ``/hooks/<slug>``. The raw bytes are verified with the
source's preset, the message is stored as an Event of the source's definition
(deliveries written in the same transaction, the outbox), and the caller gets
the configured answer at once; workers do the fan-out. Refusals are kept with a
capped excerpt and a signature debugger for admins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from ..constants import DeliveryKind, Tab
from ..extensions import db
from ..models import InboundMessage, InboundSource, utcnow
from . import delivery, settings
from .callbacks import HEADER_NAME_RE, NAME_RE
from .signing import generate_secret

log = logging.getLogger(__name__)

SOURCE_PREFIX = "inbound:"  # Event.source of inbound messages: "inbound:<slug>"
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,22}[a-z0-9]$")
JSON_DEDUPE = "json:"  # dedupe on a body field (Stripe sends its event id as "id" in the body)
DEDUPE_JSON_RE = re.compile(r"^json:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
EXCERPT = 1024  # bytes of an unverified body (or signed string) kept for the debugger
MAX_STORED_HEADERS = 50
DIAGNOSE_LIMIT = 64 * 1024  # bodies larger than this are not re-serialised for hints
REDACTED = delivery.REDACTED
# Header names whose values are credentials on top of delivery.SECRET_HEADER (e.g. Shopify's "Hmac").
EXTRA_SECRET_HEADER = re.compile(r"hmac|sig", re.I)
BINARY_MARKER = "encoding"  # the key of the wrapper that carries a body that is not UTF-8 text


class Preset(StrEnum):
    STANDARD = "standard"
    STRIPE = "stripe"
    GITHUB = "github"
    SHOPIFY = "shopify"
    TOKEN = "token"
    NONE = "none"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


class Reason(StrEnum):
    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    TOO_LARGE = "too_large"
    INACTIVE = "inactive"


# What each refusal reason means on the pages, with the status it was answered with.
REASON_LABELS: dict[str, str] = {
    Reason.MISSING_SIGNATURE: "missing signature (401)",
    Reason.MALFORMED_SIGNATURE: "malformed signature (401)",
    Reason.BAD_SIGNATURE: "bad signature (401)",
    Reason.STALE_TIMESTAMP: "stale timestamp (401)",
    Reason.TOO_LARGE: "body over the size limit (413)",
    Reason.INACTIVE: "posted while inactive (404)",
}


@dataclass(frozen=True)
class PresetInfo:
    label: str
    header: str | None  # the header carrying the signature (display)
    dedupe_header: str | None  # the provider's event id header, when it sends one
    generates_secret: bool  # cbdash can make the secret (else the provider issues it)
    key_encoding: str  # how the secret becomes HMAC key bytes (debugger wording)
    help: str


PRESETS: dict[str, PresetInfo] = {
    Preset.STANDARD: PresetInfo(
        "Standard Webhooks",
        "webhook-signature",
        "webhook-id",
        True,
        "the base64-decoded part after whsec_",
        "webhook-id, webhook-timestamp and webhook-signature: v1,<base64 HMAC-SHA256 of "
        "id.timestamp.body>; the key is the base64 part of the whsec_ secret (Svix uses the same "
        "with svix-* headers).",
    ),
    Preset.STRIPE: PresetInfo(
        "Stripe-style (t=…,v1=…)",
        "Stripe-Signature",
        "json:id",
        False,
        "the secret's text as UTF-8 bytes",
        'Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">; the key is the whole '
        "whsec_… text Stripe shows for the endpoint.",
    ),
    Preset.GITHUB: PresetInfo(
        "GitHub (sha256=…)",
        "X-Hub-Signature-256",
        "X-GitHub-Delivery",
        True,
        "the secret's text as UTF-8 bytes",
        "X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>; paste the same secret into the "
        "webhook's settings on GitHub.",
    ),
    Preset.SHOPIFY: PresetInfo(
        "Shopify (base64 HMAC)",
        "X-Shopify-Hmac-Sha256",
        "X-Shopify-Webhook-Id",
        False,
        "the secret's text as UTF-8 bytes",
        "X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>; the key is the app's client secret.",
    ),
    Preset.TOKEN: PresetInfo(
        "Shared token header",
        None,
        None,
        True,
        "the token itself",
        "The sender puts the shared token in a header you name (Authorization: Bearer <token> works "
        "too); nothing is signed, so use HTTPS.",
    ),
    Preset.NONE: PresetInfo(
        "None (no verification)",
        None,
        None,
        False,
        "",
        "Anyone who knows the URL can post events. Use only for trusted networks or testing.",
    ),
}


# ---------------------------------------------------------------------------- verification


@dataclass
class Verdict:
    ok: bool
    reason: str | None = None
    message: str = ""
    debug: dict[str, Any] = field(default_factory=dict)
    used_previous_secret: bool = False


@dataclass
class _Scheme:
    """How one HMAC preset signs: what precedes the body, how digests are written, the key bytes."""

    header: str
    prefix: bytes
    received: list[str]
    encode: Callable[[bytes], str]
    key: Callable[[str], bytes]
    timestamp: int | None = None

    def sign(self, key: bytes, body: bytes) -> str:
        return self.encode(hmac.new(key, self.prefix + body, hashlib.sha256).digest())

    def matches(self, expected: str) -> bool:
        """Constant-time comparison against every signature the sender gave."""
        found = False
        for got in self.received:
            # compare_digest on bytes: header values may hold any characters.
            found |= hmac.compare_digest(expected.encode(), got.encode())
        return found


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _hex(digest: bytes) -> str:
    return digest.hex()


def _utf8_key(secret: str) -> bytes:
    return secret.encode()


def whsec_key(secret: str) -> bytes:
    """Standard Webhooks key bytes: base64-decode what follows ``whsec_``."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


class _Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _standard(h: Mapping[str, str]) -> _Scheme:
    # Svix sends the same scheme under svix-* names.
    msg_id = h.get("webhook-id") or h.get("svix-id")
    stamp = h.get("webhook-timestamp") or h.get("svix-timestamp")
    sig = h.get("webhook-signature") or h.get("svix-signature")
    missing = [
        n
        for n, v in (("webhook-id", msg_id), ("webhook-timestamp", stamp), ("webhook-signature", sig))
        if not v
    ]
    if missing:
        raise _Refusal(Reason.MISSING_SIGNATURE, "Missing header(s): " + ", ".join(missing) + ".")
    assert msg_id and stamp and sig
    try:
        ts = int(stamp.strip())
    except ValueError:
        raise _Refusal(
            Reason.MALFORMED_SIGNATURE, "webhook-timestamp is not a Unix time in seconds."
        ) from None
    received = [part.split(",", 1)[1] for part in sig.split() if part.startswith("v1,")]
    if not received:
        raise _Refusal(Reason.MALFORMED_SIGNATURE, "webhook-signature has no v1,<base64> entry.")
    return _Scheme("webhook-signature", f"{msg_id}.{ts}.".encode(), received, _b64, whsec_key, ts)


def _stripe(h: Mapping[str, str]) -> _Scheme:
    header = h.get("stripe-signature")
    if not header:
        raise _Refusal(Reason.MISSING_SIGNATURE, "Missing header: Stripe-Signature.")
    items = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [v for k, v in items if k == "t"]
    received = [v.strip().lower() for k, v in items if k == "v1"]
    if not stamps or not received:
        raise _Refusal(Reason.MALFORMED_SIGNATURE, "Stripe-Signature needs t=<timestamp> and v1=<hex>.")
    try:
        ts = int(stamps[0])
    except ValueError:
        raise _Refusal(Reason.MALFORMED_SIGNATURE, "Stripe-Signature t= is not a Unix time.") from None
    return _Scheme("Stripe-Signature", f"{ts}.".encode(), received, _hex, _utf8_key, ts)


def _github(h: Mapping[str, str]) -> _Scheme:
    header = h.get("x-hub-signature-256")
    if not header:
        raise _Refusal(Reason.MISSING_SIGNATURE, "Missing header: X-Hub-Signature-256.")
    if not header.startswith("sha256="):
        raise _Refusal(Reason.MALFORMED_SIGNATURE, "X-Hub-Signature-256 must read sha256=<hex>.")
    return _Scheme("X-Hub-Signature-256", b"", [header[7:].strip().lower()], _hex, _utf8_key)


def _shopify(h: Mapping[str, str]) -> _Scheme:
    header = h.get("x-shopify-hmac-sha256")
    if not header:
        raise _Refusal(Reason.MISSING_SIGNATURE, "Missing header: X-Shopify-Hmac-Sha256.")
    return _Scheme("X-Shopify-Hmac-Sha256", b"", [header.strip()], _b64, _utf8_key)


SCHEMES: dict[str, Callable[[Mapping[str, str]], _Scheme]] = {
    Preset.STANDARD: _standard,
    Preset.STRIPE: _stripe,
    Preset.GITHUB: _github,
    Preset.SHOPIFY: _shopify,
}


def verify(
    preset: str,
    keys: list[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    token_header: str = "X-Webhook-Token",
    tolerance: int = 300,
    now: float | None = None,
    explain: bool = True,
) -> Verdict:
    """Check ``body`` (the raw bytes) against the preset's signature headers, in constant time.

    ``explain=False`` skips the debugger's hint (re-signing body and key variants) on a refusal.
    """
    h = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    if preset == Preset.NONE:
        return Verdict(True)
    if preset == Preset.TOKEN:
        return _verify_token(keys, h, token_header)
    if preset not in SCHEMES:
        return Verdict(False, Reason.BAD_SIGNATURE, f"Unknown verification preset {preset!r}.")
    debug: dict[str, Any] = {"preset": preset}
    try:
        scheme = SCHEMES[preset](h)
    except _Refusal as exc:
        debug["hint"] = _header_hint(preset, h) or exc.message
        debug["received"] = _cap(h.get((PRESETS[preset].header or "").lower(), ""))
        return Verdict(False, exc.reason, exc.message, debug)
    matched: int | None = None
    expected: str | None = None
    for index, secret in enumerate(keys):
        try:
            sig = scheme.sign(scheme.key(secret), body)
        except (binascii.Error, ValueError):
            continue  # a secret that does not decode for this preset cannot match
        expected = expected or sig
        if scheme.matches(sig) and matched is None:
            matched = index
    skew = None if scheme.timestamp is None else round(now - scheme.timestamp)
    if matched is not None and (skew is None or abs(skew) <= tolerance):
        return Verdict(True, used_previous_secret=matched > 0)
    signed = scheme.prefix + body
    debug.update(
        signature_header=scheme.header,
        signed=_text(signed[:EXCERPT]),
        signed_size=len(signed),
        signed_truncated=len(signed) > EXCERPT,
        expected=expected or "(the secret does not decode for this preset)",
        received=_cap(" ".join(scheme.received)),
    )
    if skew is not None:
        debug.update(timestamp=scheme.timestamp, skew=skew, tolerance=tolerance)
    if matched is not None:
        age = f"{abs(skew or 0)} s {'old' if (skew or 0) > 0 else 'in the future'}"
        debug["hint"] = (
            f"The signature is valid but the timestamp is {age} (tolerance ±{tolerance} s): "
            "a replayed message, a delayed retry, or a clock that is off on one side."
        )
        return Verdict(
            False, Reason.STALE_TIMESTAMP, f"Timestamp outside the ±{tolerance} s tolerance.", debug
        )
    if explain:
        debug["hint"] = diagnose(preset, scheme, keys, body, h)
    return Verdict(False, Reason.BAD_SIGNATURE, "The signature does not match the body.", debug)


def _bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None for any other value."""
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:]


def _verify_token(keys: list[str], h: Mapping[str, str], token_header: str) -> Verdict:
    """The configured header carries the token; without it, ``Authorization: Bearer <token>`` does."""
    name = token_header.lower()
    got = h.get(name)
    used = token_header
    if name == "authorization":
        got = _bearer(got) if _bearer(got) is not None else got
    elif got is None:
        got = _bearer(h.get("authorization"))
        used = "Authorization"
    debug: dict[str, Any] = {"preset": Preset.TOKEN, "signature_header": used}
    if got is None:
        debug["signature_header"] = token_header
        debug["hint"] = f"The request has neither a {token_header} header nor Authorization: Bearer <token>."
        return Verdict(
            False,
            Reason.MISSING_SIGNATURE,
            f"Missing header: {token_header} (or Authorization: Bearer <token>).",
            debug,
        )
    matched: int | None = None
    for index, key in enumerate(keys):
        if hmac.compare_digest(got.encode(), key.encode()) and matched is None:
            matched = index
    if matched is not None:
        return Verdict(True, used_previous_secret=matched > 0)
    secret = keys[0] if keys else ""
    debug.update(
        signed="(shared token: nothing is signed; the header value is compared with the token)",
        expected=f"{mask(secret)} ({len(secret)} characters)",
        received=f"{mask(got)} ({len(got)} characters)",
    )
    if any(hmac.compare_digest(got.strip().encode(), k.encode()) for k in keys):
        debug["hint"] = (
            "The token matches once surrounding spaces or line breaks are removed: fix the sender."
        )
    elif len(got) != len(secret):
        debug["hint"] = "The token has a different length: a different (or truncated) token was configured."
    else:
        debug["hint"] = "Same length, different token: it was probably rotated on one side only."
    return Verdict(False, Reason.BAD_SIGNATURE, "The token does not match.", debug)


def _header_hint(preset: str, h: Mapping[str, str]) -> str | None:
    """A signature header of another preset points at a wrong preset choice."""
    if preset == Preset.GITHUB and "x-hub-signature" in h:
        return (
            "Only the legacy SHA-1 X-Hub-Signature arrived; GitHub sends X-Hub-Signature-256 "
            "when the webhook has a secret."
        )
    for other, info in PRESETS.items():
        if other != preset and info.header and info.header.lower() in h:
            return (
                f"The request carries {info.header}, the {info.label} signature header: "
                "is this source's preset right?"
            )
    return None


def _key_variants(secret: str) -> list[tuple[str, bytes]]:
    variants = [("the secret's text as UTF-8 bytes", secret.encode())]
    if secret.startswith("whsec_"):
        variants.append(("the secret without its whsec_ prefix, as text", secret[6:].encode()))
    try:
        variants.append(
            ("the base64-decoded secret", base64.b64decode(secret.removeprefix("whsec_"), validate=True))
        )
    except (binascii.Error, ValueError):
        pass
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", secret):
        variants.append(("the hex-decoded secret", bytes.fromhex(secret)))
    return variants


def _body_variants(body: bytes) -> list[tuple[str, bytes]]:
    variants: list[tuple[str, bytes]] = []
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    else:
        for label, kwargs in (
            ("re-encoded compactly", {"separators": (",", ":"), "ensure_ascii": False}),
            ("re-encoded with spaces after , and :", {}),
            ("re-encoded with sorted keys", {"sort_keys": True, "separators": (",", ":")}),
            ("re-encoded with sorted keys and spaces", {"sort_keys": True}),
            ("pretty-printed", {"indent": 2}),
            ("re-encoded with non-ASCII characters escaped", {"separators": (",", ":")}),
        ):
            variants.append((label, json.dumps(data, **kwargs).encode()))  # type: ignore[arg-type]
    variants += [
        ("without surrounding whitespace", body.strip()),
        ("with a trailing newline", body.rstrip(b"\r\n") + b"\n"),
        ("with CRLF line endings changed to LF", body.replace(b"\r\n", b"\n")),
        ("with LF line endings changed to CRLF", body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")),
    ]
    return [(label, v) for label, v in variants if v != body]


def diagnose(preset: str, scheme: _Scheme, keys: list[str], body: bytes, h: Mapping[str, str]) -> str:
    """Why a signature did not match, when the difference points at a known pitfall."""
    info = PRESETS[preset]
    if keys and len(body) <= DIAGNOSE_LIMIT:
        try:
            right_key = scheme.key(keys[0])
        except (binascii.Error, ValueError):
            right_key = None
        for label, key in _key_variants(keys[0]):
            if key != right_key and scheme.matches(scheme.sign(key, body)):
                return (
                    f"Wrong secret encoding: the sender's signature matches this body signed with {label}, "
                    f"but {info.label} uses {info.key_encoding}. Make both sides use the same key bytes."
                )
        if right_key is not None:
            for label, variant in _body_variants(body):
                if scheme.matches(scheme.sign(right_key, variant)):
                    return (
                        f"Re-serialised body: the signature matches the same content {label}, not the bytes "
                        "that arrived. Something between the provider and cbdash (a proxy, middleware, or a "
                        "sender that signs its object instead of the bytes it sends) changed the body; "
                        "signatures only hold over the exact raw bytes."
                    )
    return _header_hint(preset, h) or (
        "No variant of the body or the secret reproduces the received signature: most likely a different "
        "secret (rotated or copied wrongly at the provider), or the body was changed on the way in a way "
        "that cannot be undone (compression, character set conversion)."
    )


# ---------------------------------------------------------------------------- helpers


def mask(secret: str | None) -> str:
    """Enough of a secret to tell two apart, not enough to use one."""
    if not secret:
        return ""
    prefix = "whsec_" if secret.startswith("whsec_") else ""
    tail = secret[-4:] if len(secret) >= 16 else ""
    return f"{prefix}••••••••{tail}"


def _text(data: bytes) -> str:
    """Bytes as storable, printable text: invalid UTF-8 and control bytes (NUL…) escaped."""
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(c if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127) else f"\\x{ord(c):02x}" for c in text)


def _cap(value: str, limit: int = 500) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def new_secret(preset: str) -> str:
    """A fresh secret in the form the preset expects ("" when cbdash cannot make one)."""
    if preset == Preset.STANDARD:
        return generate_secret()
    if preset in (Preset.GITHUB, Preset.TOKEN):
        return secrets.token_urlsafe(32)
    return ""


def secret_error(preset: str, secret: str) -> str | None:
    """Why ``secret`` cannot serve ``preset``, or None."""
    if preset == Preset.NONE:
        return None
    if not secret:
        return "Enter the secret."
    if len(secret) > 255 or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in secret):
        return "Use up to 255 printable characters without spaces."
    if preset == Preset.STANDARD:
        if not secret.startswith("whsec_"):
            return "Standard Webhooks secrets look like whsec_ followed by base64."
        try:
            key = whsec_key(secret)
        except (binascii.Error, ValueError):
            return "The part after whsec_ is not valid base64."
        if len(key) < 16:
            return "The key must be at least 16 bytes (24 or more recommended)."
    elif len(secret) < 8:
        return "Use at least 8 characters."
    return None


def redact(headers: Mapping[str, str], source: InboundSource | Limits) -> dict[str, str]:
    """Request headers as stored: credentials replaced, at most 50, values capped."""
    sensitive = {source.token_header.lower()} if source.preset == Preset.TOKEN else set()
    out: dict[str, str] = {}
    for name, value in list(headers.items())[:MAX_STORED_HEADERS]:
        secret = (
            name.lower() in sensitive
            or delivery.SECRET_HEADER.search(name)
            or EXTRA_SECRET_HEADER.search(name)
        )
        out[_text(name[:100].encode())] = REDACTED if secret else _cap(_text(value.encode()), 1000)
    return out


def parse_payload(body: bytes) -> tuple[Any, bool]:
    """(payload, is_text): the parsed JSON, the text when the body is not JSON, or (not UTF-8)
    ``{"encoding": "base64", "body": "<base64 of the exact bytes>"}`` with is_text true."""

    def _reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")  # NaN/Infinity would make the relayed body invalid JSON

    try:
        return json.loads(body, parse_constant=_reject), False
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    try:
        return body.decode("utf-8"), True
    except UnicodeDecodeError:
        # Not text (binary, gzip, another charset): base64 keeps every byte recoverable.
        return {BINARY_MARKER: "base64", "body": base64.b64encode(body).decode("ascii")}, True


def binary_body(payload: Any, is_text: bool) -> bytes | None:
    """The exact bytes of a body that was stored base64-encoded (not UTF-8), else None.

    Text payloads (``payload_is_text``) are otherwise JSON strings, so a dict there is always
    this wrapper; a JSON body that merely looks like it was parsed, with ``payload_is_text`` false.
    """
    if not is_text or not isinstance(payload, dict) or payload.get(BINARY_MARKER) != "base64":
        return None
    try:
        return base64.b64decode(payload.get("body", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def escaped(data: bytes) -> str:
    """Bytes as printable text for a page: invalid UTF-8 and control bytes shown as \\xNN."""
    return _text(data)


def response_content_type(body: str) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


# ---------------------------------------------------------------------------- rate limit


def _throttled_key(source_id: int) -> str:
    return f"cbdash:inbound:throttled:{source_id}:{time.strftime('%Y%m%d', time.gmtime())}"


def _throttled_hour_key(source_id: int, at: float | None = None) -> str:
    return f"cbdash:inbound:throttled-h:{source_id}:{time.strftime('%Y%m%d%H', time.gmtime(at))}"


THROTTLED_HOURS_KEPT = 8 * 24  # hourly 429 counts outlive the monitoring page's longest window

# One round trip per request: count the hit in the current fixed window and, when over
# the limit, count the 429 for the "rate-limited today" figure and the monitoring hour.
_THROTTLE_LUA = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if count > tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 172800)
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return count
"""


@dataclass(frozen=True)
class Limits:
    """A source as the hot path needs it, cached so floods (429, 401) never query the database."""

    source_id: int
    rate_limit: int
    rate_window: int
    slug: str = ""
    active: bool = True
    preset: str = Preset.NONE
    keys: tuple[str, ...] = ()
    token_header: str = "X-Webhook-Token"
    tolerance: int = 300
    dedupe_header: str | None = None
    loaded_at: float = 0.0  # time.monotonic() when read from the database

    @property
    def id(self) -> int:
        return self.source_id


LIMITS_TTL = 5.0  # seconds a slug's snapshot is used for rate limiting in this process
RECHECK_AFTER = 1.0  # seconds: an older snapshot is read again before it refuses a message
_LIMITS_MAX = 1024


def _snapshot(source: InboundSource) -> Limits:
    return Limits(
        source.id,
        source.rate_limit,
        source.rate_window,
        source.slug,
        bool(source.active),
        source.preset,
        tuple(source.verifying_secrets()),
        source.token_header,
        source.tolerance,
        source.dedupe_header,
        time.monotonic(),
    )


@sa_event.listens_for(InboundSource, "after_insert")
@sa_event.listens_for(InboundSource, "after_update")
@sa_event.listens_for(InboundSource, "after_delete")
def _forget_snapshots(_mapper: Any, _conn: Any, _target: InboundSource) -> None:
    # A change made in this process is seen at once; other processes see it within
    # RECHECK_AFTER (before refusing) or LIMITS_TTL (rate limits).
    from flask import current_app, has_app_context

    if has_app_context():
        current_app.extensions.pop("cbdash_inbound_limits", None)


def limits(slug: str, max_age: float = LIMITS_TTL) -> Limits | None:
    """The source's snapshot (rate limit, activation, secrets), cached for ``max_age`` seconds.

    Unknown slugs are cached too (as None). Refusals use a snapshot at most RECHECK_AFTER
    seconds old (``receive`` reads it again first), so a rotated secret or a re-activated
    source is never refused for longer than that; accepting always reads the row fresh.
    """
    from flask import current_app

    cache: dict[str, tuple[float, Limits | None]] = current_app.extensions.setdefault(
        "cbdash_inbound_limits", {}
    )
    now = time.monotonic()
    hit = cache.get(slug)
    if hit is not None and hit[0] > now - max_age:
        return hit[1]
    source = find(slug)
    value = None if source is None else _snapshot(source)
    if len(cache) >= _LIMITS_MAX:
        cache.clear()  # bounded: random slugs cannot grow it without limit
    cache[slug] = (now, value)
    return value


@dataclass
class _Exhausted:
    """A window this process already saw go over the limit: it stays over until it ends."""

    until: float
    pending: int = 0  # 429s answered here and not yet added to Redis's daily count
    flushed_at: float = 0.0


FLUSH_EVERY = 1.0  # seconds between adding locally answered 429s to the daily count


def _exhausted() -> dict[int, _Exhausted]:
    from flask import current_app

    return current_app.extensions.setdefault("cbdash_inbound_exhausted", {})


def _flush(redis: Any, source_id: int, memo: _Exhausted, now: float) -> None:
    count, memo.pending, memo.flushed_at = memo.pending, 0, now
    if count:
        with redis.pipeline(transaction=False) as pipe:
            pipe.incrby(_throttled_key(source_id), count)
            pipe.expire(_throttled_key(source_id), 2 * 86400)
            pipe.incrby(_throttled_hour_key(source_id, now), count)
            pipe.expire(_throttled_hour_key(source_id, now), THROTTLED_HOURS_KEPT * 3600)
            pipe.execute()


def throttle(source: InboundSource | Limits, now: float | None = None) -> int:
    """Fixed-window rate limit in Redis: seconds to wait (for Retry-After), or 0 to go ahead.

    Redis holds the count. Counts only grow within a window, so once this process has
    seen a window go over the limit it answers 429 locally until the window ends: a
    flood then costs neither a database query nor a Redis round trip per request.
    """
    from ..queue import get_redis

    source_id = source.source_id if isinstance(source, Limits) else source.id
    if source.rate_limit <= 0:
        return 0
    now = time.time() if now is None else now
    memo = _exhausted().get(source_id)
    if memo is not None and memo.until > now:
        memo.pending += 1
        if now - memo.flushed_at >= FLUSH_EVERY:
            try:
                _flush(get_redis(), source_id, memo, now)
            except Exception:  # noqa: BLE001 - the daily figure is informational
                pass
        return max(1, math.ceil(memo.until - now))
    window = max(int(source.rate_window), 1)
    start = int(now // window) * window
    try:
        redis = get_redis()
        if memo is not None:
            _flush(redis, source_id, memo, now)
        script = redis.register_script(_THROTTLE_LUA)
        count = int(
            script(
                keys=[
                    f"cbdash:inbound:rl:{source_id}:{start}",
                    _throttled_key(source_id),
                    _throttled_hour_key(source_id, now),
                ],
                args=[window + 5, source.rate_limit, THROTTLED_HOURS_KEPT * 3600],
            )
        )
    except Exception as exc:  # noqa: BLE001 - no Redis: accept rather than drop a provider's messages
        log.warning("inbound rate limit unavailable (%s); letting the request through", exc)
        return 0
    if count <= source.rate_limit:
        return 0
    _exhausted()[source_id] = _Exhausted(until=start + window, flushed_at=now)
    return max(1, math.ceil(start + window - now))


def throttled_today(source_ids: list[int]) -> dict[int, int]:
    """Requests answered 429 today (UTC) per source; counted, not stored individually."""
    from ..queue import get_redis

    if not source_ids:
        return {}
    memos = _exhausted()
    local = {i: memos[i].pending if i in memos else 0 for i in source_ids}
    try:
        values = get_redis().mget([_throttled_key(i) for i in source_ids])
    except Exception:  # noqa: BLE001
        return local
    return {i: int(v or 0) + local[i] for i, v in zip(source_ids, values, strict=True)}


REFUSALS_STORED = 30  # refusals kept (with the debugger) per source per minute in each process


@dataclass
class _RefusalBudget:
    minute: int
    stored: int = 0
    pending: int = 0  # refused, not stored, not yet added to Redis's hourly count
    flushed_at: float = 0.0


def _refusals_key(source_id: int, at: float | None = None) -> str:
    return f"cbdash:inbound:refused-h:{source_id}:{time.strftime('%Y%m%d%H', time.gmtime(at))}"


def _budgets() -> dict[int, _RefusalBudget]:
    from flask import current_app

    return current_app.extensions.setdefault("cbdash_inbound_refusals", {})


def _flush_refusals(source_id: int, budget: _RefusalBudget, now: float) -> None:
    from ..queue import get_redis

    count, budget.pending, budget.flushed_at = budget.pending, 0, now
    if not count:
        return
    log.warning("inbound: %d more refusals for source %d counted, not stored", count, source_id)
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            pipe.incrby(_refusals_key(source_id, now), count)
            pipe.expire(_refusals_key(source_id, now), THROTTLED_HOURS_KEPT * 3600)
            pipe.execute()
    except Exception:  # noqa: BLE001 - the count is informational; the answer must not fail
        pass


def _store_refusal(source_id: int, now: float | None = None) -> bool:
    """True while this minute's budget of stored refusals lasts; past it the refusal is only counted.

    A flood of bad signatures then costs no database write, no log line and no debugger
    per request: the first REFUSALS_STORED a minute are kept in full, the rest counted.
    """
    now = time.time() if now is None else now
    minute = int(now // 60)
    budgets = _budgets()
    budget = budgets.get(source_id)
    if budget is None or budget.minute != minute:
        if budget is not None:
            _flush_refusals(source_id, budget, now)
        budget = budgets[source_id] = _RefusalBudget(minute, flushed_at=now)
    if budget.stored < REFUSALS_STORED:
        budget.stored += 1
        return True
    budget.pending += 1
    if now - budget.flushed_at >= FLUSH_EVERY:
        _flush_refusals(source_id, budget, now)
    return False


def unstored_refusals_since(
    source_ids: list[int], since: datetime, now: datetime | None = None
) -> dict[int, int]:
    """Refusals past the per-minute budget (counted in Redis per hour, not stored) per source."""
    budgets = _budgets()
    local = {i: budgets[i].pending if i in budgets else 0 for i in source_ids}
    return _hourly_counts(_refusals_key, source_ids, since, now, local)


UNSTORED_SHOWN = timedelta(
    days=7
)  # the Inbound pages show counted-only refusals of this long (Monitoring's 7 d)


def unstored_refusals_recent(source_ids: list[int]) -> dict[int, int]:
    """Refusals counted but not stored (past REFUSALS_STORED a minute) in the last UNSTORED_SHOWN."""
    return unstored_refusals_since(source_ids, utcnow() - UNSTORED_SHOWN)


def refusal_reasons(source_id: int) -> dict[str, int]:
    """Stored refusals of a source by reason (bad signature, too large, inactive…), most first."""
    rows = db.session.execute(
        select(InboundMessage.reason, func.count())
        .where(InboundMessage.source_id == source_id, InboundMessage.outcome == Outcome.REFUSED)
        .group_by(InboundMessage.reason)
    ).all()
    return dict(sorted(((reason or "unknown", n) for reason, n in rows), key=lambda r: (-r[1], r[0])))


def throttled_since(source_ids: list[int], since: datetime, now: datetime | None = None) -> dict[int, int]:
    """Requests answered 429 per source from the hour holding ``since`` (UTC) until now."""
    memos = _exhausted()
    local = {i: memos[i].pending if i in memos else 0 for i in source_ids}
    return _hourly_counts(_throttled_hour_key, source_ids, since, now, local)


def _hourly_counts(
    key: Callable[[int, float], str],
    source_ids: list[int],
    since: datetime,
    now: datetime | None,
    local: dict[int, int],
) -> dict[int, int]:
    """Sum of hourly Redis counters (kept 8 days) from the hour holding ``since``, plus ``local``.

    A window is therefore read to the whole hour it starts in.
    """
    from ..queue import get_redis

    result = dict(local)  # counted in this process, not yet in Redis
    if not source_ids:
        return result
    end = (now or utcnow()).replace(tzinfo=UTC).timestamp()
    hour = since.replace(minute=0, second=0, microsecond=0, tzinfo=UTC).timestamp()
    stamps = []
    while hour <= end and len(stamps) <= THROTTLED_HOURS_KEPT:
        stamps.append(hour)
        hour += 3600
    keys = [(i, key(i, at)) for i in source_ids for at in stamps]
    try:
        values = get_redis().mget([k for _, k in keys])
    except Exception:  # noqa: BLE001 - the figure is informational; the page must still show
        return result
    for (i, _), v in zip(keys, values, strict=True):
        result[i] += int(v or 0)
    return result


# ---------------------------------------------------------------------------- receiving


@dataclass
class Reply:
    status: int
    body: str
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delivery_ids: list[int] = field(default_factory=list)
    message_id: int | None = None
    outcome: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # ms, for the Server-Timing header


def _error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, json.dumps({"error": {"code": code, "message": message}}), **extra)


def _configured(source: InboundSource) -> Reply:
    return Reply(source.response_status, source.response_body, response_content_type(source.response_body))


def _refuse(
    source: InboundSource | Limits,
    status: int,
    reason: str,
    detail: str,
    headers: Mapping[str, str],
    remote_addr: str | None,
    body: bytes | None = None,
    body_size: int = 0,
    debug: dict[str, Any] | None = None,
) -> InboundMessage:
    msg = InboundMessage(
        source_id=source.id,
        received_at=utcnow(),
        outcome=Outcome.REFUSED,
        status_code=status,
        reason=reason,
        detail=detail[:500],
        provider_id=_provider_id(source, headers),
        headers=redact(headers, source),
        # Unverified bodies are not kept beyond a capped excerpt.
        body_excerpt=None if body is None else _text(body[:EXCERPT]),
        body_size=body_size,
        debug=debug,
        remote_addr=remote_addr,
    )
    db.session.add(msg)
    db.session.commit()
    log.warning("inbound %s refused (%s %s): %s", source.slug, status, reason, detail)
    return msg


def _provider_id(
    source: InboundSource | Limits, headers: Mapping[str, str], payload: Any = None
) -> str | None:
    """The provider's event id: a header's value, or a field of the verified JSON body (``json:id``)."""
    spec = source.dedupe_header
    if not spec:
        return None
    if spec.startswith(JSON_DEDUPE):
        value: Any = payload
        for part in spec[len(JSON_DEDUPE) :].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        return str(value).strip()[:255] or None
    wanted = spec.lower()
    for name, value in headers.items():
        if name.lower() == wanted and value.strip():
            return value.strip()[:255]
    return None


def _duplicate(
    source: InboundSource, provider_id: str, headers: Mapping[str, str], remote_addr: str | None, size: int
) -> Reply:
    first = db.session.scalar(
        select(InboundMessage).where(
            InboundMessage.source_id == source.id, InboundMessage.dedupe_key == provider_id
        )
    )
    msg = InboundMessage(
        source_id=source.id,
        received_at=utcnow(),
        outcome=Outcome.DUPLICATE,
        status_code=source.response_status,
        detail=f"repeat of message #{first.id}" if first else "repeat of an earlier message",
        provider_id=provider_id,
        event_id=first.event_id if first else None,
        headers=redact(headers, source),
        body_size=size,
        remote_addr=remote_addr,
    )
    db.session.add(msg)
    db.session.commit()
    reply = _configured(source)
    reply.message_id, reply.outcome = msg.id, Outcome.DUPLICATE
    return reply


def _verify(
    snap: Limits, headers: Mapping[str, str], body: bytes, now: float | None, explain: bool = True
) -> Verdict:
    return verify(
        snap.preset,
        list(snap.keys),
        headers,
        body,
        token_header=snap.token_header,
        tolerance=snap.tolerance,
        now=now,
        explain=explain,
    )


def find(slug: str) -> InboundSource | None:
    if not SLUG_RE.match(slug):
        return None
    return db.session.scalar(select(InboundSource).where(InboundSource.slug == slug))


def receive(
    slug: str,
    headers: Mapping[str, str],
    read_body: Callable[[int], bytes | None],
    remote_addr: str | None = None,
    now: float | None = None,
) -> Reply:
    """Handle one POST to ``/hooks/<slug>``; ``read_body(limit)`` gives the raw bytes or None when over."""
    started = time.perf_counter()
    snap = limits(slug)
    if snap is None:
        log.warning("inbound: POST to unknown slug %r from %s", slug[:40], remote_addr)
        return _error(404, "not_found", "There is no inbound webhook at this address.")
    # Rate limit first: a flood is answered from Redis alone, before any database work.
    wait = throttle(snap, now)
    if wait:
        return _error(
            429,
            "rate_limited",
            f"Too many requests for this source; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
            outcome="throttled",
        )
    # Refusals are decided on the cached snapshot (read again when over a second old), so a
    # flood of bad signatures costs no query; only what is accepted reads the row fresh.
    if not snap.active:
        snap = limits(slug, RECHECK_AFTER)
        if snap is None:
            return _error(404, "not_found", "There is no inbound webhook at this address.")
    if not snap.active:
        # Answer like an unknown slug (nothing to learn from probing), but tell the admins.
        if _store_refusal(snap.source_id, now):
            _refuse(snap, 404, Reason.INACTIVE, "The source is inactive.", headers, remote_addr)
        return _error(404, "not_found", "There is no inbound webhook at this address.")
    limit = settings.current().payload_limit
    body = read_body(limit)
    if body is None:
        if _store_refusal(snap.source_id, now):
            _refuse(snap, 413, Reason.TOO_LARGE, f"The body is over {limit} bytes.", headers, remote_addr)
        return _error(413, "payload_too_large", f"The body is over {limit} bytes.")
    verdict = _verify(snap, headers, body, now, explain=False)
    if not verdict.ok:
        fresh = limits(slug, RECHECK_AFTER)
        if fresh is not None and fresh is not snap:
            snap, verdict = fresh, _verify(fresh, headers, body, now, explain=False)
    verified = time.perf_counter()
    if not verdict.ok:
        reply = _error(401, verdict.reason or "unauthorized", verdict.message)
        reply.outcome = Outcome.REFUSED
        if _store_refusal(snap.source_id, now):
            if verdict.reason == Reason.BAD_SIGNATURE:
                verdict = _verify(snap, headers, body, now)  # again, with the debugger's hint
            msg = _refuse(
                snap,
                401,
                verdict.reason or Reason.BAD_SIGNATURE,
                verdict.message,
                headers,
                remote_addr,
                body,
                len(body),
                verdict.debug,
            )
            reply.message_id = msg.id
        return reply

    source = find(slug)
    if source is None:  # deleted within the snapshot's life
        return _error(404, "not_found", "There is no inbound webhook at this address.")
    if not source.active:  # deactivated in another process within the snapshot's life
        _refuse(source, 404, Reason.INACTIVE, "The source is inactive.", headers, remote_addr)
        return _error(404, "not_found", "There is no inbound webhook at this address.")
    if tuple(source.verifying_secrets()) != snap.keys:
        verdict = _verify(_snapshot(source), headers, body, now)  # a secret changed meanwhile
        if not verdict.ok:
            msg = _refuse(
                source,
                401,
                verdict.reason or Reason.BAD_SIGNATURE,
                verdict.message,
                headers,
                remote_addr,
                body,
                len(body),
                verdict.debug,
            )
            reply = _error(401, verdict.reason or "unauthorized", verdict.message)
            reply.message_id, reply.outcome = msg.id, Outcome.REFUSED
            return reply

    payload, is_text = parse_payload(body)
    provider_id = _provider_id(source, headers, None if is_text else payload)
    if provider_id and db.session.scalar(
        select(InboundMessage.id).where(
            InboundMessage.source_id == source.id, InboundMessage.dedupe_key == provider_id
        )
    ):
        return _duplicate(source, provider_id, headers, remote_addr, len(body))
    event, deliveries = delivery.create_event(source.definition, payload, source=SOURCE_PREFIX + source.slug)
    for d in deliveries:
        # Relays are their own kind in the log and on the monitoring page; the kind is
        # kept by every retry (attempts of the same delivery) and follows the usual rules.
        d.kind = DeliveryKind.INBOUND
    msg = InboundMessage(
        source_id=source.id,
        received_at=event.created_at,
        outcome=Outcome.ACCEPTED,
        status_code=source.response_status,
        detail="verified with the previous secret (still in its overlap)"
        if verdict.used_previous_secret
        else None,
        dedupe_key=provider_id,
        provider_id=provider_id,
        event=event,
        headers=redact(headers, source),
        body_size=len(body),
        payload_is_text=is_text,
        remote_addr=remote_addr,
    )
    db.session.add(msg)
    try:
        db.session.commit()
    except IntegrityError:
        # The same provider id committed concurrently: that one won, this is the repeat.
        db.session.rollback()
        assert provider_id is not None
        return _duplicate(source, provider_id, headers, remote_addr, len(body))
    stored = time.perf_counter()
    reply = _configured(source)
    reply.delivery_ids = [d.id for d in deliveries]
    reply.message_id, reply.outcome = msg.id, Outcome.ACCEPTED
    reply.timings = {"verify": (verified - started) * 1000, "store": (stored - verified) * 1000}
    return reply


# ---------------------------------------------------------------------------- managing sources

FIELDS = (
    "slug",
    "preset",
    "secret",
    "token_header",
    "definition",
    "dedupe_header",
    "response_status",
    "response_body",
    "tolerance",
    "rate_limit",
    "rate_window",
    "description",
    "active",
)


def _int(raw: Any, low: int, high: int, message: str) -> tuple[int | None, str | None]:
    try:
        if isinstance(raw, bool) or raw is None or str(raw).strip() == "":
            raise ValueError
        value = int(str(raw).strip())
    except (ValueError, TypeError):
        return None, "Enter a whole number."
    if not low <= value <= high:
        return None, message
    return value, None


def validate(
    data: dict[str, Any], source: InboundSource | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check source fields from the form; return (clean values, errors by field)."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def text(name: str) -> str:
        value = data.get(name)
        return value.strip() if isinstance(value, str) else ""

    slug = text("slug").lower()
    if not SLUG_RE.match(slug):
        errors["slug"] = (
            "Use 3–24 lowercase letters, digits, dashes or underscores, starting and ending with a "
            "letter or digit (for example stripe-payments)."
        )
    elif db.session.scalar(
        select(InboundSource.id).where(
            InboundSource.slug == slug, InboundSource.id != (source.id if source else -1)
        )
    ):
        errors["slug"] = f"/hooks/{slug} is already used by another source."
    else:
        clean["slug"] = slug

    preset = text("preset")
    if preset not in PRESETS:
        errors["preset"] = "Choose a verification preset."
    else:
        clean["preset"] = preset

    token_header = text("token_header") or "X-Webhook-Token"
    if not HEADER_NAME_RE.match(token_header):
        errors["token_header"] = "Enter a valid header name, e.g. X-Webhook-Token."
    else:
        clean["token_header"] = token_header

    secret = text("secret")
    if "preset" in clean:
        if secret:
            error = secret_error(preset, secret)
            if error:
                errors["secret"] = error
            else:
                clean["secret"] = secret
        elif preset == Preset.NONE:
            pass
        elif source is not None and source.secret and secret_error(preset, source.secret) is None:
            pass  # keep the current secret
        elif PRESETS[preset].generates_secret:
            clean["secret"] = new_secret(preset)
        else:
            errors["secret"] = (
                f"Paste the signing secret the provider shows for this endpoint ({PRESETS[preset].label})."
            )

    definition = text("definition")
    if not NAME_RE.match(definition):
        errors["definition"] = (
            "Use 3–100 lowercase letters, digits, dots, dashes or underscores "
            "(for example payment.confirmed)."
        )
    else:
        clean["definition"] = definition

    dedupe = text("dedupe_header")
    if dedupe and (len(dedupe) > 100 or not (HEADER_NAME_RE.match(dedupe) or DEDUPE_JSON_RE.match(dedupe))):
        errors["dedupe_header"] = (
            "Enter a valid header name (e.g. webhook-id), json:<field> for a body field (e.g. json:id), "
            "or leave empty."
        )
    else:
        clean["dedupe_header"] = dedupe or None

    status, error = _int(data.get("response_status", 200), 200, 299, "Answer with a 2xx status (200–299).")
    if error:
        errors["response_status"] = error
    else:
        clean["response_status"] = status
    body = data.get("response_body") or ""
    if not isinstance(body, str) or len(body) > 2000:
        errors["response_body"] = "Keep the response body under 2000 characters."
    elif status in (204, 205) and body.strip():
        errors["response_body"] = f"A {status} answer has no body: leave it empty or choose 200."
    else:
        clean["response_body"] = body.strip()

    for name, low, high, message in (
        ("tolerance", 30, 3600, "Choose between 30 and 3600 seconds."),
        ("rate_limit", 0, 1_000_000, "Choose between 0 (no limit) and 1000000 requests."),
        ("rate_window", 1, 3600, "Choose between 1 and 3600 seconds."),
    ):
        value, error = _int(data.get(name), low, high, message)
        if error:
            errors[name] = error
        else:
            clean[name] = value

    desc = data.get("description") or ""
    if not isinstance(desc, str) or len(desc) > 2000:
        errors["description"] = "Keep the description under 2000 characters."
    else:
        clean["description"] = desc.strip()

    active = data.get("active", "active")
    if active in (True, "active", "true", "on", "1"):
        clean["active"] = True
    elif active in (False, "inactive", "false", "off", "0"):
        clean["active"] = False
    else:
        errors["active"] = "Status must be active or inactive."
    return clean, errors


def create(clean: dict[str, Any]) -> InboundSource:
    """A new source (not committed)."""
    source = InboundSource(**{k: v for k, v in clean.items() if k in FIELDS})
    source.secret = clean.get("secret", "")
    db.session.add(source)
    return source


def update(source: InboundSource, clean: dict[str, Any]) -> dict[str, Any]:
    """Apply changes; return {field: [old, new]} for the audit log (secrets never included)."""
    changes: dict[str, Any] = {}
    for name, value in clean.items():
        if name == "secret":
            if value != source.secret:
                _replace_secret(source, value)
                changes["secret"] = "replaced"
            continue
        if getattr(source, name) != value:
            changes[name] = [getattr(source, name), value]
            setattr(source, name, value)
    return changes


def _replace_secret(source: InboundSource, secret: str) -> None:
    # The old secret keeps verifying for the overlap, so messages already signed
    # (or retried by the provider) are not refused while the provider switches.
    if source.secret:
        source.previous_secret = source.secret
        source.previous_secret_expires_at = utcnow() + timedelta(
            hours=settings.current().secret_overlap_hours
        )
    source.secret = secret


def rotate(source: InboundSource) -> bool:
    """A new generated secret (the old one verifies during the overlap); False when the provider issues it."""
    if not PRESETS[source.preset].generates_secret:
        return False
    _replace_secret(source, new_secret(source.preset))
    return True


def counts() -> dict[str, int]:
    """Sources per tab."""
    rows = db.session.execute(select(InboundSource.active, func.count()).group_by(InboundSource.active)).all()
    by = {bool(active): n for active, n in rows}
    return {Tab.ALL: sum(by.values()), Tab.ACTIVE: by.get(True, 0), Tab.INACTIVE: by.get(False, 0)}


@dataclass
class Page:
    items: list[InboundSource]
    page: int
    pages: int
    total: int
    per_page: int


def listing(tab: str, q: str = "", page: int = 1, per_page: int = 25) -> Page:
    """One page of sources for a tab and search, newest first."""
    stmt = select(InboundSource)
    if tab == Tab.ACTIVE:
        stmt = stmt.where(InboundSource.active.is_(True))
    elif tab == Tab.INACTIVE:
        stmt = stmt.where(InboundSource.active.is_(False))
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(
                InboundSource.slug.ilike(like, escape="\\"), InboundSource.definition.ilike(like, escape="\\")
            )
        )
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    items = list(
        db.session.scalars(
            stmt.order_by(InboundSource.created_at.desc(), InboundSource.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    return Page(items, page, pages, total, per_page)


def outcome_counts(source_ids: list[int], since: datetime | None = None) -> dict[int, dict[str, int]]:
    """Accepted, duplicate and refused messages per source (received since ``since``, if given)."""
    result = {i: {o.value: 0 for o in Outcome} for i in source_ids}
    if not source_ids:
        return result
    stmt = select(InboundMessage.source_id, InboundMessage.outcome, func.count()).where(
        InboundMessage.source_id.in_(source_ids)
    )
    if since is not None:
        stmt = stmt.where(InboundMessage.received_at >= since)
    rows = db.session.execute(stmt.group_by(InboundMessage.source_id, InboundMessage.outcome)).all()
    for source_id, outcome, n in rows:
        result[source_id][outcome] = n
    return result


@dataclass
class SourceActivity:
    source: InboundSource
    counts: dict[str, int]  # by Outcome
    throttled: int  # answered 429 (counted per hour, not stored)


@dataclass
class Activity:
    rows: list[SourceActivity]
    total: int  # sources in all (the panel lists at most ``limit``)


def activity(since: datetime, limit: int = 50) -> Activity:
    """Per-source accepted, duplicate, refused and throttled counts since ``since`` (the monitoring panel)."""
    total = db.session.scalar(select(func.count()).select_from(InboundSource)) or 0
    sources = list(
        db.session.scalars(
            select(InboundSource).order_by(InboundSource.active.desc(), InboundSource.slug).limit(limit)
        )
    )
    ids = [s.id for s in sources]
    counts = outcome_counts(ids, since)
    for source_id, n in unstored_refusals_since(ids, since).items():
        counts[source_id][Outcome.REFUSED] += n  # past the per-minute budget: counted, not stored
    throttled = throttled_since(ids, since)
    return Activity([SourceActivity(s, counts[s.id], throttled[s.id]) for s in sources], total)


def messages(
    source: InboundSource, outcome: str = "", page: int = 1, per_page: int = 50
) -> tuple[list, int, int]:
    """(messages newest first, page, pages) for one source, optionally one outcome."""
    stmt = select(InboundMessage).where(InboundMessage.source_id == source.id)
    if outcome in {o.value for o in Outcome}:
        stmt = stmt.where(InboundMessage.outcome == outcome)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    rows = list(
        db.session.scalars(
            stmt.order_by(InboundMessage.id.desc()).limit(per_page).offset((page - 1) * per_page)
        )
    )
    return rows, page, pages


def prune_messages(age: timedelta, batch: int = 2000) -> int:
    """Delete inbound messages older than ``age`` in small batches; returns how many.

    Meant for the retention job next to attempts and payloads (the events of accepted
    messages are pruned there, with their deliveries).
    """
    from sqlalchemy import delete

    cutoff = utcnow() - age
    total = 0
    while True:
        ids = list(
            db.session.scalars(
                select(InboundMessage.id).where(InboundMessage.received_at < cutoff).limit(batch)
            )
        )
        if not ids:
            return total
        db.session.execute(delete(InboundMessage).where(InboundMessage.id.in_(ids)))
        db.session.commit()
        total += len(ids)
