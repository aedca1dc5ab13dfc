"""Inbound webhooks: the public hook endpoint and Settings › System › Inbound webhooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf import FlaskForm
from werkzeug.exceptions import RequestEntityTooLarge
from wtforms import StringField, TextAreaField

from .. import dispatch, htmx
from ..constants import Tab
from ..extensions import csrf, db
from ..models import InboundMessage, InboundSource
from ..permissions import require
from ..services import audit, catalogue
from ..services import inbound as service

bp = Blueprint("inbound", __name__)
OUTCOME_TABS = ("", *(o.value for o in service.Outcome))
PRESET_CHOICES = [(key, info.label) for key, info in service.PRESETS.items()]
STATUS_CHOICES = [("active", "Active"), ("inactive", "Inactive")]


# ---------------------------------------------------------------------------- the hook


def _read_body(limit: int) -> bytes | None:
    """The raw request bytes, or None when they are over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        return None
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return None
    return None if len(data) > limit else data


NOT_FOUND = '{"error": {"code": "not_found", "message": "There is no inbound webhook at this address."}}'


# Every path under /hooks/ lands here (also ones with slashes, e.g. an encoded ../), so a
# provider or a probe gets JSON, never the login redirect of an unmatched URL.
@bp.route("/hooks/", defaults={"slug": ""}, methods=["GET", "POST"], strict_slashes=False)  # and /hooks
@bp.route("/hooks/<path:slug>", methods=["GET", "POST"])
@bp.route("/hooks/<slug>", methods=["GET", "POST"])
@csrf.exempt  # providers sign their messages; there is no browser session to protect here
def receive(slug: str) -> Response:
    """Public endpoint for third parties: verify, store as an event, answer at once."""
    if not service.SLUG_RE.match(slug):
        return Response(NOT_FOUND, status=404, content_type="application/json")
    if request.method != "POST":
        # Routed here (not left to the router) so a GET gets a plain 405, not a login redirect.
        response = Response(
            '{"error": {"code": "method_not_allowed", "message": "Webhooks are POSTed here."}}',
            status=405,
            content_type="application/json",
        )
        response.headers["Allow"] = "POST"
        return response
    reply = service.receive(slug, dict(request.headers), _read_body, request.remote_addr)
    response = Response(reply.body, status=reply.status, content_type=reply.content_type)
    response.headers.update(reply.headers)
    if reply.timings:
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v:.1f}" for k, v in reply.timings.items())
    if reply.delivery_ids:
        # Outbox: the event and its deliveries are committed. Queue them once the answer has
        # been sent, so the provider never waits on Redis; if this fails, the reconciler queues them.
        response.call_on_close(_enqueue_later(current_app._get_current_object(), reply.delivery_ids))
    return response


def _enqueue_later(app: Flask, ids: list[int]) -> Callable[[], None]:
    def enqueue() -> None:
        with app.app_context():
            try:
                dispatch.enqueue(ids)
            except Exception:  # noqa: BLE001 - the response is gone; the reconciler will queue them
                app.logger.exception("inbound: could not enqueue deliveries %s", ids)

    return enqueue


# ---------------------------------------------------------------------------- the settings page


class SourceForm(FlaskForm):
    slug = StringField("Slug")
    # Selects are drawn by the template from PRESET_CHOICES / STATUS_CHOICES (WTForms' tuple
    # choices are deprecated); the service validates the values.
    preset = StringField("Verification", default=service.Preset.STANDARD)
    secret = StringField("Secret")
    token_header = StringField("Token header", default="X-Webhook-Token")
    definition = StringField("Definition name")
    dedupe_header = StringField("Dedupe header (provider event id)")
    response_status = StringField("Response status", default="200")
    response_body = TextAreaField("Response body", default='{"received": true}')
    tolerance = StringField("Timestamp tolerance (seconds)", default="300")
    rate_limit = StringField("Rate limit (requests per window, 0 = none)", default="600")
    rate_window = StringField("Rate-limit window (seconds)", default="60")
    description = TextAreaField("Description")
    active = StringField("Status", default="active")

    clean: dict[str, Any]

    def check(self, source: InboundSource | None) -> bool:
        """Validate through the service rules; errors land on their fields."""
        if not self.validate():
            return False
        data = {name: getattr(self, name).data for name in service.FIELDS}
        self.clean, errors = service.validate(data, source)
        for name, message in errors.items():
            getattr(self, name).errors = [message]
        return not errors

    def load(self, source: InboundSource) -> None:
        for name in service.FIELDS:
            if name in ("secret", "active"):
                continue
            value = getattr(source, name)
            getattr(self, name).data = "" if value is None else str(value)
        self.active.data = "active" if source.active else "inactive"


def _state() -> dict:
    src = request.values
    tab = src.get("status", Tab.ALL)
    if tab not in {t.value for t in Tab}:
        tab = Tab.ALL
    try:
        page = max(1, int(src.get("page", 1)))
    except ValueError:
        page = 1
    return {"status": tab, "page": page, "q": (src.get("q") or "").strip()[:200]}


@bp.app_template_global()
def inbound_url(endpoint: str = "inbound.index", **changes: Any) -> str:
    """URL for the page or its table fragment with the table state changed."""
    state = {**_state(), **changes}
    args = {k: v for k, v in state.items() if v not in ("", None)}
    if endpoint == "inbound.index":
        if args.get("status") == Tab.ALL:
            args.pop("status")
        if args.get("page") == 1:
            args.pop("page")
    return url_for(endpoint, **args)


def _panel_context() -> dict:
    state = _state()
    per_page = min(max(int(current_app.config["PAGE_SIZE"]), 5), 100)
    listing = service.listing(state["status"], state["q"], state["page"], per_page)
    ids = [s.id for s in listing.items]
    return {
        "state": state,
        "listing": listing,
        "counts": service.counts(),
        "tabs": [Tab.ALL, Tab.ACTIVE, Tab.INACTIVE],
        "stats": service.outcome_counts(ids),
        "throttled": service.throttled_today(ids),
        "unstored": service.unstored_refusals_recent(ids),
        "stored_per_minute": service.REFUSALS_STORED,
        "presets": service.PRESETS,
        "mask": service.mask,
    }


def _panel(status: int = 200) -> Response:
    return htmx.add_vary(make_response(render_template("inbound/_panel.html", **_panel_context()), status))


@bp.get("/settings/inbound")
@require("view")
def index() -> Response:
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "inbound-panel":
        return _panel()
    return htmx.add_vary(make_response(render_template("inbound/index.html", **_panel_context())))


@bp.get("/settings/inbound/table")
@require("view")
def table() -> Response:
    """The tabs, search and table: the fragment tab switches and the search swap."""
    if not htmx.wants_fragment():
        # Opened directly (a reload, a bookmark, a history restore): the page, as on Callbacks.
        return htmx.add_vary(redirect(inbound_url(), code=302))  # type: ignore[arg-type]
    response = _panel()
    response.headers["HX-Push-Url"] = inbound_url()  # the address bar shows the page URL
    return response


def _get(source_id: int) -> InboundSource:
    source = db.session.get(InboundSource, source_id)
    if source is None:
        abort(404, description="That inbound source does not exist (it may have been deleted).")
    return source


def _after_action(message: str) -> Response:
    """htmx: the refreshed panel; plain form post: 303 back to the page."""
    if htmx.is_htmx():
        return htmx.trigger(_panel(), '{"cbdash:notice": "' + message.replace('"', "'") + '"}')
    flash(message, "success")
    return redirect(inbound_url(), code=303)  # type: ignore[return-value]


def _form_page(form: SourceForm, source: InboundSource | None, status: int) -> tuple[str, int]:
    return render_template(
        "inbound/form.html",
        form=form,
        source=source,
        presets=service.PRESETS,
        catalogue=catalogue.CATALOGUE,
        preset_choices=PRESET_CHOICES,
        status_choices=STATUS_CHOICES,
    ), status


@bp.route("/settings/inbound/new", methods=["GET", "POST"])
@require("manage")
def new():  # type: ignore[no-untyped-def]
    form = SourceForm()
    if request.method == "GET" and request.args.get("preset") in service.PRESETS:
        form.preset.data = request.args["preset"]
        form.dedupe_header.data = service.PRESETS[request.args["preset"]].dedupe_header or ""
    if request.method == "POST" and form.check(None):
        source = service.create(form.clean)
        db.session.flush()
        audit.record(
            "inbound.create",
            "inbound_source",
            source.id,
            {"slug": source.slug, "preset": source.preset, "definition": source.definition},
        )
        db.session.commit()
        flash(f"Inbound source {source.slug} created. {_next_step(source)}", "success")
        return redirect(url_for("inbound.detail", source_id=source.id), code=303)
    return _form_page(form, None, 422 if request.method == "POST" else 200)


def _next_step(source: InboundSource) -> str:
    """What to give the provider, worded for the source's preset."""
    if source.preset == service.Preset.NONE:
        return "Give the provider its URL: it has no secret, so anyone who knows the URL can post."
    if source.preset == service.Preset.TOKEN:
        return (
            f"Give the provider its URL and the token (sent in {source.token_header} or as "
            "Authorization: Bearer <token>); Reveal shows it."
        )
    if service.PRESETS[source.preset].generates_secret:
        return "Give the provider its URL and the secret cbdash generated (Reveal shows it)."
    return "Give the provider its URL; messages are verified with the secret the provider issued."


@bp.route("/settings/inbound/<int:source_id>/edit", methods=["GET", "POST"])
@require("manage")
def edit(source_id: int):  # type: ignore[no-untyped-def]
    source = _get(source_id)
    form = SourceForm()
    if request.method == "GET":
        form.load(source)
    if request.method == "POST" and form.check(source):
        changes = service.update(source, form.clean)
        if changes:
            audit.record("inbound.edit", "inbound_source", source.id, {"changes": changes})
        db.session.commit()
        note = (
            " A new secret was set; the previous one keeps verifying during the overlap."
            if ("secret" in changes)
            else ""
        )
        flash(f"Inbound source {source.slug} saved.{note}", "success")
        return redirect(url_for("inbound.detail", source_id=source.id), code=303)
    return _form_page(form, source, 422 if request.method == "POST" else 200)


@bp.post("/settings/inbound/<int:source_id>/toggle")
@require("manage")
def toggle(source_id: int) -> Response:
    source = _get(source_id)
    source.active = not source.active
    audit.record(
        "inbound.activate" if source.active else "inbound.deactivate",
        "inbound_source",
        source.id,
        {"slug": source.slug},
    )
    db.session.commit()
    if request.form.get("from") == "detail" and not htmx.is_htmx():
        return redirect(url_for("inbound.detail", source_id=source.id), code=303)  # type: ignore[return-value]
    return _after_action(f"{source.slug} {'activated' if source.active else 'deactivated'}.")


@bp.route("/settings/inbound/<int:source_id>/delete", methods=["GET", "POST"])
@require("manage")
def delete(source_id: int):  # type: ignore[no-untyped-def]
    source = _get(source_id)
    if request.method == "GET":  # the no-JavaScript confirmation step
        return render_template("inbound/confirm_delete.html", source=source, state=_state())
    audit.record("inbound.delete", "inbound_source", source.id, {"slug": source.slug})
    db.session.delete(source)
    db.session.commit()
    return _after_action(f"{source.slug} deleted.")


@bp.post("/settings/inbound/<int:source_id>/rotate")
@require("secrets")
def rotate(source_id: int) -> Response:
    source = _get(source_id)
    if not service.rotate(source):
        message = f"{source.slug}: the provider issues this secret; paste the new one in Edit."
        if htmx.is_htmx():
            return htmx.trigger(_panel(), '{"cbdash:error": "' + message + '"}')
        flash(message, "warning")
        return redirect(url_for("inbound.detail", source_id=source.id), code=303)  # type: ignore[return-value]
    audit.record("inbound.rotate", "inbound_source", source.id, {"slug": source.slug})
    db.session.commit()
    message = f"New secret for {source.slug}; the previous one keeps verifying during the overlap."
    if request.form.get("from") == "detail" and not htmx.is_htmx():
        flash(message, "success")
        return redirect(url_for("inbound.detail", source_id=source.id), code=303)  # type: ignore[return-value]
    return _after_action(message)


@bp.post("/settings/inbound/<int:source_id>/reveal")
@require("secrets")
def reveal(source_id: int):  # type: ignore[no-untyped-def]
    source = _get(source_id)
    audit.record("inbound.reveal", "inbound_source", source.id, {"slug": source.slug})
    db.session.commit()
    if htmx.is_htmx():
        return _secret_row(source, revealed=True)
    # No JavaScript: show the page with the secret, never put it in a URL or a flash.
    return _detail_page(source, revealed=True)


@bp.get("/settings/inbound/<int:source_id>/secret")
@require("view")
def secret(source_id: int) -> Response:
    """The masked secret row (what Hide swaps back in); without htmx, the source page."""
    source = _get(source_id)
    if htmx.is_htmx():
        return _secret_row(source)
    return htmx.add_vary(redirect(url_for("inbound.detail", source_id=source.id), code=302))  # type: ignore[arg-type]


def _secret_row(source: InboundSource, revealed: bool = False) -> Response:
    html = render_template("inbound/_secret.html", source=source, revealed=revealed, mask=service.mask)
    return htmx.add_vary(make_response(html))


def _messages_state() -> dict:
    outcome = request.args.get("outcome", "")
    if outcome not in OUTCOME_TABS:
        outcome = ""
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    return {"outcome": outcome, "page": page}


def _messages_context(source: InboundSource) -> dict:
    state = _messages_state()
    rows, page, pages = service.messages(source, state["outcome"], state["page"])
    state["page"] = page
    stats = service.outcome_counts([source.id])[source.id]
    return {
        "unstored": service.unstored_refusals_recent([source.id]).get(source.id, 0),
        "stored_per_minute": service.REFUSALS_STORED,
        "reasons": service.refusal_reasons(source.id) if stats[service.Outcome.REFUSED] else {},
        "reason_labels": service.REASON_LABELS,
        "source": source,
        "rows": rows,
        "mstate": state,
        "pages": pages,
        "stats": stats,
        "total": sum(stats.values()),
        "outcome_tabs": OUTCOME_TABS,
    }


def _detail_page(source: InboundSource, revealed: bool = False) -> Response:
    ctx = _messages_context(source)
    return htmx.add_vary(
        make_response(
            render_template(
                "inbound/detail.html",
                revealed=revealed,
                presets=service.PRESETS,
                mask=service.mask,
                hook_url=url_for("inbound.receive", slug=source.slug, _external=True),
                throttled=service.throttled_today([source.id]).get(source.id, 0),
                **ctx,
            )
        )
    )


@bp.get("/settings/inbound/<int:source_id>")
@require("view")
def detail(source_id: int) -> Response:
    source = _get(source_id)
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "messages-panel":
        return messages(source_id)
    return _detail_page(source)


@bp.get("/settings/inbound/<int:source_id>/messages")
@require("view")
def messages(source_id: int) -> Response:
    """The recent-messages table of one source: the fragment its outcome tabs swap."""
    source = _get(source_id)
    if not htmx.wants_fragment():
        # Opened directly: the source page with the same tab and page, as the table does.
        state = {k: v for k, v in _messages_state().items() if v not in ("", 1)}
        return htmx.add_vary(redirect(url_for("inbound.detail", source_id=source.id, **state), code=302))  # type: ignore[arg-type]
    return htmx.add_vary(
        make_response(render_template("inbound/_messages.html", **_messages_context(source)))
    )


@bp.get("/settings/inbound/<int:source_id>/messages/<int:message_id>")
@require("view")
def message(source_id: int, message_id: int):  # type: ignore[no-untyped-def]
    source = _get(source_id)
    msg = db.session.get(InboundMessage, message_id)
    if msg is None or msg.source_id != source.id:
        abort(404, description="No such message for this source.")
    payload = msg.event.payload if msg.event is not None and msg.payload_is_text else None
    raw = service.binary_body(payload, bool(msg.payload_is_text))
    return render_template(
        "inbound/message.html",
        source=source,
        m=msg,
        presets=service.PRESETS,
        binary=None if raw is None else service.escaped(raw[: service.EXCERPT]),
        binary_size=0 if raw is None else len(raw),
    )
