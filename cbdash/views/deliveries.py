"""The delivery log: every delivery, filterable, with filters in the URL; a detail page per delivery."""

from __future__ import annotations

from datetime import datetime

from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup

from .. import dispatch, formatting, htmx
from ..constants import ERROR_LABELS, DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import Delivery, utcnow
from ..permissions import require
from ..services import audit, delivery, delivery_log, settings

bp = Blueprint("deliveries", __name__, url_prefix="/settings/callbacks/deliveries")
PER_PAGE = 50


def _cursor_arg(name: str) -> int | None:
    raw = request.args.get(name, "").strip()
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


@bp.app_template_filter("log_time")
def log_time(dt: datetime | None) -> Markup:
    """A <time> for the log: year only when it is not this year, zone always (DST-safe)."""
    if dt is not None and dt.year != utcnow().year:
        return formatting.time_tag(dt, "%b %-d, %Y %H:%M:%S %Z")
    return formatting.time_tag(dt, "%b %-d, %H:%M:%S %Z")


@bp.app_template_filter("short_url")
def short_url(url: str | None, limit: int = 36) -> str:
    """A callback URL for a narrow column: masked, without the scheme, shortened in the middle."""
    text = formatting.mask_url(url).split("://", 1)[-1]
    return text if len(text) <= limit else f"{text[: limit - 13]}…{text[-12:]}"


@bp.app_template_global()
def deliveries_url(args: dict[str, str], **extra: object) -> str:
    """The log's URL for normalised filter ``args`` plus a page cursor."""
    return url_for("deliveries.index", **args, **{k: v for k, v in extra.items() if v})


@bp.get("")
@require("view")
def index():  # type: ignore[no-untyped-def]
    f = delivery_log.parse(request.args, settings.current().timezone, utcnow())
    before, after = _cursor_arg("before"), _cursor_arg("after")
    page = delivery_log.search(f, before=before, after=after, per_page=PER_PAGE)
    choices, too_many = delivery_log.callback_choices()
    args = f.args()
    cursor = {"before": before} if before else {"after": after} if after else {}
    ctx = {
        "f": f,
        "args": args,
        "page": page,
        "callbacks": choices,
        "inbound_sources": delivery_log.inbound_sources(page.rows),
        "too_many_callbacks": too_many,
        "statuses": list(DeliveryStatus),
        "kinds": list(DeliveryKind),
        "windows": delivery_log.WINDOW_LABELS,
        "error_labels": ERROR_LABELS,
        "now": utcnow(),
    }
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "deliveries-results":
        response = make_response(render_template("deliveries/_results.html", **ctx))
        # The address bar gets the clean, normalised URL (no empty fields), so it can be shared.
        response.headers["HX-Push-Url"] = deliveries_url(args, **cursor)
    else:
        response = make_response(render_template("deliveries/index.html", **ctx))
    return htmx.add_vary(response)


@bp.get("/<int:delivery_id>")
@require("view")
def detail(delivery_id: int):  # type: ignore[no-untyped-def]
    d = db.session.get(Delivery, delivery_id)
    if d is None:
        abort(404, description="No such delivery (it may have been pruned).")
    return render_template(
        "deliveries/detail.html",
        d=d,
        attempts=list(reversed(d.attempts)),
        error_labels=ERROR_LABELS,
        now=utcnow(),
    )


@bp.post("/<int:delivery_id>/redeliver")
@require("redeliver")
def redeliver(delivery_id: int):  # type: ignore[no-untyped-def]
    original = db.session.get(Delivery, delivery_id)
    if original is None:
        abort(404, description="No such delivery.")
    d = delivery.create_redelivery(original)
    db.session.flush()
    audit.record("delivery.redeliver", "delivery", original.id, {"new_delivery_id": d.id})
    db.session.commit()
    dispatch.enqueue([d.id])
    flash("Redelivery queued with the same webhook-id.", "success")
    return redirect(url_for("deliveries.detail", delivery_id=d.id), code=303)
