"""Settings › System › Audit log (admins): who did what and when. Read-only, append-only."""

from __future__ import annotations

import json

from flask import Blueprint, make_response, render_template, request

from .. import htmx
from ..permissions import require
from ..services import audit

bp = Blueprint("audit", __name__, url_prefix="/settings/audit")
PER_PAGE = 50
DETAIL_CHARS = 400


@bp.app_template_filter("audit_detail")
def audit_detail(detail: dict | None) -> str:
    """An entry's detail as compact JSON text (escaped by the template), capped."""
    text = json.dumps(detail or {}, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "…"


def _filters() -> dict:
    args = request.args
    try:
        page = max(1, int(args.get("page", 1)))
    except ValueError:
        page = 1
    return {
        "action": args.get("action", "").strip()[:64],
        "actor": args.get("actor", "").strip()[:254],
        "page": page,
    }


# Only GET: there is deliberately no route that edits or deletes an entry.
@bp.get("")
@require("admin")
def index():  # type: ignore[no-untyped-def]
    f = _filters()
    result = audit.search(f["action"], f["actor"], f["page"], PER_PAGE)
    actions = audit.actions()
    groups = sorted({a.split(".")[0] for a in actions if "." in a})
    context = {"f": f, "result": result, "actions": actions, "groups": groups}
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "audit-table":
        return htmx.add_vary(make_response(render_template("audit/_table.html", **context)))
    return htmx.add_vary(make_response(render_template("audit/index.html", **context)))
