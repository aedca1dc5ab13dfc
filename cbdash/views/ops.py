"""Operational endpoints: /healthz (process up), /readyz (database and Redis), /metrics."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import text

from ..extensions import db
from ..queue import get_redis
from ..services import metrics as metrics_service

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    checks: dict[str, str] = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), (200 if ok else 503)


def _loopback(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((addr or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    """Prometheus text. With METRICS_TOKEN set: bearer token required; without: loopback only."""
    token = str(current_app.config.get("METRICS_TOKEN") or "")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = Response("A valid metrics token is required (Authorization: Bearer <token>).\n", 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="cbdash-metrics"'
            response.mimetype = "text/plain"
            return response
    elif not _loopback(request.remote_addr):
        # No token configured: only a scraper on this host may read it.
        return Response(
            "Set CBDASH_METRICS_TOKEN to scrape /metrics from another host.\n", 403, mimetype="text/plain"
        )
    body, content_type = metrics_service.render()
    return Response(body, 200, content_type=content_type)
