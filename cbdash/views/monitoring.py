"""Settings › System › Monitoring: health of every callback at a glance, refreshed by polling."""

from __future__ import annotations

from flask import Blueprint, current_app, make_response, render_template, request, url_for

from .. import htmx
from ..models import utcnow
from ..permissions import require
from ..services import inbound, monitoring, settings

bp = Blueprint("monitoring", __name__, url_prefix="/settings/callbacks/monitoring")
PER_PAGE = 25


def _state() -> tuple[monitoring.Window, int]:
    key = request.args.get("window", monitoring.DEFAULT_WINDOW)
    if key not in monitoring.WINDOWS:
        key = monitoring.DEFAULT_WINDOW  # a stale or hand-edited link falls back, never errors
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    return monitoring.window(key, utcnow()), page


@bp.app_template_global()
def monitoring_url(endpoint: str = "monitoring.index", window: str = "", page: int = 1) -> str:
    """The page (or live fragment) URL for a window and callbacks-table page; defaults omitted."""
    args: dict[str, object] = {}
    if window and window != monitoring.DEFAULT_WINDOW:
        args["window"] = window
    if page > 1:
        args["page"] = page
    return url_for(endpoint, **args)


@bp.app_template_filter("age")
def age(seconds: float | None) -> str:
    """A wait as people say it: "12 s", "2 min 54 s", "1 h 5 min"."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _context() -> dict:
    w, page = _state()
    cfg = settings.current()
    ov = monitoring.overview(w, cfg.failing_after)
    return {
        "w": w,
        "ov": ov,
        "chart": monitoring.build_chart(ov.points, w, cfg.timezone),
        "table": monitoring.callback_table(w, page, PER_PAGE, cfg.failing_after),
        "queue": monitoring.queue_state(),
        "kinds": monitoring.kind_counts(w),
        "kind_cap": monitoring.KIND_COUNT_CAP,
        "inbound": inbound.activity(w.start),
        "windows": list(monitoring.WINDOWS),
        "window_labels": monitoring.WINDOW_LABELS,
        "reasons": monitoring.REASONS,
        "reason_labels": monitoring.REASON_LABELS,
        "reason_short": monitoring.REASON_SHORT,
        "refresh_seconds": int(current_app.config.get("MONITORING_REFRESH_SECONDS", 10)),
        "now": utcnow(),
    }


@bp.get("")
@require("view")
def index():  # type: ignore[no-untyped-def]
    ctx = _context()
    if htmx.wants_fragment() and request.headers.get("HX-Target") == "monitoring-live":
        return htmx.add_vary(make_response(render_template("monitoring/_live.html", **ctx)))
    return htmx.add_vary(make_response(render_template("monitoring/index.html", **ctx)))


@bp.get("/live")
@require("view")
def live():  # type: ignore[no-untyped-def]
    """The self-refreshing part of the page: what polling and the window switch swap."""
    return render_template("monitoring/_live.html", **_context())
