"""Recovery pages: bulk redelivery by filter, and re-enabling an auto-disabled callback with replay."""

from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for

from .. import htmx
from ..extensions import db
from ..formatting import plural
from ..models import Callback
from ..permissions import require
from ..services import audit, callbacks, delivery_log, recovery

bp = Blueprint("recovery", __name__, url_prefix="/settings/callbacks")


def _form_context(sel: recovery.Selection, matched: int | None) -> dict:
    choices, too_many = delivery_log.callback_choices()
    return {
        "sel": sel,
        "matched": matched,
        "callbacks": choices,
        "too_many_callbacks": too_many,
        "statuses": recovery.RECOVERABLE,
        "windows": delivery_log.WINDOW_LABELS,
        "rate": recovery.rate(),
        "max_batch": recovery.max_batch(),
        "values": {**sel.args, **{k: v for k, v in request.values.items() if k != "csrf_token"}},
    }


@bp.get("/recovery")
@require("redeliver")
def bulk():  # type: ignore[no-untyped-def]
    """Choose callback, status and window; see how many deliveries match (nothing is sent)."""
    previewing = bool(request.args)
    sel = recovery.parse_selection(request.args)
    matched = recovery.count(sel) if previewing and not sel.errors else None
    if not previewing:
        sel.errors = {}
    template = "recovery/_preview.html" if htmx.wants_fragment() else "recovery/bulk.html"
    return htmx.add_vary(make_response(render_template(template, **_form_context(sel, matched))))


@bp.post("/recovery")
@require("redeliver")
def bulk_confirm():  # type: ignore[no-untyped-def]
    """Re-send the matching deliveries (same webhook-ids) at a bounded rate; audit-logged."""
    sel = recovery.parse_selection(request.form)
    if sel.errors:
        return render_template("recovery/bulk.html", **_form_context(sel, None)), 400
    matched = recovery.count(sel)
    try:
        expected = int(request.form.get("expected", ""))
    except ValueError:
        expected = -1
    if matched != expected:
        # What the user confirmed is not what would happen now: show the new count first.
        sel.errors["expected"] = (
            f"The number of matching deliveries changed from {max(expected, 0):,} to {matched:,}. "
            "Check the count and confirm again."
        )
        return render_template("recovery/bulk.html", **_form_context(sel, matched)), 409
    if matched == 0:
        flash("Nothing to recover: no deliveries match.", "info")
        return redirect(url_for("recovery.bulk", **sel.args), code=303)
    created = recovery.recover(sel)
    ids = [d.id for d in created]
    audit.record(
        "delivery.bulk_recover",
        "callback" if sel.callback_id else None,
        sel.callback_id,
        {**sel.describe(), "count": len(ids), "first_delivery_id": ids[0], "last_delivery_id": ids[-1]},
    )
    db.session.commit()
    seconds = recovery.spread(ids)
    flash(
        f"Re-sending {plural(len(ids), 'delivery', 'deliveries')} with their original webhook-ids, "
        f"{recovery.rate():g} per second (about {max(seconds, 1):,} s).",
        "success",
    )
    return redirect(url_for("deliveries.index", kind="redelivery", status="", window="1h"), code=303)


def _callback(callback_id: int) -> Callback:
    cb = db.session.get(Callback, callback_id)
    if cb is None or cb.deleted_at is not None:
        abort(404, description="No such callback.")
    return cb


@bp.get("/<int:callback_id>/reenable")
@require("manage")
def reenable_page(callback_id: int):  # type: ignore[no-untyped-def]
    """Re-enable an auto-disabled callback: test ping first, then optionally replay what it missed."""
    cb = _callback(callback_id)
    since = recovery.disabled_since(cb)
    return render_template(
        "recovery/reenable.html",
        cb=cb,
        since=since,
        missed=recovery.missed_count(cb, since),
        rate=recovery.rate(),
    )


@bp.post("/<int:callback_id>/reenable")
@require("manage")
def reenable(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _callback(callback_id)
    since = recovery.disabled_since(cb)
    replay = request.form.get("replay") == "1"
    was_active = cb.active
    if not was_active:
        callbacks.set_active(cb, True)
        audit.record("callback.activate", "callback", cb.id, {"definition": cb.definition})
    created = []
    if replay and since is not None:
        created = recovery.replay(cb, since)
        audit.record(
            "callback.replay",
            "callback",
            cb.id,
            {"since": since.isoformat() + "Z", "count": len(created), "definition": cb.definition},
        )
    db.session.commit()
    if created:
        seconds = recovery.spread([d.id for d in created])
        flash(
            f"Replaying {plural(len(created), 'missed event')}, {recovery.rate():g} per second "
            f"(about {max(seconds, 1):,} s).",
            "success",
        )
    elif replay:
        flash("No missed events to replay.", "info")
    if was_active:
        return redirect(url_for("callbacks.detail", callback_id=cb.id), code=303)
    return redirect(url_for("callbacks.detail", callback_id=cb.id, reenabled=1), code=303)
