"""Prometheus metrics, built from the database and the rollups on every scrape.

A custom collector rather than in-process counters: attempts happen in any number
of worker processes on any number of hosts, and only the database has them all.
Counters come from the all-time rollup rows, which retention pruning never
touches, so they only ever go up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from ..extensions import db
from ..models import Callback, LatencyRollup, StatsRollup
from . import monitoring, settings

# Histogram buckets exposed to Prometheus (ms): a subset of the rollups' finer bounds,
# so each one is exact.
EXPOSED_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class DatabaseCollector:
    """Delivery, attempt, latency, queue and callback-health metrics for the whole install."""

    def __init__(self, include_queue: bool = True) -> None:
        self.include_queue = include_queue

    def collect(self) -> Iterator[Metric]:
        totals = {
            row[0]: dict(zip(monitoring.COUNT_COLUMNS, row[1:], strict=True))
            for row in db.session.execute(
                select(
                    StatsRollup.callback_id, *(getattr(StatsRollup, c) for c in monitoring.COUNT_COLUMNS)
                ).where(StatsRollup.resolution == monitoring.TOTAL)
            )
        }
        everything = totals.pop(monitoring.ALL_CALLBACKS, None) or dict.fromkeys(monitoring.COUNT_COLUMNS, 0)
        yield from self._deliveries(totals)
        yield self._attempts(everything)
        yield self._latency(everything)
        yield from self._gauges()

    def _deliveries(self, per_callback: dict[int, dict[str, Any]]) -> Iterator[Metric]:
        names = {cid: name for cid, name in db.session.execute(select(Callback.id, Callback.definition))}
        family = CounterMetricFamily(
            "cbdash_deliveries",
            "Deliveries that reached a final outcome, by callback and outcome.",
            labels=["callback_id", "definition", "outcome"],
        )
        for cid in sorted(per_callback):
            counts = per_callback[cid]
            definition = names.get(cid, "")
            family.add_metric([str(cid), definition, "succeeded"], int(counts["deliveries_succeeded"] or 0))
            family.add_metric([str(cid), definition, "failed"], int(counts["deliveries_failed"] or 0))
        yield family

    @staticmethod
    def _attempts(counts: dict[str, Any]) -> Metric:
        family = CounterMetricFamily(
            "cbdash_attempts",
            "HTTP attempts to callbacks by outcome: success or the failure reason.",
            labels=["outcome"],
        )
        family.add_metric(["success"], int(counts["attempts_ok"] or 0))
        for reason in monitoring.REASONS:
            family.add_metric([reason], int(counts[f"fail_{reason}"] or 0))
        return family

    @staticmethod
    def _latency(counts: dict[str, Any]) -> Metric:
        fine: dict[int, int] = {
            index: int(n or 0)
            for index, n in db.session.execute(
                select(LatencyRollup.le_index, func.sum(LatencyRollup.count))
                .where(
                    LatencyRollup.resolution == monitoring.TOTAL,
                    LatencyRollup.callback_id == monitoring.ALL_CALLBACKS,
                )
                .group_by(LatencyRollup.le_index)
            )
        }
        buckets: list[tuple[str, float]] = []
        for bound in EXPOSED_BOUNDS_MS:
            index = monitoring.LATENCY_BOUNDS_MS.index(float(bound))
            buckets.append((repr(bound / 1000), float(sum(n for i, n in fine.items() if i <= index))))
        total = float(sum(fine.values()))
        buckets.append(("+Inf", total))
        family = HistogramMetricFamily(
            "cbdash_attempt_duration_seconds",
            "Duration of HTTP attempts to callbacks (all callbacks), including timeouts and errors.",
        )
        family.add_metric([], buckets, sum_value=float(counts["duration_ms_sum"] or 0.0) / 1000)
        return family

    def _gauges(self) -> Iterator[Metric]:
        open_family = GaugeMetricFamily(
            "cbdash_deliveries_open", "Deliveries not finished yet, by status.", labels=["status"]
        )
        for status, n in monitoring.open_deliveries().items():
            open_family.add_metric([status], n)
        yield open_family
        health = GaugeMetricFamily("cbdash_callbacks", "Callbacks by health state.", labels=["health"])
        for state, n in monitoring.health_counts(settings.current().failing_after).items():
            if state != "total":
                health.add_metric([state], n)
        yield health
        if not self.include_queue:
            return
        q = monitoring.queue_state()
        yield GaugeMetricFamily(
            "cbdash_redis_up", "1 when Redis answered this scrape.", value=int(q.reachable)
        )
        yield GaugeMetricFamily("cbdash_queue_depth", "Jobs waiting in the RQ queue.", value=q.depth)
        yield GaugeMetricFamily(
            "cbdash_queue_oldest_job_age_seconds",
            "Age of the oldest job waiting in the queue (0 when empty).",
            value=q.oldest_age_seconds or 0.0,
        )
        yield GaugeMetricFamily(
            "cbdash_queue_scheduled_jobs", "Jobs scheduled for later (retries).", value=q.scheduled
        )
        yield GaugeMetricFamily(
            "cbdash_queue_failed_jobs", "Jobs in RQ's failed-job registry.", value=q.failed
        )
        yield GaugeMetricFamily(
            "cbdash_workers", "RQ workers registered on the queue.", value=q.workers_alive
        )
        yield GaugeMetricFamily(
            "cbdash_scheduler_up",
            "1 when an RQ scheduler holds the queue's lock.",
            value=int(q.scheduler_alive),
        )


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
