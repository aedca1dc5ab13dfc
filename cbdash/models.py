"""Database models: the source of truth. Times are naive UTC."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from flask_login import UserMixin
from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .constants import AUTO_DISABLED_PREFIX, DeliveryStatus, Health, Role
from .extensions import db


def utcnow() -> datetime:
    """Now as naive UTC, the form every timestamp column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_uid(prefix: str) -> str:
    """A random public identifier such as ``evt_3kq...``."""
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'y')}"


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.active

    def can(self, permission: str) -> bool:
        from .permissions import allowed

        return allowed(self.role, permission)


class ApiToken(db.Model):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=Role.ADMIN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Callback(db.Model):
    __tablename__ = "callbacks"
    __table_args__ = (
        Index("ix_callbacks_active_created", "active", "created_at"),
        Index("ix_callbacks_definition_active", "definition", "active"),
        # Monitoring lists callbacks (not deleted) failing-first, most recently called next:
        # walking this index backwards gives that order without sorting.
        Index("ix_callbacks_attention", "deleted_at", "consecutive_failures", "last_attempt_at"),
        # Tab counts and totals (not deleted, by status) read this index alone.
        Index("ix_callbacks_deleted_active", "deleted_at", "active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    definition: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(2048))
    timeout: Mapped[int] = mapped_column(default=5)
    active: Mapped[bool] = mapped_column(default=True)
    inactive_reason: Mapped[str | None] = mapped_column(String(255))
    disabled_at: Mapped[datetime | None]
    description: Mapped[str] = mapped_column(Text, default="")
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    retry_schedule: Mapped[str | None] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None]
    priority: Mapped[int] = mapped_column(default=100)
    failure_policy: Mapped[str] = mapped_column(String(16), default="fail")
    fallback_response: Mapped[Any | None] = mapped_column(JSON)
    # Circuit breaker for synchronous invocations (services/breaker.py).
    breaker_state: Mapped[str] = mapped_column(String(16), default="closed", server_default="closed")
    breaker_since: Mapped[datetime | None]
    breaker_reason: Mapped[str | None] = mapped_column(String(255))
    breaker_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    breaker_window_start: Mapped[datetime | None]
    breaker_trial_until: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    failing_since: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None]

    @property
    def auto_disabled(self) -> bool:
        return not self.active and (self.inactive_reason or "").startswith(AUTO_DISABLED_PREFIX)

    def health(self, failing_after: int = 3) -> Health:
        """Healthy, failing (N consecutive failed attempts) or disabled."""
        if self.auto_disabled:
            return Health.DISABLED
        if self.consecutive_failures >= failing_after:
            return Health.FAILING
        return Health.HEALTHY

    def signing_secrets(self, now: datetime | None = None) -> list[str]:
        """The current secret, plus the previous one while its overlap lasts."""
        now = now or utcnow()
        keys = [self.secret]
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            keys.append(self.previous_secret)
        return keys


class Event(db.Model):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(40), unique=True, default=lambda: new_uid("evt"))
    definition: Mapped[str] = mapped_column(String(100), index=True)
    # The exact bytes every delivery of this event sends (UTF-8 JSON envelope).
    body: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32), default="api")
    is_test: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="event")

    @property
    def payload(self) -> Any:
        return json.loads(self.body).get("data")


class Delivery(db.Model):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_deliveries_callback_created", "callback_id", "created_at"),
        Index("ix_deliveries_created", "created_at"),
        # The delivery log filters by status or kind and pages newest first by (created_at, id).
        Index("ix_deliveries_status_created", "status", "created_at", "id"),
        Index("ix_deliveries_kind_created", "kind", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Stable across retries and redeliveries of the same message (Standard Webhooks id).
    webhook_id: Mapped[str] = mapped_column(String(40), index=True, default=lambda: new_uid("msg"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    callback_id: Mapped[int] = mapped_column(ForeignKey("callbacks.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    status_detail: Mapped[str | None] = mapped_column(String(255))
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(32))
    last_duration_ms: Mapped[float | None]
    redelivery_of_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    event: Mapped[Event] = relationship(back_populates="deliveries")
    callback: Mapped[Callback] = relationship()
    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="delivery", order_by="Attempt.number", cascade="all, delete-orphan"
    )

    @property
    def next_attempt_shown(self) -> datetime | None:
        """The next attempt as shown to people: never in the past (an overdue one is due now)."""
        if self.status not in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING) or not self.next_attempt_at:
            return None
        return max(self.next_attempt_at, utcnow())

    @property
    def is_final(self) -> bool:
        return self.status in (
            DeliveryStatus.SUCCEEDED,
            DeliveryStatus.FAILED,
            DeliveryStatus.SKIPPED,
        )


class Attempt(db.Model):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_delivery_number", "delivery_id", "number"),
        Index("ix_attempts_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    number: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    url: Mapped[str] = mapped_column(String(2048))
    request_headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status_code: Mapped[int | None]
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(String(1000))
    location: Mapped[str | None] = mapped_column(String(2048))
    response_headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    response_excerpt: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    response_size: Mapped[int] = mapped_column(default=0)
    response_truncated: Mapped[bool] = mapped_column(default=False)

    delivery: Mapped[Delivery] = relationship(back_populates="attempts")

    @property
    def succeeded(self) -> bool:
        return self.error_class is None and self.status_code is not None


class AuditEntry(db.Model):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))


class InboundSource(db.Model):
    """A third party that sends webhooks to ``POST /hooks/<slug>`` (SPEC §6a)."""

    __tablename__ = "inbound_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Short enough that "inbound:<slug>" fits Event.source (32 chars).
    slug: Mapped[str] = mapped_column(String(24), unique=True)
    preset: Mapped[str] = mapped_column(String(24))
    secret: Mapped[str] = mapped_column(String(255), default="")
    previous_secret: Mapped[str | None] = mapped_column(String(255))
    previous_secret_expires_at: Mapped[datetime | None]
    token_header: Mapped[str] = mapped_column(String(100), default="X-Webhook-Token")
    definition: Mapped[str] = mapped_column(String(100))
    dedupe_header: Mapped[str | None] = mapped_column(String(100))
    response_status: Mapped[int] = mapped_column(default=200)
    response_body: Mapped[str] = mapped_column(Text, default="")
    tolerance: Mapped[int] = mapped_column(default=300)
    rate_limit: Mapped[int] = mapped_column(default=600)
    rate_window: Mapped[int] = mapped_column(default=60)
    description: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def verifying_secrets(self, now: datetime | None = None) -> list[str]:
        """The current secret, plus the previous one while its overlap lasts."""
        now = now or utcnow()
        keys = [self.secret] if self.secret else []
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            keys.append(self.previous_secret)
        return keys


class InboundMessage(db.Model):
    """One request to a source's hook URL: accepted, duplicate or refused."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        # A provider event id is stored (and relayed) once per source; only accepted
        # messages carry it here, so duplicates and refusals never collide.
        Index("ux_inbound_messages_source_dedupe", "source_id", "dedupe_key", unique=True),
        Index("ix_inbound_messages_source_outcome", "source_id", "outcome"),
        Index("ix_inbound_messages_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("inbound_sources.id", ondelete="CASCADE"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int]
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(500))
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    provider_id: Mapped[str | None] = mapped_column(String(255))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"), index=True)
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    body_excerpt: Mapped[str | None] = mapped_column(Text)
    body_size: Mapped[int] = mapped_column(default=0)
    payload_is_text: Mapped[bool] = mapped_column(default=False)
    debug: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    remote_addr: Mapped[str | None] = mapped_column(String(64))

    source: Mapped[InboundSource] = relationship()
    event: Mapped[Event | None] = relationship()


class StatsRollup(db.Model):
    """Attempt and delivery-outcome counts per callback (0 = all) per minute, hour or all time.

    Updated in the transaction that records each attempt, so monitoring never scans
    the attempts table; kept apart from it (no foreign keys) so it survives pruning.
    """

    __tablename__ = "stats_rollups"
    __table_args__ = (Index("ux_stats_rollups_key", "resolution", "callback_id", "bucket", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    resolution: Mapped[int]  # seconds per bucket: 60, 3600, or 0 for "since the start"
    callback_id: Mapped[int]
    bucket: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    attempts_ok: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_timeout: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_connect: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_tls: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_dns: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_blocked: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_redirect: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_4xx: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_5xx: Mapped[int] = mapped_column(default=0, server_default="0")
    fail_other: Mapped[int] = mapped_column(default=0, server_default="0")
    duration_ms_sum: Mapped[float] = mapped_column(default=0.0, server_default="0")
    deliveries_succeeded: Mapped[int] = mapped_column(default=0, server_default="0")
    deliveries_failed: Mapped[int] = mapped_column(default=0, server_default="0")


class LatencyRollup(db.Model):
    """Attempt durations as a histogram (one row per non-empty latency bucket), same scopes."""

    __tablename__ = "latency_rollups"
    __table_args__ = (
        Index("ux_latency_rollups_key", "resolution", "callback_id", "bucket", "le_index", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resolution: Mapped[int]
    callback_id: Mapped[int]
    bucket: Mapped[datetime]
    le_index: Mapped[int]  # index into services.monitoring.LATENCY_BOUNDS_MS
    count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Fastest and slowest attempt in this bucket: percentiles interpolate between them.
    min_ms: Mapped[float | None]
    max_ms: Mapped[float | None]
