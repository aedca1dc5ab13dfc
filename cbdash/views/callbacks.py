"""Settings › System › Callbacks: the page, its table fragment, row actions, form, detail."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from .. import dispatch, htmx
from ..constants import DeliveryKind, Tab
from ..extensions import db
from ..forms import CallbackForm
from ..models import Callback, Delivery, utcnow
from ..permissions import require
from ..services import audit, callbacks, catalogue, delivery, settings
from ..services.signing import mask

bp = Blueprint("callbacks", __name__, url_prefix="/settings/callbacks")
SORTS = ("newest", "oldest")


def _state() -> dict:
    """The table's state from the query string (or the form posted with an action)."""
    src = request.values
    tab = src.get("status", Tab.ALL)
    if tab not in {t.value for t in Tab}:
        tab = Tab.ALL
    sort = src.get("sort", "newest")
    if sort not in SORTS:
        sort = "newest"
    try:
        page = max(1, int(src.get("page", 1)))
    except ValueError:
        page = 1
    q = (src.get("q") or "").strip()[:200]
    return {"status": tab, "sort": sort, "page": page, "q": q}


def _panel_context(state: dict) -> dict:
    per_page = int(current_app.config["PAGE_SIZE"])
    per_page = min(max(per_page, 5), 100)
    listing = callbacks.listing(state["status"], state["q"], state["sort"], state["page"], per_page)
    return {
        "state": state,
        "listing": listing,
        "counts": callbacks.counts(),
        "tabs": [Tab.ALL, Tab.ACTIVE, Tab.INACTIVE],
        "failing_after": settings.current().failing_after,
    }


@bp.app_template_global()
def callbacks_url(endpoint: str = "callbacks.index", **changes) -> str:  # type: ignore[no-untyped-def]
    """URL for the page or the table fragment with the table state changed."""
    state = {**_state(), **changes}
    args = {k: v for k, v in state.items() if v not in ("", None)}
    if endpoint == "callbacks.index":
        if args.get("status") == Tab.ALL:
            args.pop("status")
        if args.get("sort") == "newest":
            args.pop("sort")
        if args.get("page") == 1:
            args.pop("page")
    return url_for(endpoint, **args)


def _render_panel(status: int = 200):  # type: ignore[no-untyped-def]
    response = make_response(render_template("callbacks/_panel.html", **_panel_context(_state())), status)
    return htmx.add_vary(response)


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    ctx = _panel_context(_state())
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "callbacks-panel":
        return htmx.add_vary(make_response(render_template("callbacks/_panel.html", **ctx)))
    return htmx.add_vary(make_response(render_template("callbacks/index.html", **ctx)))


@bp.get("/table")
def table():  # type: ignore[no-untyped-def]
    """The tabs, search and table: the fragment tab switches swap."""
    return _render_panel()


@bp.get("/docs")
def docs():  # type: ignore[no-untyped-def]
    cfg = settings.current()
    static = Path(current_app.static_folder or "") / "docs"
    return render_template(
        "callbacks/docs.html",
        retry_delays=cfg.retry_delays,
        max_timeout=cfg.max_timeout,
        catalogue=catalogue.CATALOGUE,
        python_snippet=(static / "verify_webhook.py").read_text(),
        node_snippet=(static / "verify_webhook.js").read_text(),
    )


def _get(callback_id: int) -> Callback:
    cb = db.session.get(Callback, callback_id)
    if cb is None or cb.deleted_at is not None:
        abort(404, description="That callback does not exist (it may have been deleted).")
    return cb


def _after_action(message: str):  # type: ignore[no-untyped-def]
    """htmx: the refreshed panel; plain form post: 303 back to the page."""
    if htmx.is_htmx():
        response = _render_panel()
        return htmx.trigger(response, '{"cbdash:notice": "' + message.replace('"', "'") + '"}')
    flash(message, "success")
    return redirect(callbacks_url(), code=303)


@bp.route("/new", methods=["GET", "POST"])
@require("manage")
def new():  # type: ignore[no-untyped-def]
    form = CallbackForm()
    if request.method == "GET" and request.args.get("definition"):
        form.definition.data = request.args["definition"]
    if form.validate_on_submit():
        cb = callbacks.create(form.clean)
        db.session.flush()
        audit.record(
            "callback.create",
            "callback",
            cb.id,
            {"definition": cb.definition, "url": cb.url, "active": cb.active},
        )
        db.session.commit()
        flash(f"Callback {cb.definition} created.", "success")
        return redirect(url_for("callbacks.detail", callback_id=cb.id), code=303)
    status = 422 if request.method == "POST" else 200
    return render_template("callbacks/form.html", form=form, cb=None, catalogue=catalogue.CATALOGUE), status


@bp.route("/<int:callback_id>/edit", methods=["GET", "POST"])
@require("manage")
def edit(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    form = CallbackForm()
    if request.method == "GET":
        form.load(cb)
    if form.validate_on_submit():
        changes = callbacks.update(cb, form.clean)
        if changes:
            audit.record("callback.edit", "callback", cb.id, {"changes": changes})
        db.session.commit()
        flash(f"Callback {cb.definition} saved.", "success")
        return redirect(url_for("callbacks.detail", callback_id=cb.id), code=303)
    status = 422 if request.method == "POST" else 200
    return render_template("callbacks/form.html", form=form, cb=cb, catalogue=catalogue.CATALOGUE), status


@bp.post("/<int:callback_id>/toggle")
@require("manage")
def toggle(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    was_auto = cb.auto_disabled
    callbacks.set_active(cb, not cb.active)
    audit.record(
        "callback.activate" if cb.active else "callback.deactivate",
        "callback",
        cb.id,
        {"definition": cb.definition},
    )
    db.session.commit()
    verb = "activated" if cb.active else "deactivated"
    if cb.active and was_auto and not htmx.is_htmx():
        return redirect(url_for("callbacks.detail", callback_id=cb.id, reenabled=1), code=303)
    return _after_action(f"{cb.definition} {verb}.")


@bp.route("/<int:callback_id>/delete", methods=["GET", "POST"])
@require("manage")
def delete(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    if request.method == "GET":  # the no-JavaScript confirmation step
        return render_template("callbacks/confirm_delete.html", cb=cb)
    callbacks.soft_delete(cb)
    audit.record("callback.delete", "callback", cb.id, {"definition": cb.definition, "url": cb.url})
    db.session.commit()
    if request.form.get("from") == "detail" and not htmx.is_htmx():
        flash(f"Callback {cb.definition} deleted.", "success")
        return redirect(url_for("callbacks.index"), code=303)
    return _after_action(f"{cb.definition} deleted.")


def _recent_ping(cb: Callback) -> Delivery | None:
    """A ping for this callback created in the last 3 s and still open (double-click guard)."""
    return db.session.scalar(
        select(Delivery)
        .where(
            Delivery.callback_id == cb.id,
            Delivery.kind == DeliveryKind.PING,
            Delivery.created_at >= utcnow() - timedelta(seconds=3),
        )
        .order_by(Delivery.id.desc())
        .limit(1)
    )


@bp.post("/<int:callback_id>/ping")
@require("ping")
def ping(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    d = _recent_ping(cb)
    if d is None:
        d = delivery.create_ping(cb)
        db.session.commit()
        dispatch.enqueue([d.id], at_front=True)
    if htmx.is_htmx():
        return render_template("callbacks/_ping_result.html", d=d, cb=cb)
    flash("Test ping sent. The result appears below when the receiver answers.", "success")
    return redirect(url_for("callbacks.detail", callback_id=cb.id, ping=d.id), code=303)


@bp.get("/<int:callback_id>/ping/<int:delivery_id>")
def ping_result(callback_id: int, delivery_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    d = db.session.get(Delivery, delivery_id)
    if d is None or d.callback_id != cb.id:
        abort(404)
    return render_template("callbacks/_ping_result.html", d=d, cb=cb)


@bp.get("/<int:callback_id>")
def detail(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    recent = list(
        db.session.scalars(
            select(Delivery).where(Delivery.callback_id == cb.id).order_by(Delivery.id.desc()).limit(20)
        )
    )
    ping_delivery = None
    if request.args.get("ping", "").isdigit():
        ping_delivery = db.session.get(Delivery, int(request.args["ping"]))
    cfg = settings.current()
    return render_template(
        "callbacks/detail.html",
        cb=cb,
        recent=recent,
        masked_secret=mask(cb.secret),
        retry_delays=[int(x) for x in cb.retry_schedule.split(",")]
        if cb.retry_schedule
        else list(cfg.retry_delays),
        ping_delivery=ping_delivery,
        failing_after=cfg.failing_after,
    )
