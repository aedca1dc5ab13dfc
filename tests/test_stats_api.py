"""GET /api/v1/stats and /api/v1/callbacks/<id>/stats: the monitoring figures as JSON."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import Attempt, Delivery, utcnow
from tests.conftest import make_callback, run_worker
from tests.receiver import Reply

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def app_config() -> dict:
    return {"RETRY_SCHEDULE": ""}


def test_stats_for_all_callbacks_match_the_database(app, client, auth, receiver):
    receiver.reply(Reply(200), Reply(200), Reply(503), Reply(404), Reply(200))
    make_callback(receiver.url())
    for i in range(5):
        client.post("/api/v1/events", json={"definition": "order.created", "payload": {"i": i}}, headers=auth)
    run_worker(app)
    body = client.get("/api/v1/stats?window=24h", headers=auth).get_json()
    attempts = db.session.scalar(select(func.count()).select_from(Attempt))
    ok = db.session.scalar(select(func.count()).select_from(Attempt).where(Attempt.error_class.is_(None)))
    assert body["attempts"] == {
        "total": attempts,
        "succeeded": ok,
        "failed": attempts - ok,
        "success_rate": 0.6,
    }
    assert body["deliveries"]["succeeded"] == 3 and body["deliveries"]["failed"] == 2
    assert body["failure_reasons"]["5xx"] == 1 and body["failure_reasons"]["4xx"] == 1
    assert body["timeouts"] == 0
    assert set(body["latency_ms"]) == {"p50", "p95", "p99", "mean"} and body["latency_ms"]["p50"] > 0
    assert body["open_deliveries"] == {"pending": 0, "sending": 0, "retrying": 0}
    assert body["callbacks"]["total"] == 1
    assert body["queue"]["reachable"] is True and body["queue"]["workers_alive"] == 0
    assert any("No worker" in w for w in body["queue"]["warnings"])
    w = body["window"]
    assert w["name"] == "24h" and w["bucket_seconds"] == 3600
    assert ISO_Z.match(w["start"]) and ISO_Z.match(w["end"])
    start, end = (datetime.fromisoformat(w[k].replace("Z", "+00:00")) for k in ("start", "end"))
    assert timedelta(hours=24) <= end - start < timedelta(hours=25) and start.minute == 0  # whole hours
    series = body["series"]
    assert len(series) == 25 and sum(p["succeeded"] for p in series) == ok
    assert all(ISO_Z.match(p["start"]) for p in series)
    assert [p["start"] for p in series] == sorted(p["start"] for p in series)
    assert client.get("/api/v1/stats", headers=auth).get_json()["window"]["name"] == "24h"  # the default


def test_stats_per_callback(app, client, auth, receiver):
    receiver.reply(Reply(500))
    cb = make_callback(receiver.url())
    other = make_callback(receiver.url("/other"), "order.paid")
    for i in range(3):
        client.post("/api/v1/events", json={"definition": "order.created", "payload": {"i": i}}, headers=auth)
    run_worker(app)
    body = client.get(f"/api/v1/callbacks/{cb.id}/stats?window=1h", headers=auth).get_json()
    assert body["callback_id"] == cb.id and body["window"]["name"] == "1h"
    assert body["attempts"]["total"] == 3 and body["attempts"]["success_rate"] == 0.0
    assert body["deliveries"]["failed"] == 3 and body["health"] == "failing"
    assert body["last_status_code"] == 500 and body["last_error"] == "http_status"
    assert ISO_Z.match(body["last_attempt_at"])
    assert body["consecutive_failures"] == 3
    quiet = client.get(f"/api/v1/callbacks/{other.id}/stats?window=7d", headers=auth).get_json()
    assert quiet["attempts"]["total"] == 0 and quiet["attempts"]["success_rate"] is None
    assert quiet["latency_ms"]["p95"] is None and len(quiet["series"]) >= 28


def test_stats_errors_are_json_4xx(app, client, auth):
    bad = client.get("/api/v1/stats?window=2w", headers=auth)
    assert bad.status_code == 400
    error = bad.get_json()["error"]
    assert (
        error["code"] == "invalid_parameter"
        and "1h, 24h, 7d" in error["message"]
        and "window" in error["fields"]
    )
    assert client.get("/api/v1/stats").status_code == 401
    assert client.get("/api/v1/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
    missing = client.get("/api/v1/callbacks/424242/stats", headers=auth)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_viewer_tokens_may_read_stats(app, client):
    from cbdash.services import tokens

    _row, plaintext = tokens.create("viewer", "viewer")
    db.session.commit()
    response = client.get("/api/v1/stats?window=1h", headers={"Authorization": f"Bearer {plaintext}"})
    assert response.status_code == 200


def test_deliveries_outside_the_window_are_not_counted(app, client, auth):
    from cbdash.services import monitoring

    long_ago = utcnow() - timedelta(hours=3)
    with db.engine.begin() as conn:
        monitoring.count_attempt(conn, 7, long_ago, 50.0, 200, None)
        monitoring.count_outcome(conn, 7, long_ago, "succeeded")
    assert client.get("/api/v1/stats?window=1h", headers=auth).get_json()["attempts"]["total"] == 0
    day = client.get("/api/v1/stats?window=24h", headers=auth).get_json()
    assert day["attempts"]["total"] == 1 and day["deliveries"]["succeeded"] == 1
    assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0  # rollups alone answer
