"""The delivery log: every delivery, filterable; a detail page with every attempt."""

from __future__ import annotations

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
from sqlalchemy import func, or_, select

from .. import dispatch, htmx
from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..models import Callback, Delivery, Event
from ..permissions import require
from ..services import audit, delivery

bp = Blueprint("deliveries", __name__, url_prefix="/settings/callbacks/deliveries")
PER_PAGE = 50


def _filters() -> dict:
    args = request.args
    f = {
        "callback_id": args.get("callback_id", "").strip(),
        "definition": args.get("definition", "").strip()[:100],
        "status": args.get("status", "").strip(),
        "kind": args.get("kind", "").strip(),
        "id": args.get("id", "").strip()[:64],
    }
    if f["status"] not in {s.value for s in DeliveryStatus}:
        f["status"] = ""
    if f["kind"] not in {k.value for k in DeliveryKind}:
        f["kind"] = ""
    if not f["callback_id"].isdigit():
        f["callback_id"] = ""
    return f


@bp.get("")
def index():  # type: ignore[no-untyped-def]
    f = _filters()
    stmt = select(Delivery).join(Event, Event.id == Delivery.event_id)
    if f["callback_id"]:
        stmt = stmt.where(Delivery.callback_id == int(f["callback_id"]))
    if f["definition"]:
        stmt = stmt.where(Event.definition == f["definition"])
    if f["status"]:
        stmt = stmt.where(Delivery.status == f["status"])
    if f["kind"]:
        stmt = stmt.where(Delivery.kind == f["kind"])
    if f["id"]:
        ident = f["id"]
        conds = [Delivery.webhook_id == ident, Event.uid == ident]
        if ident.isdigit():
            conds.append(Delivery.id == int(ident))
        stmt = stmt.where(or_(*conds))
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // PER_PAGE))
    page = min(page, pages)
    rows = list(
        db.session.scalars(stmt.order_by(Delivery.id.desc()).limit(PER_PAGE).offset((page - 1) * PER_PAGE))
    )
    callbacks = list(
        db.session.scalars(
            select(Callback).where(Callback.deleted_at.is_(None)).order_by(Callback.definition).limit(500)
        )
    )
    template = "deliveries/_table.html" if htmx.wants_fragment() else "deliveries/index.html"
    response = render_template(
        template,
        rows=rows,
        f=f,
        page=page,
        pages=pages,
        total=total,
        callbacks=callbacks,
        statuses=list(DeliveryStatus),
        kinds=list(DeliveryKind),
    )
    return htmx.add_vary(make_response(response))


@bp.get("/<int:delivery_id>")
def detail(delivery_id: int):  # type: ignore[no-untyped-def]
    d = db.session.get(Delivery, delivery_id)
    if d is None:
        abort(404, description="No such delivery.")
    return render_template("deliveries/detail.html", d=d)


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
