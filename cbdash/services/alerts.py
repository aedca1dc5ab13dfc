"""Alerts: auto-disabled callbacks shown as a banner."""

from __future__ import annotations

from sqlalchemy import select

from ..constants import AUTO_DISABLED_PREFIX
from ..extensions import db
from ..models import Callback


def disabled_callbacks(limit: int = 5) -> list[Callback]:
    """Auto-disabled callbacks, newest first, for the alert banner."""
    return list(
        db.session.scalars(
            select(Callback)
            .where(
                Callback.deleted_at.is_(None),
                Callback.active.is_(False),
                Callback.inactive_reason.startswith(AUTO_DISABLED_PREFIX),
            )
            .order_by(Callback.disabled_at.desc())
            .limit(limit)
        )
    )
