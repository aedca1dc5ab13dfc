"""Browser forms. Field rules live in services.callbacks; these only render and collect."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Regexp

from .services import callbacks as callback_rules
from .services.users import EMAIL_RE

# (value, label) pairs of the status select. A plain StringField renders it (the template
# draws the <select>): the service validates the value, and WTForms' SelectField tuple
# choices are deprecated.
STATUS_CHOICES = [("active", "Active"), ("inactive", "Inactive")]


class CallbackForm(FlaskForm):
    definition = StringField("Definition name")
    url = StringField("URL")
    timeout = StringField("Timeout (seconds)", default="5")
    active = StringField("Status", default="active")
    description = TextAreaField("Description")
    headers = TextAreaField("Custom headers")
    retry_schedule = StringField("Retry schedule (seconds between attempts)")

    clean: dict[str, Any]

    def validate(self, extra_validators=None) -> bool:  # type: ignore[no-untyped-def]
        if not super().validate(extra_validators):
            return False
        data = {name: getattr(self, name).data for name in callback_rules.FIELDS}
        self.clean, errors = callback_rules.validate(data)
        for name, message in errors.items():
            getattr(self, name).errors = [message]
        return not errors

    def load(self, cb) -> None:  # type: ignore[no-untyped-def]
        """Fill the form from a callback (edit)."""
        self.definition.data = cb.definition
        self.url.data = cb.url
        self.timeout.data = str(cb.timeout)
        self.active.data = "active" if cb.active else "inactive"
        self.description.data = cb.description
        self.headers.data = "\n".join(f"{k}: {v}" for k, v in (cb.headers or {}).items())
        self.retry_schedule.data = cb.retry_schedule or ""


class LoginForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired("Enter your email.")])
    password = PasswordField("Password", validators=[DataRequired("Enter your password.")])


class SetupForm(FlaskForm):
    # A pattern, not wtforms' Email(): that one needs the email_validator package.
    email = EmailField(
        "Email",
        validators=[DataRequired("Enter an email."), Regexp(EMAIL_RE, message="Enter a valid email.")],
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired("Choose a password."),
            Length(min=10, message="Use at least 10 characters."),
        ],
    )
