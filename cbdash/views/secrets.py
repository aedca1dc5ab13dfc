"""Signing secrets on the callback detail page: reveal and rotate (admins, audit-logged).

Both are POSTs (CSRF-checked, never prefetched or cached) and answer with the secret
row fragment for htmx, or a small page of their own without JavaScript. A revealed
secret only ever travels in the body of that one response.
"""

from __future__ import annotations

from flask import Blueprint, abort, make_response, render_template

from .. import htmx
from ..extensions import db
from ..models import Callback
from ..permissions import require
from ..services import audit, callbacks
from ..services.signing import mask

bp = Blueprint("secrets", __name__, url_prefix="/settings/callbacks/<int:callback_id>/secret")


def _get(callback_id: int) -> Callback:
    cb = db.session.get(Callback, callback_id)
    if cb is None or cb.deleted_at is not None:
        abort(404, description="That callback does not exist (it may have been deleted).")
    return cb


def _render(cb: Callback, revealed: str | None = None, rotated: bool = False):  # type: ignore[no-untyped-def]
    context = {"cb": cb, "masked_secret": mask(cb.secret), "revealed": revealed, "rotated": rotated}
    if htmx.is_htmx():
        return htmx.add_vary(make_response(render_template("callbacks/_secret.html", **context)))
    return htmx.add_vary(make_response(render_template("secrets/show.html", **context)))


@bp.get("")
@require("view")
def show(callback_id: int):  # type: ignore[no-untyped-def]
    """The masked row (what "Hide" swaps back in)."""
    return _render(_get(callback_id))


@bp.post("/reveal")
@require("secrets")
def reveal(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    audit.record("callback.reveal_secret", "callback", cb.id, {"definition": cb.definition})
    db.session.commit()
    return _render(cb, revealed=cb.secret)


@bp.post("/rotate")
@require("secrets")
def rotate(callback_id: int):  # type: ignore[no-untyped-def]
    cb = _get(callback_id)
    callbacks.rotate_secret(cb)
    audit.record(
        "callback.rotate_secret",
        "callback",
        cb.id,
        {"definition": cb.definition, "previous_signs_until": cb.previous_secret_expires_at},
    )
    db.session.commit()
    return _render(cb, revealed=cb.secret, rotated=True)
