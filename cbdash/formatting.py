"""Display helpers shared by templates and views (times, durations, URLs, bytes)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

from markupsafe import Markup, escape

from .services import settings

SECRET_PARAM = re.compile(r"token|key|secret|sig|signature|pass|pwd|auth|code|session", re.I)
MASK = "••••"


def aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 instant in UTC with ``Z``, as the API returns it."""
    if dt is None:
        return None
    return aware(dt).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def local(dt: datetime | None, fmt: str = "%B %-d, %Y %H:%M") -> str:
    """``June 19, 2025 12:48`` in the display time zone."""
    if dt is None:
        return ""
    return aware(dt).astimezone(settings.current().timezone).strftime(fmt)


def time_tag(dt: datetime | None, fmt: str = "%B %-d, %Y %H:%M") -> Markup:
    """A <time> element: local text, ISO instant in datetime and title."""
    if dt is None:
        return Markup('<span class="muted">—</span>')
    stamp = iso(dt)
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(stamp, local(dt, fmt))


def tz_label() -> str:
    return settings.current().timezone.key


def seconds(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n} second" if n == 1 else f"{n} seconds"


def plural(n: int | None, singular: str, plural_form: str | None = None) -> str:
    """``3|plural('event')`` -> "3 events", ``1|plural('match', 'matches')`` -> "1 match"."""
    n = n or 0
    return f"{n:,} {singular if n == 1 else (plural_form or singular + 's')}"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms"


def mask_url(url: str | None) -> str:
    """The URL with credentials and secret-looking query values masked."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if SECRET_PARAM.search(k) else v) for k, v in pairs])
            # urlencode percent-encodes the non-ASCII mask whatever ``safe`` says: show it as itself.
            query = query.replace(quote_plus(MASK), MASK)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url


def show_bytes(data: bytes | None, limit: int | None = None) -> str:
    """Bytes as text for display: invalid UTF-8 and control bytes escaped, never raw."""
    if not data:
        return ""
    if limit is not None:
        data = data[:limit]
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(c if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127) else f"\\x{ord(c):02x}" for c in text)


def filesize(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def register(app) -> None:  # type: ignore[no-untyped-def]
    app.jinja_env.filters.update(
        iso=iso,
        local=local,
        time_tag=time_tag,
        seconds=seconds,
        ms=ms,
        mask_url=mask_url,
        show_bytes=show_bytes,
        filesize=filesize,
        plural=plural,
    )
    app.jinja_env.globals.update(tz_label=tz_label, escape=escape)
