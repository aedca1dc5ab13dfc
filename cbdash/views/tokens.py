"""Settings › System › API tokens (admins): create (shown once), revoke, last used."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from ..constants import Role
from ..extensions import db
from ..models import ApiToken
from ..permissions import require
from ..services import audit, tokens

bp = Blueprint("tokens", __name__, url_prefix="/settings/tokens")


def _page(status: int = 200, **extra):  # type: ignore[no-untyped-def]
    context = {
        "tokens": tokens.listing(),
        "roles": [r.value for r in Role],
        "form": {"name": "", "role": Role.VIEWER.value},
        "errors": {},
        "created": None,
        **extra,
    }
    return render_template("tokens/index.html", **context), status


@bp.get("")
@require("admin")
def index():  # type: ignore[no-untyped-def]
    return _page()


@bp.post("")
@require("admin")
def create():  # type: ignore[no-untyped-def]
    form = {"name": request.form.get("name", ""), "role": request.form.get("role", "")}
    errors = tokens.validate(form["name"], form["role"])
    if errors:
        return _page(422, form=form, errors=errors)
    row, plaintext = tokens.create(form["name"], form["role"])
    db.session.flush()
    audit.record("token.create", "token", row.id, {"name": row.name, "role": row.role})
    db.session.commit()
    # The plaintext exists only in this response; the database keeps its SHA-256.
    return _page(201, created=(row, plaintext))


@bp.post("/<int:token_id>/revoke")
@require("admin")
def revoke(token_id: int):  # type: ignore[no-untyped-def]
    row = db.session.get(ApiToken, token_id)
    if row is None:
        abort(404, description="No such token.")
    if tokens.revoke(row):
        audit.record("token.revoke", "token", row.id, {"name": row.name})
        db.session.commit()
        flash(f"Token {row.name} revoked; requests using it now get 401.", "success")
    return redirect(url_for("tokens.index"), code=303)
