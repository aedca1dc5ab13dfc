"""Alerts: auto-disabled callbacks shown as a banner, and an optional alert webhook."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import current_app
from sqlalchemy import select

from ..constants import AUTO_DISABLED_PREFIX
from ..extensions import db
from ..formatting import mask_url
from ..models import Callback, new_uid, utcnow
from . import settings, transport
from .signing import signature_header


def disabled_callbacks(limit: int = 5) -> list[Callback]:
    """Auto-disabled callbacks, newest first, for the alert banner."""
    return list(
        db.session.scalars(
            select(Callback)
            .where(
                Callback.deleted_at.is_(None),
                Callback.active.is_(False),
                Callback.inactive_reason.startswith(AUTO_DISABLED_PREFIX),
            )
            .order_by(Callback.disabled_at.desc())
            .limit(limit)
        )
    )


class AlertFailed(Exception):
    """The alert webhook did not answer 2xx (the job raises so RQ retries it)."""


def disabled_alert_body(cb: Callback) -> dict[str, Any]:
    """The JSON an alert receiver gets when a callback was auto-disabled."""
    return {
        "id": new_uid("alrt"),
        "type": "callback.auto_disabled",
        "timestamp": utcnow().isoformat(timespec="milliseconds") + "Z",
        "data": {
            "callback_id": cb.id,
            "definition": cb.definition,
            "url": mask_url(cb.url),
            "reason": cb.inactive_reason,
            "disabled_at": cb.disabled_at.isoformat(timespec="seconds") + "Z" if cb.disabled_at else None,
            "consecutive_failures": cb.consecutive_failures,
        },
    }


def send_disabled_alert(callback_id: int) -> transport.Response | None:
    """POST a signed JSON alert to ``CBDASH_ALERT_URL``; None when there is nothing to send."""
    cfg = current_app.config
    url = cfg.get("ALERT_URL")
    cb = db.session.get(Callback, callback_id)
    if not url or cb is None or not cb.auto_disabled:
        return None  # re-enabled before the alert went out: nothing to say
    payload = disabled_alert_body(cb)
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": transport.USER_AGENT,
        "webhook-id": payload["id"],
        "webhook-timestamp": str(timestamp),
    }
    secret = cfg.get("ALERT_SECRET")
    if secret:
        headers["webhook-signature"] = signature_header([secret], payload["id"], timestamp, body)
    # The operator's own URL, still through the SSRF guard: internal alert
    # receivers must be listed in CBDASH_ALLOWED_TARGETS like any other.
    result = transport.post(url, body, headers, 10.0, settings.current().policy)
    if not result.ok:
        raise AlertFailed(f"alert to {mask_url(url)} failed: {result.error_message}")
    return result
