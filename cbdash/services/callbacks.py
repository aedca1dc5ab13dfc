"""Callback rules shared by the form, the API, import and the demo."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import false, func, or_, select

from ..constants import INACTIVE_MANUAL, Tab
from ..extensions import db
from ..models import Callback, utcnow
from . import settings, ssrf
from .signing import generate_secret

NAME_RE = re.compile(r"^[a-z0-9_.-]{3,100}$")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# Headers the engine sets itself; a custom header may not replace them.
RESERVED_HEADERS = {
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
}
FIELDS = {"definition", "url", "timeout", "active", "description", "headers", "retry_schedule"}


def validate(data: dict[str, Any], *, partial: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Check callback fields; return (clean values, errors by field)."""
    cfg = settings.current()
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}

    if "definition" in data or not partial:
        name = data.get("definition")
        name = name.strip() if isinstance(name, str) else name
        if name is None or name == "":
            errors["definition"] = "Enter a definition name."
        elif not isinstance(name, str):
            errors["definition"] = "The definition name must be text, for example order.created."
        elif not NAME_RE.match(name):
            errors["definition"] = (
                "Use 3–100 lowercase letters, digits, dots, dashes or underscores "
                "(for example order.created)."
            )
        else:
            clean["definition"] = name

    if "url" in data or not partial:
        url = data.get("url")
        url = url.strip() if isinstance(url, str) else url
        if url is None or url == "":
            errors["url"] = "Enter the URL to call."
        elif not isinstance(url, str):
            errors["url"] = "The URL must be text, for example https://example.com/hook."
        else:
            try:
                ssrf.check_target(url, cfg.policy)
                clean["url"] = url
            except ssrf.TargetError as exc:
                errors["url"] = exc.message

    if "timeout" in data or not partial:
        raw = data.get("timeout", 5)
        try:
            if isinstance(raw, bool) or raw is None or raw == "":
                raise ValueError
            timeout = int(str(raw).strip())
        except (ValueError, TypeError):
            errors["timeout"] = "Enter a whole number of seconds."
        else:
            if not 1 <= timeout <= cfg.max_timeout:
                errors["timeout"] = f"Choose between 1 and {cfg.max_timeout} seconds."
            else:
                clean["timeout"] = timeout

    if "active" in data:
        active = data["active"]
        if isinstance(active, str) and active.lower() in {"active", "true", "1", "on"}:
            active = True
        elif isinstance(active, str) and active.lower() in {"inactive", "false", "0", "off"}:
            active = False
        if not isinstance(active, bool):
            errors["active"] = "Status must be active or inactive."
        else:
            clean["active"] = active

    if "description" in data:
        desc = data.get("description")
        desc = "" if desc is None else desc
        if not isinstance(desc, str):
            errors["description"] = "The description must be text."
        elif len(desc) > 2000:
            errors["description"] = "Keep the description under 2000 characters."
        else:
            clean["description"] = desc.strip()

    if "headers" in data:
        headers, error = parse_headers(data.get("headers"))
        if error:
            errors["headers"] = error
        else:
            clean["headers"] = headers

    if "retry_schedule" in data:
        raw = data.get("retry_schedule")
        if raw is None or raw == "":
            clean["retry_schedule"] = None
        elif isinstance(raw, bool) or not isinstance(raw, (str, int, list)):
            errors["retry_schedule"] = (
                "The retry schedule must be text like 5,300,1800 or a list of whole numbers of seconds."
            )
        else:
            text = ",".join(str(x) for x in raw) if isinstance(raw, list) else str(raw)
            try:
                delays = [int(x) for x in text.replace(" ", "").split(",") if x]
                if not delays or any(d < 0 or d > 7 * 86400 for d in delays) or len(delays) > 20:
                    raise ValueError
                clean["retry_schedule"] = ",".join(str(d) for d in delays)
            except ValueError:
                errors["retry_schedule"] = (
                    "Seconds between attempts, comma-separated (at most 20 values, each up to "
                    "604800), e.g. 5,300,1800 — or leave empty for the default."
                )
    return clean, errors


def parse_headers(raw: Any) -> tuple[dict[str, str], str | None]:
    """Accept a dict or ``Name: value`` lines; return (headers, error)."""
    if raw is None or raw == "" or raw == {}:
        return {}, None
    if isinstance(raw, str):
        pairs = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            if ":" not in line:
                return {}, f"“{line.strip()[:40]}” is not a “Name: value” line."
            name, value = line.split(":", 1)
            pairs.append((name.strip(), value.strip()))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        return {}, "Headers must be an object of names to values."
    headers: dict[str, str] = {}
    if len(pairs) > 20:
        return {}, "At most 20 custom headers."
    for name, value in pairs:
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            return {}, f"“{str(name)[:40]}” is not a valid header name."
        if name.lower() in RESERVED_HEADERS:
            return {}, f"{name} is set by cbdash and cannot be overridden."
        if not isinstance(value, str):
            return {}, f"The value of {name} must be text."
        if len(value) > 1000 or any(c in value for c in "\r\n\0"):
            return {}, f"The value of {name} must be text without line breaks, up to 1000 chars."
        headers[name] = value
    return headers, None


def create(clean: dict[str, Any]) -> Callback:
    """A new callback (not committed) with a fresh signing secret."""
    cb = Callback(
        definition=clean["definition"],
        url=clean["url"],
        timeout=clean.get("timeout", 5),
        active=clean.get("active", True),
        description=clean.get("description", ""),
        headers=clean.get("headers", {}),
        retry_schedule=clean.get("retry_schedule"),
        secret=generate_secret(),
    )
    if not cb.active:
        cb.inactive_reason = INACTIVE_MANUAL
        cb.disabled_at = utcnow()
    db.session.add(cb)
    return cb


def update(cb: Callback, clean: dict[str, Any]) -> dict[str, Any]:
    """Apply changes; return {field: [old, new]} for the audit log."""
    changes: dict[str, Any] = {}
    for name, value in clean.items():
        if name == "active":
            continue
        if getattr(cb, name) != value:
            changes[name] = [getattr(cb, name), value]
            setattr(cb, name, value)
    if "active" in clean and clean["active"] != cb.active:
        changes["active"] = [cb.active, clean["active"]]
        set_active(cb, clean["active"])
    return changes


def set_active(cb: Callback, active: bool, reason: str = INACTIVE_MANUAL) -> None:
    """Activate (clearing health) or deactivate with a reason."""
    cb.active = active
    if active:
        cb.inactive_reason = None
        cb.disabled_at = None
        cb.consecutive_failures = 0
        cb.failing_since = None
    else:
        cb.inactive_reason = reason
        cb.disabled_at = utcnow()


def rotate_secret(cb: Callback) -> None:
    """New secret; the old one keeps signing alongside for the configured overlap."""
    from datetime import timedelta

    cfg = settings.current()
    cb.previous_secret = cb.secret
    cb.previous_secret_expires_at = utcnow() + timedelta(hours=cfg.secret_overlap_hours)
    cb.secret = generate_secret()


def soft_delete(cb: Callback) -> None:
    """Hide the callback; its deliveries keep their history and queued ones get skipped."""
    cb.deleted_at = utcnow()
    cb.active = False
    cb.inactive_reason = "deleted"


@dataclass
class Page:
    items: list[Callback]
    page: int
    pages: int
    total: int
    per_page: int


def live() -> Any:
    return select(Callback).where(Callback.deleted_at.is_(None))


def counts() -> dict[str, int]:
    """Callbacks per tab."""
    rows = db.session.execute(
        select(Callback.active, func.count()).where(Callback.deleted_at.is_(None)).group_by(Callback.active)
    ).all()
    by = {bool(active): n for active, n in rows}
    return {
        Tab.ALL: by.get(True, 0) + by.get(False, 0),
        Tab.ACTIVE: by.get(True, 0),
        Tab.INACTIVE: by.get(False, 0),
    }


def _url_matches(like: str, q: str) -> Any:
    """Ids whose URL *as displayed* contains ``q``.

    Searching the raw URL would let anyone who can search find out credentials and
    query-string tokens one character at a time, so URLs that can carry them
    (``@`` or ``?``) are matched in their masked form.
    """
    from ..formatting import mask_url

    plain = ~Callback.url.contains("@") & ~Callback.url.contains("?")
    needle = q.lower()
    masked_hits = [
        cb_id
        for cb_id, url in db.session.execute(
            select(Callback.id, Callback.url).where(
                Callback.deleted_at.is_(None), ~plain, Callback.url.ilike(like, escape="\\")
            )
        )
        if needle in mask_url(url).lower()
    ]
    return select(Callback.id).where(
        or_(
            plain & Callback.url.ilike(like, escape="\\"),
            Callback.id.in_(masked_hits) if masked_hits else false(),
        )
    )


def listing(tab: str, q: str = "", sort: str = "newest", page: int = 1, per_page: int = 25) -> Page:
    """One page of callbacks for a tab, search and sort."""
    stmt = live()
    if tab == Tab.ACTIVE:
        stmt = stmt.where(Callback.active.is_(True))
    elif tab == Tab.INACTIVE:
        stmt = stmt.where(Callback.active.is_(False))
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(
                Callback.definition.ilike(like, escape="\\"),
                Callback.id.in_(_url_matches(like, q)),
            )
        )
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    order = Callback.created_at.asc() if sort == "oldest" else Callback.created_at.desc()
    tiebreak = Callback.id.asc() if sort == "oldest" else Callback.id.desc()
    items = list(
        db.session.scalars(stmt.order_by(order, tiebreak).limit(per_page).offset((page - 1) * per_page))
    )
    return Page(items, page, pages, total, per_page)
