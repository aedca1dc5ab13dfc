"""Retry policy: the schedule, jitter, Retry-After, and a real worker keeping time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import select

from cbdash import jobs
from cbdash.extensions import db
from cbdash.models import Attempt, Delivery, utcnow
from cbdash.services import delivery, transport
from tests.conftest import make_callback, run_worker
from tests.rawservers import closed_port
from tests.receiver import Receiver, Reply
from tests.test_delivery import attempt_now, reload, trigger
from tests.workers import Workers


@pytest.fixture
def app_config() -> dict:
    return {"RETRY_SCHEDULE": "1,2,4"}


@pytest.fixture
def workers(app, tmp_path):  # type: ignore[no-untyped-def]
    w = Workers(app, tmp_path)
    yield w
    w.close()


def outcome(status: int | None = 500, headers: dict[str, str] | None = None) -> transport.Response:
    r = transport.Response(url="http://x", started_monotonic=0.0, status_code=status, headers=headers or {})
    if status is None:
        r.error_class = "connect"
    elif not 200 <= status < 300:
        r.error_class = "http_status"
    return r


def delays_for(app, cb, attempt_count: int, result: transport.Response, n: int = 1) -> list[float]:  # type: ignore[no-untyped-def]
    d = Delivery(kind="event", attempt_count=attempt_count)
    return [delivery.retry_delay(d, cb, result) for _ in range(n)]


class TestJitter:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"RETRY_JITTER": 0.2}  # the production default (tests otherwise run without)

    def test_delays_vary_within_twenty_percent(self, app, receiver):
        cb = make_callback(receiver.url(), retry_schedule="100,1000")
        first = delays_for(app, cb, 1, outcome(), 400)
        assert all(80 <= d <= 120 for d in first)
        assert max(first) - min(first) > 20  # it really is jittered
        second = delays_for(app, cb, 2, outcome(), 400)
        assert all(800 <= d <= 1200 for d in second)


def test_default_schedule_is_configured_globally_and_per_callback(app, receiver):
    cb = make_callback(receiver.url())
    assert [delays_for(app, cb, n, outcome())[0] for n in (1, 2, 3)] == [1, 2, 4]
    assert delays_for(app, cb, 4, outcome()) == [None]  # out of attempts
    own = make_callback(receiver.url(), retry_schedule="7")
    assert delays_for(app, own, 1, outcome()) == [7]
    assert delays_for(app, own, 2, outcome()) == [None]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_within_bounds(app, receiver, status):
    cb = make_callback(receiver.url(), retry_schedule="5,300")
    assert delays_for(app, cb, 1, outcome(status, {"retry-after": "42"})) == [42]
    # Never sooner than a second, never later than an hour (or the schedule when longer).
    assert delays_for(app, cb, 1, outcome(status, {"retry-after": "0"})) == [1]
    assert delays_for(app, cb, 1, outcome(status, {"retry-after": "999999"})) == [3600]
    when = datetime.now(UTC) + timedelta(seconds=120)
    (delay,) = delays_for(app, cb, 1, outcome(status, {"retry-after": format_datetime(when, usegmt=True)}))
    assert 115 <= delay <= 121
    assert delays_for(app, cb, 1, outcome(status, {"retry-after": "soon"})) == [5]
    # Other statuses do not get to choose.
    assert delays_for(app, cb, 1, outcome(500, {"retry-after": "42"})) == [5]


def test_retry_after_from_a_real_receiver_sets_the_next_attempt(app, receiver):
    make_callback(receiver.url())
    receiver.reply(Reply(429, headers={"Retry-After": "30"}))
    (d_id,) = trigger()
    run_worker(app)
    d = reload(d_id)
    assert d.status == "retrying"
    assert timedelta(seconds=27) < d.next_attempt_at - utcnow() <= timedelta(seconds=30)


def test_attempts_follow_the_schedule_then_fail_with_the_last_status(app, client, auth, receiver):
    make_callback(receiver.url())
    receiver.reply(Reply(500))
    (d_id,) = trigger()
    run_worker(app)
    expected_gaps = [1, 2, 4]
    for n in range(1, 4):
        d = reload(d_id)
        assert (d.status, d.attempt_count) == ("retrying", n)
        last = d.attempts[-1]
        ended = last.started_at + timedelta(milliseconds=last.duration_ms)
        gap = (d.next_attempt_at - ended).total_seconds()  # the delay counts from the attempt's end
        assert expected_gaps[n - 1] - 0.3 <= gap <= expected_gaps[n - 1] + 0.5, gap
        shown = client.get(f"/api/v1/deliveries/{d_id}", headers=auth).get_json()["next_attempt_at"]
        assert shown is not None
        attempt_now(d_id)
    d = reload(d_id)
    assert d.status == "failed"
    assert d.attempt_count == 4 == len(d.attempts) == len(receiver.requests)
    assert d.last_status_code == 500
    assert d.status_detail == "HTTP 500"
    assert d.next_attempt_at is None
    assert client.get(f"/api/v1/deliveries/{d_id}", headers=auth).get_json()["next_attempt_at"] is None
    jobs.deliver([d_id])  # a stray duplicate job changes nothing
    assert len(receiver.requests) == 4


def test_overdue_next_attempt_is_shown_as_now_never_in_the_past(app, client, auth, receiver):
    make_callback(receiver.url())
    receiver.reply(Reply(500))
    (d_id,) = trigger()
    run_worker(app)
    d = reload(d_id)
    d.next_attempt_at = utcnow() - timedelta(minutes=5)  # e.g. no scheduler running
    db.session.commit()
    before = utcnow().replace(microsecond=0)
    shown = client.get(f"/api/v1/deliveries/{d_id}", headers=auth).get_json()["next_attempt_at"]
    assert datetime.fromisoformat(shown.rstrip("Z")) >= before


def _poll_next_attempts(client, auth, ids: list[int], seconds: float) -> list[str]:  # type: ignore[no-untyped-def]
    """Watch the deliveries through the API until final; collect any next_attempt_at in the past."""
    problems = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = utcnow().replace(microsecond=0)
        rows = [client.get(f"/api/v1/deliveries/{i}", headers=auth).get_json() for i in ids]
        for row in rows:
            if row["status"] == "retrying":
                if row["next_attempt_at"] is None:
                    problems.append(f"{row['id']}: retrying without a next attempt")
                elif datetime.fromisoformat(row["next_attempt_at"].rstrip("Z")) < before:
                    problems.append(f"{row['id']}: next attempt {row['next_attempt_at']} < {before}")
        if all(row["status"] in ("failed", "succeeded", "skipped") for row in rows):
            return problems
        time.sleep(0.1)
    raise AssertionError(f"not final after {seconds} s: {[r['status'] for r in rows]}")


@pytest.mark.slow
def test_real_worker_keeps_the_schedule_for_500_403_and_a_closed_port(app, client, auth, receiver, workers):
    other = Receiver()
    other.start()
    try:
        receiver.reply(Reply(500))
        other.reply(Reply(403))
        make_callback(receiver.url(), "order.created")
        make_callback(other.url(), "order.updated")
        make_callback(f"http://127.0.0.1:{closed_port()}/hook", "order.paid")
        workers.start()  # `cbdash worker`, exactly as the README starts it
        workers.wait_scheduler()
        ids = []
        for name in ("order.created", "order.updated", "order.paid"):
            response = client.post("/api/v1/events", json={"definition": name, "payload": {}}, headers=auth)
            assert response.status_code == 202
            ids += response.get_json()["delivery_ids"]
        problems = _poll_next_attempts(client, auth, ids, seconds=20)
        assert problems == []
        time.sleep(2.0)  # nothing after the last attempt
        expected = [0, 1, 3, 7]
        offsets = {}
        for name, r in (("500", receiver), ("403", other)):
            times = [x.at for x in r.requests]
            offsets[name] = [round(t - times[0], 2) for t in times]
        db.session.expire_all()
        closed_id = ids[2]
        started = list(
            db.session.scalars(
                select(Attempt.started_at).where(Attempt.delivery_id == closed_id).order_by(Attempt.number)
            )
        )
        offsets["closed"] = [round((t - started[0]).total_seconds(), 2) for t in started]
        for name, got in offsets.items():
            assert len(got) == 4, (name, got, workers.logs())
            for want, off in zip(expected, got, strict=True):
                # Never early; late by the scheduler poll (0.2 s) plus the worker's own pace.
                assert want - 0.05 <= off <= want + 1.5, (name, got)
        for d_id, last_status in zip(ids, (500, 403, None), strict=True):
            d = reload(d_id)
            assert d.status == "failed"
            assert d.attempt_count == 4 == len(d.attempts)
            assert d.last_status_code == last_status
        print("offsets", offsets)
    finally:
        other.stop()
