"""Synchronous calls on the callback page: breaker state and reset, failure policy, "Call now"."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, flash, g, make_response, redirect, render_template, request, url_for

from .. import htmx
from ..extensions import db
from ..models import Callback, Delivery
from ..permissions import require
from ..services import audit, breaker, catalogue, settings
from ..services import invoke as invoke_service

bp = Blueprint("sync", __name__, url_prefix="/settings/callbacks")


def _get(callback_id: int) -> Callback:
    cb = db.session.get(Callback, callback_id)
    if cb is None or cb.deleted_at is not None:
        abort(404, description="That callback does not exist (it may have been deleted).")
    return cb


@bp.app_template_global()
def sync_panel(cb: Callback) -> dict[str, Any]:
    """Everything ``callbacks/_sync.html`` shows for ``cb`` (errors and results of this request too)."""
    form = getattr(g, "sync_form", None) or {
        "failure_policy": cb.failure_policy or invoke_service.FAIL,
        "fallback_response": ""
        if cb.fallback_response is None
        else json.dumps(cb.fallback_response, indent=2, ensure_ascii=False),
        "priority": str(cb.priority),
        "errors": {},
    }
    call = getattr(g, "sync_call", None)
    payload = getattr(g, "sync_payload", None)
    if call is None and request.args.get("call", "").isdigit():
        d = db.session.get(Delivery, int(request.args["call"]))
        if d is not None and d.callback_id == cb.id and d.kind == "invoke":
            call = invoke_service.outcome_of(d, cb)
            if payload is None:  # keep what was sent in the form, for the next try
                payload = json.dumps(d.event.payload, indent=2, ensure_ascii=False)
    if payload is None:
        payload = json.dumps(catalogue.sample_payload(cb.definition), indent=2, ensure_ascii=False)
    return {
        "breaker": breaker.view(cb),
        "form": form,
        "call": call,
        "call_error": getattr(g, "sync_call_error", None),
        "payload": payload,
        "fallback_pretty": json.dumps(cb.fallback_response, indent=2, ensure_ascii=False),
        "is_sync": bool(catalogue.CATALOGUE.get(cb.definition, {}).get("sync")),
        "policies": invoke_service.POLICIES,
    }


def _section(cb: Callback, status: int = 200):  # type: ignore[no-untyped-def]
    return make_response(render_template("callbacks/_sync.html", cb=cb), status)


def _detail(cb: Callback, status: int):  # type: ignore[no-untyped-def]
    """The no-JavaScript path for errors: the whole detail page with the messages inline."""
    from .callbacks import detail

    response = make_response(detail(cb.id))
    response.status_code = status
    return response


@bp.post("/<int:callback_id>/breaker/reset")
@require("manage")
def reset_breaker(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    previous = breaker.reset(cb)
    audit.record("callback.breaker_reset", "callback", cb.id, {"previous_state": previous})
    db.session.commit()
    message = f"Circuit breaker of {cb.definition} reset (was {breaker.LABELS[previous].lower()})."
    if htmx.is_htmx():
        return htmx.trigger(_section(cb), json.dumps({"cbdash:notice": message}))
    flash(message, "success")
    return redirect(url_for("callbacks.detail", callback_id=cb.id) + "#sync", code=303)


@bp.post("/<int:callback_id>/sync-settings")
@require("manage")
def save_settings(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    policy = (request.form.get("failure_policy") or "").strip()
    raw_fallback = request.form.get("fallback_response") or ""
    raw_priority = (request.form.get("priority") or "").strip()
    fallback, fallback_error = invoke_service.parse_fallback_text(raw_fallback)
    data: dict[str, Any] = {"failure_policy": policy, "priority": raw_priority}
    if raw_priority.lstrip("-").isdigit():
        data["priority"] = int(raw_priority)
    if fallback_error is None:
        data["fallback_response"] = fallback
    clean, errors = invoke_service.validate_settings(data, cb)
    if fallback_error is not None:
        errors["fallback_response"] = fallback_error
    if errors:
        g.sync_form = {
            "failure_policy": policy,
            "fallback_response": raw_fallback,
            "priority": raw_priority,
            "errors": errors,
        }
        # htmx only swaps 2xx answers, so the form with its errors comes back as 200 there.
        return _section(cb) if htmx.is_htmx() else _detail(cb, 422)
    changes = invoke_service.apply_settings(cb, clean)
    if changes:
        audit.record("callback.sync_settings", "callback", cb.id, {"changes": changes})
    db.session.commit()
    message = "Synchronous call settings saved." if changes else "Nothing changed."
    if htmx.is_htmx():
        return htmx.trigger(_section(cb), json.dumps({"cbdash:notice": message}))
    flash(message, "success")
    return redirect(url_for("callbacks.detail", callback_id=cb.id) + "#sync", code=303)


@bp.post("/<int:callback_id>/call")
@require("ping")
def call_now(callback_id: int):  # type: ignore[no-untyped-def]
    """Invoke this one callback with the (edited) sample payload and show the parsed answer."""
    cb = _get(callback_id)
    raw = request.form.get("payload") or ""
    g.sync_payload = raw
    error = None
    limit = settings.current().payload_limit
    if len(raw.encode()) > limit:
        error = f"The payload is over {limit} bytes."
    else:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            error = f"The payload is not valid JSON: {exc}."
    result = None
    if error is None:
        try:
            result = invoke_service.invoke(cb.definition, payload, only=cb, test=True)
        except invoke_service.InvokeError as exc:
            error = exc.message
    if htmx.is_htmx():
        return render_template("callbacks/_call_result.html", cb=cb, call=result, call_error=error)
    if error is not None:
        g.sync_call_error = error
        return _detail(cb, 422)
    assert result is not None
    target = url_for("callbacks.detail", callback_id=cb.id, call=result.delivery_id)
    return redirect(target + "#sync", code=303)
