"""Settings › System › Users (admins): create, change role, deactivate, reset password."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..constants import Role
from ..extensions import db
from ..models import User
from ..permissions import require
from ..services import audit, users

bp = Blueprint("users", __name__, url_prefix="/settings/users")


def _page(status: int = 200, **extra):  # type: ignore[no-untyped-def]
    context = {
        "users": users.listing(),
        "roles": [r.value for r in Role],
        "form": {"email": "", "role": Role.VIEWER.value},
        "errors": {},
        "shown_password": None,
        **extra,
    }
    return render_template("users/index.html", **context), status


def _get(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404, description="No such user.")
    return user


@bp.get("")
@require("admin")
def index():  # type: ignore[no-untyped-def]
    return _page()


@bp.post("")
@require("admin")
def create():  # type: ignore[no-untyped-def]
    form = {k: request.form.get(k, "") for k in ("email", "role", "password")}
    clean, errors = users.validate_new(form["email"], form["role"], form["password"])
    if errors:
        return _page(422, form=form, errors=errors)
    password = clean["password"] or users.temporary_password()
    user = users.create(clean["email"], clean["role"], password)
    db.session.flush()
    audit.record("user.create", "user", user.id, {"email": user.email, "role": user.role})
    db.session.commit()
    if clean["password"]:
        flash(f"{user.email} can now sign in as {user.role}.", "success")
        return redirect(url_for("users.index"), code=303)
    # A generated password is shown once, on this response only (never in a flash,
    # which would sit in the session cookie).
    return _page(201, shown_password=(user, password))


@bp.post("/<int:user_id>/role")
@require("admin")
def change_role(user_id: int):  # type: ignore[no-untyped-def]
    user = _get(user_id)
    try:
        old = users.set_role(user, request.form.get("role", ""), current_user)
    except users.UserError as exc:
        flash(exc.message, "danger")
        return redirect(url_for("users.index"), code=303)
    if old != user.role:
        audit.record("user.role", "user", user.id, {"email": user.email, "role": [old, user.role]})
        db.session.commit()
        flash(f"{user.email} is now {user.role}.", "success")
    return redirect(url_for("users.index"), code=303)


@bp.post("/<int:user_id>/active")
@require("admin")
def toggle_active(user_id: int):  # type: ignore[no-untyped-def]
    user = _get(user_id)
    active = request.form.get("active") == "1"
    if user.active == active:
        return redirect(url_for("users.index"), code=303)
    try:
        users.set_active(user, active, current_user)
    except users.UserError as exc:
        flash(exc.message, "danger")
        return redirect(url_for("users.index"), code=303)
    audit.record("user.activate" if active else "user.deactivate", "user", user.id, {"email": user.email})
    db.session.commit()
    flash(f"{user.email} {'reactivated' if active else 'deactivated and signed out'}.", "success")
    return redirect(url_for("users.index"), code=303)


@bp.post("/<int:user_id>/password")
@require("admin")
def reset_password(user_id: int):  # type: ignore[no-untyped-def]
    user = _get(user_id)
    password = users.reset_password(user)
    audit.record("user.reset_password", "user", user.id, {"email": user.email})
    db.session.commit()
    return _page(shown_password=(user, password))
