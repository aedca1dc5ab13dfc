"""Settings › System › Callbacks: the page, its table fragment, row actions, form, detail."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from http import HTTPStatus
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
from markupsafe import Markup, escape
from sqlalchemy import select

from .. import dispatch, htmx
from ..constants import ERROR_LABELS, DeliveryKind, ErrorClass, Tab
from ..extensions import db
from ..forms import STATUS_CHOICES, CallbackForm
from ..models import Callback, Delivery, utcnow
from ..permissions import require
from ..queue import get_redis
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


def _shown_url(context: dict) -> str:
    """The page URL of what the panel shows: a page past the end (say, after its last rows
    were deleted) shows the last page, and the address bar must say so."""
    return callbacks_url(page=context["listing"].page)


def _render_panel(status: int = 200):  # type: ignore[no-untyped-def]
    """The panel fragment, and the page URL of what it shows."""
    context = _panel_context(_state())
    response = make_response(render_template("callbacks/_panel.html", **context), status)
    return htmx.add_vary(response), _shown_url(context)


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    """The full page, always: Back, Reload, bookmarks and history restores land here."""
    response = make_response(render_template("callbacks/index.html", **_panel_context(_state())))
    return htmx.add_vary(response)


@bp.get("/table")
def table():  # type: ignore[no-untyped-def]
    """The tabs, search and table: the fragment tab switches, sorting, paging and search swap."""
    if not htmx.wants_fragment():
        # A browser (or a history restore) asking for the fragment URL gets the page instead,
        # so a bare fragment can never become the whole document.
        return htmx.add_vary(redirect(callbacks_url(), code=302))
    response, shown = _render_panel()
    # The address bar shows the page URL, never the fragment URL. Search-as-you-type
    # replaces the entry instead of stacking one history entry per keystroke.
    header = "HX-Replace-Url" if request.headers.get("HX-Trigger") == "callbacks-search" else "HX-Push-Url"
    response.headers[header] = shown
    return response


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
    """htmx: the refreshed panel (table and counts); plain form post: 303 back to the same view."""
    if htmx.is_htmx():
        response, shown = _render_panel()
        # The action may have emptied the page the user was on (its last rows deleted or
        # moved to another tab): the panel then shows the last page, and the address bar
        # is corrected in place (no new history entry: the user did not navigate).
        response.headers["HX-Replace-Url"] = shown
        return htmx.trigger(response, json.dumps({"cbdash:notice": message}))
    flash(message, "success")
    return htmx.add_vary(redirect(_shown_url(_panel_context(_state())), code=303))


def _back_url() -> str | None:
    """The list view (tab, search, page) an edit came from, if it is a local Callbacks URL."""
    back = request.values.get("back", "")
    prefix = url_for("callbacks.index")
    if back == prefix or back.startswith(prefix + "?"):
        return back
    return None


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
    return render_template(
        "callbacks/form.html",
        form=form,
        cb=None,
        catalogue=catalogue.CATALOGUE,
        status_choices=STATUS_CHOICES,
        back=None,
    ), status


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
        return redirect(_back_url() or url_for("callbacks.detail", callback_id=cb.id), code=303)
    status = 422 if request.method == "POST" else 200
    return render_template(
        "callbacks/form.html",
        form=form,
        cb=cb,
        catalogue=catalogue.CATALOGUE,
        status_choices=STATUS_CHOICES,
        back=_back_url(),
    ), status


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
        return render_template("callbacks/confirm_delete.html", cb=cb, state=_state())
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


def _claim_ping_slot(cb: Callback) -> bool:
    """Atomically take this callback's 3 s ping slot in Redis; True when this request got it."""
    try:
        return bool(get_redis().set(f"cbdash:ping-guard:{cb.id}", "1", nx=True, ex=3))
    except Exception:  # noqa: BLE001 - no Redis: the database check alone still guards
        current_app.logger.warning("ping guard unavailable (Redis)")
        return True


def _ping_once(cb: Callback) -> Delivery:
    """The ping for this click: a double-click (or two racing posts) reuses the first one."""
    d = _recent_ping(cb)
    if d is not None:
        return d
    if not _claim_ping_slot(cb):
        # A concurrent request holds the slot and is committing its ping: wait for it (bounded).
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            db.session.rollback()  # end the snapshot so the other request's commit is visible
            d = _recent_ping(cb)
            if d is not None:
                return d
    d = delivery.create_ping(cb)
    db.session.commit()
    dispatch.enqueue([d.id], at_front=True)
    return d


@bp.post("/<int:callback_id>/ping")
@require("ping")
def ping(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    d = _ping_once(cb)
    if htmx.is_htmx():
        html = render_template("callbacks/_ping_result.html", d=d, cb=cb, polls=0, max_polls=_max_polls(cb))
        return htmx.add_vary(make_response(html))
    flash("Test ping sent. The result appears below when the receiver answers.", "success")
    return htmx.add_vary(redirect(url_for("callbacks.detail", callback_id=cb.id, ping=d.id), code=303))


@bp.get("/<int:callback_id>/ping/<int:delivery_id>")
def ping_result(callback_id: int, delivery_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    d = db.session.get(Delivery, delivery_id)
    if d is None or d.callback_id != cb.id:
        abort(404)
    try:
        polls = min(max(int(request.args.get("n", 0)), 0), 10_000) + 1
    except ValueError:
        polls = 1
    return render_template("callbacks/_ping_result.html", d=d, cb=cb, polls=polls, max_polls=_max_polls(cb))


# How often the "sending…" placeholder asks for the result, and for how long: the
# callback's timeout plus a margin for the queue, so a missing worker cannot make a
# row poll forever.
PING_POLL_SECONDS = 0.7


def _max_polls(cb: Callback) -> int:
    return int((cb.timeout + 20) / PING_POLL_SECONDS)


@bp.app_template_filter("breakable")
def breakable(text: str) -> Markup:
    """Escaped text with line-break opportunities after URL separators, so narrow screens
    wrap a URL at ``/``, ``?``, ``&`` or ``.`` instead of in the middle of a word."""
    parts = re.split(r"(?<=[/?&.=])", text or "")
    return Markup("<wbr>").join(escape(part) for part in parts)


@bp.app_template_filter("http_phrase")
def http_phrase(code: int | None) -> str:
    """The reason phrase of a status code ("Internal Server Error"), or "" for unknown codes."""
    try:
        return HTTPStatus(int(code or 0)).phrase
    except ValueError:
        return ""


# Short explanations of what went wrong, for the row; the transport's full message is kept
# for the title attribute and the delivery log.
_HINTS = [
    ("connection refused", "connection refused: nothing listens on that host and port"),
    ("connection reset", "the receiver reset the connection"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("certificate", "the TLS certificate was not accepted"),
]


@bp.app_template_filter("error_hint")
def error_hint(attempt) -> str:  # type: ignore[no-untyped-def]
    """A one-line reason for a failed attempt (e.g. "connection refused: …")."""
    message = (attempt.error_message or "").lower()
    for needle, hint in _HINTS:
        if needle in message:
            return hint
    if attempt.error_class == ErrorClass.TIMEOUT:
        return f"no complete answer within {attempt.delivery.callback.timeout} s"
    if attempt.error_class == ErrorClass.DNS:
        return "the host name could not be resolved"
    text = attempt.error_message or ""
    return text if len(text) <= 120 else text[:117] + "…"


@bp.app_template_filter("error_label")
def error_label(error_class: str | None) -> str:
    """A reader's name for an attempt's error class (``connect`` → "Connection failed")."""
    if not error_class:
        return ""
    try:
        return ERROR_LABELS[ErrorClass(error_class)]
    except ValueError:
        return error_class


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
        if ping_delivery is not None and ping_delivery.callback_id != cb.id:
            ping_delivery = None
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
        polls=0,
        max_polls=_max_polls(cb),
        failing_after=cfg.failing_after,
    )
