"""Status values, kinds, error classes, roles and tabs: one place each."""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


# Statuses a worker may still act on; the others are final.
OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING)
FINAL_STATUSES = (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED)


class DeliveryKind(StrEnum):
    EVENT = "event"
    PING = "ping"
    INVOKE = "invoke"
    REDELIVERY = "redelivery"
    INBOUND = "inbound"  # relays a message received on /hooks/<slug> (Event.source "inbound:<slug>")


class ErrorClass(StrEnum):
    TIMEOUT = "timeout"
    CONNECT = "connect"
    TLS = "tls"
    DNS = "dns"
    BLOCKED = "blocked"
    REDIRECT = "redirect"
    HTTP_STATUS = "http_status"
    INVALID_URL = "invalid_url"


ERROR_LABELS = {
    ErrorClass.TIMEOUT: "Timed out",
    ErrorClass.CONNECT: "Connection failed",
    ErrorClass.TLS: "TLS error",
    ErrorClass.DNS: "DNS lookup failed",
    ErrorClass.BLOCKED: "Blocked by SSRF guard",
    ErrorClass.REDIRECT: "Redirect (not followed)",
    ErrorClass.HTTP_STATUS: "HTTP error status",
    ErrorClass.INVALID_URL: "Invalid URL",
}


class Role(StrEnum):
    ADMIN = "admin"
    SUPPORT = "support"
    VIEWER = "viewer"


class Tab(StrEnum):
    ALL = "all"
    ACTIVE = "active"
    INACTIVE = "inactive"


class Health(StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"
    DISABLED = "disabled"


INACTIVE_MANUAL = "manual"
AUTO_DISABLED_PREFIX = "auto-disabled: "
