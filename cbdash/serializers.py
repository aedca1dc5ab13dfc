"""JSON shapes the API returns (times as ISO 8601 with Z)."""

from __future__ import annotations

from typing import Any

from .formatting import iso, mask_url, show_bytes
from .models import Attempt, Callback, Delivery
from .services.signing import mask


def callback(cb: Callback, failing_after: int = 3) -> dict[str, Any]:
    return {
        "id": cb.id,
        "definition": cb.definition,
        "url": cb.url,
        "url_display": mask_url(cb.url),
        "timeout": cb.timeout,
        "active": cb.active,
        "status": "active" if cb.active else "inactive",
        "inactive_reason": cb.inactive_reason,
        "disabled_at": iso(cb.disabled_at),
        "description": cb.description,
        "headers": {k: "••••" for k in (cb.headers or {})},
        "retry_schedule": cb.retry_schedule,
        "secret": mask(cb.secret),
        "health": cb.health(failing_after).value,
        "consecutive_failures": cb.consecutive_failures,
        "created_at": iso(cb.created_at),
        "updated_at": iso(cb.updated_at),
    }


def attempt(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": iso(a.started_at),
        "duration_ms": a.duration_ms,
        "timings": a.timings,
        "url": mask_url(a.url),
        "status_code": a.status_code,
        "error_class": a.error_class,
        "error_message": a.error_message,
        "location": a.location,
        "request_headers": a.request_headers,
        "response_headers": a.response_headers,
        "response_excerpt": show_bytes(a.response_excerpt),
        "response_size": a.response_size,
        "response_truncated": a.response_truncated,
    }


def delivery(d: Delivery, with_attempts: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event_id": d.event.uid if d.event else None,
        "callback_id": d.callback_id,
        "definition": d.event.definition if d.event else None,
        "kind": d.kind,
        "status": d.status,
        "status_detail": d.status_detail,
        "attempts": d.attempt_count,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "last_duration_ms": d.last_duration_ms,
        "next_attempt_at": iso(d.next_attempt_shown),
        "created_at": iso(d.created_at),
        "finished_at": iso(d.finished_at),
    }
    if with_attempts:
        data["attempt_log"] = [attempt(a) for a in d.attempts]
        data["payload"] = d.event.payload if d.event else None
    return data
