"""Login, logout and the one-time first-admin setup."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..constants import Role
from ..extensions import db
from ..forms import LoginForm, SetupForm
from ..models import User, utcnow
from ..services import audit, throttle
from ..web import _local_path

bp = Blueprint("auth", __name__)
MAX_PASSWORD = 1024
_dummy_hash: list[str] = []


def _no_users() -> bool:
    return db.session.scalar(select(User.id).limit(1)) is None


def _burn_hash(password: str) -> None:
    # Unknown and inactive accounts cost as much time as a wrong password, so the
    # response time does not tell which emails have accounts.
    if not _dummy_hash:
        _dummy_hash.append(generate_password_hash("cbdash-no-such-user"))
    check_password_hash(_dummy_hash[0], password)


@bp.route("/setup", methods=["GET", "POST"])
def setup():  # type: ignore[no-untyped-def]
    if not _no_users():
        abort(404)  # one time only: gone once an account exists
    form = SetupForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        if len(email) > 254 or len(form.password.data) > MAX_PASSWORD:
            form.email.errors = ["Use an email up to 254 and a password up to 1024 characters."]
            return render_template("auth/setup.html", form=form), 422
        user = User(email=email, role=Role.ADMIN)
        user.set_password(form.password.data)
        db.session.add(user)
        db.session.flush()
        audit.record(
            "user.create",
            "user",
            user.id,
            {"email": user.email, "role": Role.ADMIN, "first_admin": True},
            actor=user.email,
        )
        db.session.commit()
        login_user(user)
        flash("Welcome! Your admin account is ready.", "success")
        return redirect(url_for("callbacks.index"), code=303)
    return render_template("auth/setup.html", form=form), (422 if form.errors else 200)


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    if _no_users():
        return redirect(url_for("auth.setup"))
    next_path = _local_path(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_path or url_for("callbacks.index"))
    form = LoginForm()
    error = None
    status = 200
    wait = 0
    if form.validate_on_submit():
        email = (form.email.data or "").strip().lower()[:254]
        password = form.password.data or ""
        address = request.remote_addr or ""
        wait = throttle.login_blocked(email, address)
        if wait:
            minutes = -(-wait // 60)
            error = (
                "Too many failed sign-ins for this account or from this address. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
            )
            status = 429
        else:
            user = db.session.scalar(select(User).where(func.lower(User.email) == email))
            ok = False
            if len(password) > MAX_PASSWORD:
                _burn_hash("")
            elif user is not None and user.active:
                ok = user.check_password(password)
            else:
                _burn_hash(password)
            if ok and user is not None:
                throttle.login_succeeded(email, address)
                user.last_login_at = utcnow()
                audit.record("login", "user", user.id, actor=user.email)
                db.session.commit()
                login_user(user)
                return redirect(next_path or url_for("callbacks.index"))
            throttle.login_failed(email, address)
            target = user.id if user else None
            audit.record("login.failed", "user", target, {"email": email}, actor=email or "?")
            db.session.commit()
            error = "That email and password do not match an active account."
            status = 401
    elif form.errors:
        status = 422
    response = render_template("auth/login.html", form=form, error=error, next_path=next_path)
    return response, status, ({"Retry-After": str(wait)} if status == 429 else {})


@bp.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    if current_user.is_authenticated:
        audit.record("logout", "user", current_user.id)
        db.session.commit()
    logout_user()
    flash("You are signed out.", "success")
    return redirect(url_for("auth.login"), code=303)
