"""API: synchronous invocations and the circuit breaker (routes on the /api/v1 blueprint)."""

from __future__ import annotations

from flask import current_app, jsonify

from ..extensions import db
from ..formatting import iso
from ..services import audit, breaker, callbacks, settings
from ..services import invoke as invoke_service
from .api import ApiError, _get_callback, _json_body, _need, _unknown, bp

INVOKE_FIELDS = {"payload", "timeout"}
SYNC_FIELDS = {"priority", "failure_policy", "fallback_response"}


def _timeout(data: dict) -> float | None:
    raw = data.get("timeout")
    if raw is None:
        return None
    limit = settings.current().max_timeout
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.1 <= raw <= limit:
        raise ApiError(
            400,
            "invalid_field",
            f"timeout must be a number of seconds between 0.1 and {limit}.",
            {"timeout": f"Between 0.1 and {limit} seconds."},
        )
    return float(raw)


@bp.post("/definitions/<name>/invoke")
def invoke_definition(name: str):  # type: ignore[no-untyped-def]
    """Call the definition's active callbacks now and answer with the receiver's response."""
    _need("manage")
    if not callbacks.NAME_RE.match(name):
        raise ApiError(
            400, "invalid_definition", "The definition name must be 3–100 of a-z 0-9 _ . - characters."
        )
    data = _json_body()
    _unknown(data, INVOKE_FIELDS)
    if "payload" not in data:
        raise ApiError(
            400,
            "invalid_field",
            'payload is required: {"payload": {...}, "timeout": 3}.',
            {"payload": "Required."},
        )
    timeout = _timeout(data)
    pending: list[invoke_service.Finalizer] = []
    try:
        result = invoke_service.invoke(name, data["payload"], timeout=timeout, defer=pending)
    except invoke_service.InvokeError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    response = jsonify(result.as_dict())
    response.status_code = result.http_status
    if pending:
        # The attempt and outcome are written once the caller has its answer (same thread,
        # after the body is sent), so a busy database never delays the store.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        response.call_on_close(lambda: invoke_service.run_deferred(app, pending))
    return response


def breaker_json(cb) -> dict:  # type: ignore[no-untyped-def]
    v = breaker.view(cb)
    return {
        "callback_id": cb.id,
        "state": v.state,
        "since": iso(v.since),
        "reason": v.reason,
        "failures_in_window": v.failures,
        "threshold": v.threshold,
        "window_seconds": v.window_seconds,
        "cooldown_seconds": v.cooldown_seconds,
        "trial_at": iso(v.retry_at),
        "failure_policy": cb.failure_policy,
        "fallback_response": cb.fallback_response,
        "priority": cb.priority,
    }


@bp.get("/callbacks/<int:callback_id>/breaker")
@bp.get("/callbacks/<int:callback_id>/sync")
def get_breaker(callback_id: int):  # type: ignore[no-untyped-def]
    return jsonify(breaker_json(_get_callback(callback_id)))


@bp.post("/callbacks/<int:callback_id>/breaker/reset")
def reset_breaker(callback_id: int):  # type: ignore[no-untyped-def]
    _need("manage")
    cb = _get_callback(callback_id)
    _json_body(allow_empty=True)
    previous = breaker.reset(cb)
    audit.record("callback.breaker_reset", "callback", cb.id, {"previous_state": previous})
    db.session.commit()
    return jsonify(breaker_json(cb))


@bp.patch("/callbacks/<int:callback_id>/sync")
def update_sync_settings(callback_id: int):  # type: ignore[no-untyped-def]
    """Set priority, failure_policy and fallback_response (any JSON value, or null)."""
    _need("manage")
    cb = _get_callback(callback_id)
    data = _json_body()
    _unknown(data, SYNC_FIELDS)
    clean, errors = invoke_service.validate_settings(data, cb)
    if errors:
        raise ApiError(400, "invalid_fields", "Some fields are not valid.", errors)
    changes = invoke_service.apply_settings(cb, clean)
    if changes:
        audit.record("callback.sync_settings", "callback", cb.id, {"changes": changes})
    db.session.commit()
    return jsonify(breaker_json(cb))
