"""Typed access to the settings services need, read from the app config once per app."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from flask import current_app

from .ssrf import TargetPolicy


@dataclass(frozen=True)
class Settings:
    policy: TargetPolicy
    max_timeout: int
    retry_delays: tuple[int, ...]
    retry_jitter: float
    read_limit: int
    excerpt_limit: int
    secret_overlap_hours: float
    failing_after: int
    disable_after_hours: float
    disable_min_failures: int
    timezone: ZoneInfo
    queue_name: str
    payload_limit: int


def current() -> Settings:
    """The running app's settings (cached on the app)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cached = app.extensions.get("cbdash_settings")
    if cached is None:
        c = app.config
        cached = Settings(
            policy=TargetPolicy.from_setting(c["ALLOWED_TARGETS"]),
            max_timeout=int(c["MAX_TIMEOUT"]),
            retry_delays=tuple(c["RETRY_DELAYS"]),
            retry_jitter=float(c["RETRY_JITTER"]),
            read_limit=int(c["RESPONSE_READ_LIMIT"]),
            excerpt_limit=int(c["RESPONSE_EXCERPT"]),
            secret_overlap_hours=float(c["SECRET_OVERLAP_HOURS"]),
            failing_after=int(c["FAILING_AFTER"]),
            disable_after_hours=float(c["DISABLE_AFTER_HOURS"]),
            disable_min_failures=int(c["DISABLE_MIN_FAILURES"]),
            timezone=ZoneInfo(c["TIMEZONE"]),
            queue_name=c["QUEUE_NAME"],
            payload_limit=int(c["PAYLOAD_LIMIT"]),
        )
        app.extensions["cbdash_settings"] = cached
    return cached
