"""Logins: create, change role, deactivate -- without ever locking every admin out."""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import func, select

from ..constants import Role
from ..extensions import db
from ..models import User

# Deliberately plain: one @, a dot in the domain, no spaces, quotes, brackets or commas.
_EMAIL_PART = r"[^@\s<>()\[\]\\,;:\"']"
EMAIL_RE = re.compile(rf"^{_EMAIL_PART}{{1,64}}@{_EMAIL_PART}{{1,189}}\.{_EMAIL_PART}{{1,60}}\Z")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class UserError(Exception):
    """A change the rules refuse; ``field`` names the form field it belongs to."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def listing() -> list[User]:
    """Every user, active first, then by email."""
    return list(db.session.scalars(select(User).order_by(User.active.desc(), User.email)))


def temporary_password() -> str:
    """A password to hand over once; the user should change it."""
    return secrets.token_urlsafe(12)


def validate_new(email: Any, role: Any, password: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Clean values and errors by field for a new user."""
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    email = email.strip().lower() if isinstance(email, str) else ""
    if not email:
        errors["email"] = "Enter an email."
    elif len(email) > 254 or not EMAIL_RE.match(email):
        errors["email"] = "Enter a valid email, like name@example.com."
    elif db.session.scalar(select(User.id).where(func.lower(User.email) == email)) is not None:
        errors["email"] = "A user with this email already exists."
    else:
        clean["email"] = email
    if role not in {r.value for r in Role}:
        errors["role"] = "Choose admin, support or viewer."
    else:
        clean["role"] = role
    password = password if isinstance(password, str) else ""
    if password and not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        errors["password"] = f"Use {MIN_PASSWORD}–{MAX_PASSWORD} characters, or leave empty to generate one."
    else:
        clean["password"] = password
    return clean, errors


def create(email: str, role: str, password: str) -> User:
    """A new active user (added, not committed)."""
    user = User(email=email, role=role, active=True)
    user.set_password(password)
    db.session.add(user)
    return user


def _other_active_admins(user: User) -> int:
    return (
        db.session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.ADMIN, User.active.is_(True), User.id != user.id)
        )
        or 0
    )


def set_role(user: User, role: str, acting: User) -> str:
    """Change a role; returns the old one. Refuses to leave no active admin."""
    if role not in {r.value for r in Role}:
        raise UserError("Choose admin, support or viewer.", "role")
    old = user.role
    if old == Role.ADMIN and role != Role.ADMIN:
        if user.id == acting.id:
            raise UserError("You cannot remove your own admin role; ask another admin.")
        if user.active and _other_active_admins(user) == 0:
            raise UserError("This is the last active admin; make someone else admin first.")
    user.role = role
    return old


def set_active(user: User, active: bool, acting: User) -> None:
    """Deactivate (signs the user out on their next request) or reactivate."""
    if not active:
        if user.id == acting.id:
            raise UserError("You cannot deactivate your own account.")
        if user.role == Role.ADMIN and _other_active_admins(user) == 0:
            raise UserError("This is the last active admin; make someone else admin first.")
    user.active = active


def reset_password(user: User) -> str:
    """Give the user a new temporary password and return it (shown once)."""
    password = temporary_password()
    user.set_password(password)
    return password
