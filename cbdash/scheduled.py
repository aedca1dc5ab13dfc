"""Periodic upkeep the worker runs: retention pruning, then pruning of old monitoring rollups.

Any number of workers may call ``run_if_due`` as often as they like (the reconciler
loop is a good place): a Redis key with a TTL lets one of them run it per interval.
Both prunes delete in small batches with a commit after each, so no table stays
locked for long. Monitoring figures come from the rollups, which outlive attempts.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)
PRUNE_KEY = "cbdash:prune:last-run"
DEFAULT_INTERVAL = 3600  # seconds between runs across all workers


def prune_now(app: Flask) -> dict[str, Any]:
    """Prune attempts and payloads older than RETENTION_DAYS, then old rollup rows."""
    from .services import monitoring, retention

    with app.app_context():
        days = int(app.config.get("RETENTION_DAYS", 30))
        removed: dict[str, Any] = dict(retention.prune(timedelta(days=days)))
        removed["rollups"] = monitoring.prune_rollups()
        return removed


def run_if_due(app: Flask, interval: int = DEFAULT_INTERVAL) -> dict[str, Any] | None:
    """Run ``prune_now`` unless another worker ran it within ``interval`` seconds."""
    from .queue import get_redis

    try:
        if not get_redis(app).set(PRUNE_KEY, "1", nx=True, ex=interval):
            return None
    except Exception:  # noqa: BLE001 - no Redis, no upkeep this round; deliveries matter more
        log.warning("retention: Redis unreachable, pruning skipped")
        return None
    try:
        removed = prune_now(app)
    except Exception:  # noqa: BLE001 - the worker loop must survive; try again next interval
        log.exception("retention: pruning failed")
        return None
    log.info("retention: pruned %s", removed)
    return removed
