"""Login, logout and the one-time first-admin setup."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select

from ..constants import Role
from ..extensions import db
from ..forms import LoginForm, SetupForm
from ..models import User, utcnow
from ..services import audit
from ..web import _local_path

bp = Blueprint("auth", __name__)


def _no_users() -> bool:
    return db.session.scalar(select(User.id).limit(1)) is None


@bp.route("/setup", methods=["GET", "POST"])
def setup():  # type: ignore[no-untyped-def]
    if not _no_users():
        abort(404)  # one time only: gone once an admin exists
    form = SetupForm()
    if form.validate_on_submit():
        user = User(email=form.email.data.strip().lower(), role=Role.ADMIN)
        user.set_password(form.password.data)
        db.session.add(user)
        db.session.flush()
        audit.record(
            "user.create",
            "user",
            user.id,
            {"role": Role.ADMIN, "first_admin": True},
            actor=user.email,
        )
        db.session.commit()
        login_user(user)
        flash("Welcome! Your admin account is ready.", "success")
        return redirect(url_for("callbacks.index"))
    return render_template("auth/setup.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    if _no_users():
        return redirect(url_for("auth.setup"))
    if current_user.is_authenticated:
        return redirect(url_for("callbacks.index"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        email = (form.email.data or "").strip().lower()
        from ..services import throttle

        wait = throttle.login_blocked(email, request.remote_addr or "")
        if wait:
            error = f"Too many failed sign-ins. Try again in {wait} seconds."
        else:
            user = db.session.scalar(select(User).where(func.lower(User.email) == email))
            if user and user.active and user.check_password(form.password.data or ""):
                throttle.login_succeeded(email, request.remote_addr or "")
                user.last_login_at = utcnow()
                audit.record("login", "user", user.id, actor=user.email)
                db.session.commit()
                login_user(user)
                return redirect(_local_path(request.args.get("next")) or url_for("callbacks.index"))
            throttle.login_failed(email, request.remote_addr or "")
            audit.record("login.failed", "user", None, {"email": email[:254]}, actor=email[:254] or "?")
            db.session.commit()
            error = "That email and password do not match an active account."
    return render_template("auth/login.html", form=form, error=error), (401 if error else 200)


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    if current_user.is_authenticated:
        audit.record("logout", "user", current_user.id)
        db.session.commit()
    logout_user()
    flash("You are signed out.", "success")
    return redirect(url_for("auth.login"))
