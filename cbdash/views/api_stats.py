"""The monitoring figures through the API: ``GET /api/v1/stats`` and per callback."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from ..formatting import iso
from ..models import utcnow
from ..services import monitoring, settings
from .api import ApiError, _get_callback, _need, bp


def _window() -> monitoring.Window:
    try:
        return monitoring.window(request.args.get("window") or monitoring.DEFAULT_WINDOW, utcnow())
    except ValueError as exc:
        raise ApiError(
            400,
            "invalid_parameter",
            f"window must be one of {', '.join(monitoring.WINDOWS)}.",
            {"window": str(exc)},
        ) from exc


def _window_json(w: monitoring.Window) -> dict[str, Any]:
    return {
        "name": w.key,
        "start": iso(w.start),
        "end": iso(w.end),
        "bucket_seconds": int(w.step.total_seconds()),
    }


def _series(points: list[monitoring.Point]) -> list[dict[str, Any]]:
    return [
        {"start": iso(p.start), "end": iso(p.end), "succeeded": p.succeeded, "failed": p.failed}
        for p in points
    ]


@bp.get("/stats")
def stats():  # type: ignore[no-untyped-def]
    """Figures for all callbacks over ``window`` (1h, 24h or 7d), plus live queue state."""
    _need("view")
    w = _window()
    ov = monitoring.overview(w, settings.current().failing_after)
    return jsonify(
        {
            "window": _window_json(w),
            **ov.totals.as_dict(),
            "open_deliveries": ov.open,
            "callbacks": ov.health,
            "series": _series(ov.points),
            "queue": monitoring.queue_state().as_dict(),
        }
    )


@bp.get("/callbacks/<int:callback_id>/stats")
def callback_stats(callback_id: int):  # type: ignore[no-untyped-def]
    """Figures for one callback over ``window``, with its health and last status."""
    _need("view")
    cb = _get_callback(callback_id)
    w = _window()
    figures = monitoring.stats_for(w, [cb.id])[cb.id]
    return jsonify(
        {
            "callback_id": cb.id,
            "definition": cb.definition,
            "window": _window_json(w),
            **figures.as_dict(),
            "health": cb.health(settings.current().failing_after).value,
            "active": cb.active,
            "inactive_reason": cb.inactive_reason,
            "consecutive_failures": cb.consecutive_failures,
            "last_attempt_at": iso(cb.last_attempt_at),
            "last_status_code": cb.last_status_code,
            "last_error": cb.last_error,
            "series": _series(monitoring.series(w, cb.id)),
        }
    )
