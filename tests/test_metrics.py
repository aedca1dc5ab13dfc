"""/metrics in Prometheus format, built from the database; /healthz and /readyz."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import Attempt, Delivery
from cbdash.queue import get_queue
from cbdash.services import retention
from tests.conftest import make_callback, run_worker
from tests.receiver import Reply


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def deliver_some(app, client, auth, receiver) -> int:  # type: ignore[no-untyped-def]
    receiver.reply(Reply(200), Reply(200, delay=0.05), Reply(500))
    cb = make_callback(receiver.url())
    for i in range(3):
        client.post("/api/v1/events", json={"definition": "order.created", "payload": {"i": i}}, headers=auth)
    run_worker(app)
    return cb.id


@pytest.fixture
def app_config() -> dict:
    return {"RETRY_SCHEDULE": ""}


def test_metrics_count_deliveries_attempts_and_latency_from_the_database(app, client, auth, receiver):
    cb_id = deliver_some(app, client, auth, receiver)
    get_queue(app).enqueue("cbdash.jobs.deliver", [])
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    got = samples(response.get_data(as_text=True))
    key = (("callback_id", str(cb_id)), ("definition", "order.created"))
    ok = db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "succeeded"))
    failed = db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "failed"))
    assert (ok, failed) == (2, 1)
    assert got[("cbdash_deliveries_total", (*key, ("outcome", "succeeded")))] == ok
    assert got[("cbdash_deliveries_total", (*key, ("outcome", "failed")))] == failed
    assert got[("cbdash_attempts_total", (("outcome", "success"),))] == 2
    assert got[("cbdash_attempts_total", (("outcome", "5xx"),))] == 1
    attempts = db.session.scalar(select(func.count()).select_from(Attempt))
    assert got[("cbdash_attempt_duration_seconds_count", ())] == attempts == 3
    assert got[("cbdash_attempt_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    total_ms = db.session.scalar(select(func.sum(Attempt.duration_ms)))
    assert got[("cbdash_attempt_duration_seconds_sum", ())] == pytest.approx(total_ms / 1000)
    assert got[("cbdash_attempt_duration_seconds_bucket", (("le", "0.005"),))] <= 3
    slow = db.session.scalar(select(func.count()).select_from(Attempt).where(Attempt.duration_ms <= 25))
    assert got[("cbdash_attempt_duration_seconds_bucket", (("le", "0.025"),))] == slow
    assert got[("cbdash_queue_depth", ())] == 1
    assert got[("cbdash_workers", ())] == 0 and got[("cbdash_scheduler_up", ())] == 0
    assert got[("cbdash_callbacks", (("health", "healthy"),))] == 1
    assert got[("cbdash_redis_up", ())] == 1


def test_metric_counters_never_go_down_when_attempts_are_pruned(app, client, auth, receiver):
    deliver_some(app, client, auth, receiver)
    before = samples(client.get("/metrics").get_data(as_text=True))
    retention.prune(timedelta(0))
    assert db.session.scalar(select(func.count()).select_from(Attempt)) == 0
    after = samples(client.get("/metrics").get_data(as_text=True))
    counters = [k for k in before if k[0].endswith("_total") or "duration" in k[0]]
    assert counters and all(after[k] == before[k] for k in counters)


@pytest.mark.parametrize("app_config", [{"METRICS_TOKEN": "metrics-token-123"}])
def test_metrics_token_is_required_when_configured(app, client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic bWV0cmljcw=="}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-123"})
    assert ok.status_code == 200 and b"cbdash_deliveries_total" in ok.data
    remote = client.get(
        "/metrics",
        headers={"Authorization": "Bearer metrics-token-123"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert remote.status_code == 200  # with a token, any network may scrape


def test_without_a_token_only_loopback_may_scrape(app, client):
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert refused.status_code == 403 and b"CBDASH_METRICS_TOKEN" in refused.data
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "not-an-ip"}).status_code == 403


def test_health_endpoints_need_no_login(app, client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "redis": "ok"}
