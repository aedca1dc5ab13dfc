"""The monitoring page against real receivers: every figure checked against the database."""

from __future__ import annotations

import html
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cbdash.extensions import db
from cbdash.models import Attempt, Callback, Delivery, LatencyRollup, StatsRollup, utcnow
from cbdash.queue import get_queue
from cbdash.services import monitoring, retention
from tests.conftest import create_user, login, make_callback, run_worker
from tests.receiver import Receiver, Reply

MONITORING = "/settings/callbacks/monitoring"


@pytest.fixture
def app_config() -> dict:
    # No retries by default, so failures settle at once; one callback overrides it to stay open.
    return {"RETRY_SCHEDULE": ""}


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    """Receivers that answer fast, slowly, with errors, with a redirect, and too late."""
    replies = {
        "ok": Reply(200),
        "slow": Reply(200, delay=0.25),
        "fail": Reply(500, b"boom"),
        "missing": Reply(404),
        "redirect": Reply(302, headers={"Location": "https://elsewhere.example/"}),
        "late": Reply(200, delay=1.6),
    }
    started: dict[str, Receiver] = {}
    for name, reply in replies.items():
        r = Receiver()
        r.reply(reply)
        r.start()
        started[name] = r
    yield started
    for r in started.values():
        r.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there: connection refused


def metric(page: str, name: str) -> str:
    """The text of the element marked data-metric="name" (tags stripped)."""
    match = re.search(rf'data-metric="{re.escape(name)}"[^>]*>(.*?)</(?:p|dd|td|span)>', page, re.S)
    assert match, f"no {name} on the page"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).replace("\xa0", " ").strip()


def number(text: str) -> int:
    return int(text.replace(",", ""))


def ms_value(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1000 if unit == "s" else 1)


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))]


def truth(start) -> dict:  # type: ignore[no-untyped-def]
    """The figures counted straight from the attempts and deliveries tables."""
    attempts = list(db.session.scalars(select(Attempt).where(Attempt.started_at >= start)))
    reasons = dict.fromkeys(monitoring.REASONS, 0)
    for a in attempts:
        reason = monitoring.failure_reason(a.status_code, a.error_class)
        if reason:
            reasons[reason] += 1

    def finished(status: str) -> int:
        return db.session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status == status, Delivery.finished_at >= start)
        )

    return {
        "attempts": len(attempts),
        "ok": sum(1 for a in attempts if a.succeeded),
        "reasons": reasons,
        "durations": [a.duration_ms for a in attempts],
        "succeeded": finished("succeeded"),
        "failed": finished("failed"),
        "open": db.session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status.in_(["pending", "sending", "retrying"]))
        ),
    }


def generate_traffic(admin, auth, receivers) -> dict[str, Callback]:  # type: ignore[no-untyped-def]
    """Events to each receiver (and one dead port), a test ping, all run by a real worker."""
    cbs = {
        "ok": make_callback(receivers["ok"].url(), "mon.ok"),
        "slow": make_callback(receivers["slow"].url(), "mon.slow"),
        "fail": make_callback(receivers["fail"].url(), "mon.fail", retry_schedule="3600"),
        "missing": make_callback(receivers["missing"].url(), "mon.missing"),
        "redirect": make_callback(receivers["redirect"].url(), "mon.redirect"),
        "late": make_callback(receivers["late"].url(), "mon.late", timeout=1),
        "refused": make_callback(closed_port_url(), "mon.refused"),
    }
    plan = {"ok": 6, "slow": 2, "fail": 3, "missing": 2, "redirect": 1, "late": 1, "refused": 2}
    for name, count in plan.items():
        for i in range(count):
            response = admin.post(
                "/api/v1/events", json={"definition": f"mon.{name}", "payload": {"n": i}}, headers=auth
            )
            assert response.status_code == 202, response.data
    assert admin.post(f"/api/v1/callbacks/{cbs['missing'].id}/ping", headers=auth).status_code == 202
    run_worker(admin.application)
    return cbs


@pytest.mark.slow
def test_monitoring_figures_match_the_database(app, admin, auth, receivers):
    generate_traffic(admin, auth, receivers)
    page = admin.get(f"{MONITORING}?window=1h").get_data(as_text=True)
    w = monitoring.window("1h", utcnow())
    t = truth(w.start)
    assert t["attempts"] == 18  # 17 events + 1 ping, each one attempt
    assert number(metric(page, "attempts")) == t["attempts"]
    rate = float(metric(page, "success-rate").rstrip(" %"))
    assert rate == pytest.approx(100 * t["ok"] / t["attempts"], abs=0.05)
    assert number(metric(page, "deliveries")) == t["succeeded"] + t["failed"]
    assert number(metric(page, "timeouts")) == t["reasons"]["timeout"] == 1
    for reason, count in t["reasons"].items():
        assert number(metric(page, f"reason-{reason}")) == count, reason
    assert t["reasons"]["5xx"] == 3 and t["reasons"]["4xx"] == 3 and t["reasons"]["connect"] == 2
    assert t["reasons"]["redirect"] == 1
    assert number(metric(page, "open").split()[0]) == t["open"] == 3  # the 500s wait for a retry
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        shown = ms_value(metric(page, name))
        exact = exact_percentile(t["durations"], q)
        # Estimated from a histogram whose buckets are at most a third wider than the last.
        assert abs(monitoring.latency_index(shown) - monitoring.latency_index(exact)) <= 1, (
            name,
            shown,
            exact,
        )
    api = admin.get("/api/v1/stats?window=1h", headers=auth).get_json()
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        # Interpolated between the fastest and slowest attempt of the right bucket: never outside it.
        exact = exact_percentile(t["durations"], q)
        assert monitoring.latency_index(api["latency_ms"][name]) == monitoring.latency_index(exact), name
    assert api["attempts"]["total"] == t["attempts"] and api["attempts"]["succeeded"] == t["ok"]
    assert api["deliveries"] == {
        "finished": t["succeeded"] + t["failed"],
        "succeeded": t["succeeded"],
        "failed": t["failed"],
        "success_rate": round(t["succeeded"] / (t["succeeded"] + t["failed"]), 4),
    }
    assert api["failure_reasons"] == t["reasons"]
    assert sum(p["succeeded"] + p["failed"] for p in api["series"]) == t["attempts"]


@pytest.mark.slow
def test_per_callback_table_puts_failing_callbacks_first_with_their_own_figures(app, admin, auth, receivers):
    cbs = generate_traffic(admin, auth, receivers)
    page = admin.get(f"{MONITORING}?window=1h").get_data(as_text=True)
    order = [int(i) for i in re.findall(r'<tr class="[^"]*" data-callback-id="(\d+)"', page)]
    failures = {cb.id: db.session.get(Callback, cb.id).consecutive_failures for cb in cbs.values()}
    assert sorted(order) == sorted(failures)
    assert [failures[i] for i in order] == sorted(failures.values(), reverse=True)
    row = re.search(rf'data-callback-id="{cbs["fail"].id}">(.*?)</tr>', page, re.S).group(1)
    assert "failing" in row  # 3 consecutive failures = FAILING_AFTER
    assert "0.0 %" in html.unescape(row).replace("\xa0", " ")
    assert f"/settings/callbacks/deliveries?callback_id={cbs['fail'].id}" in row
    ok_row = re.search(rf'data-callback-id="{cbs["ok"].id}">(.*?)</tr>', page, re.S).group(1)
    assert "healthy" in ok_row and "100.0" in ok_row and ">200<" in ok_row
    stats = monitoring.stats_for(monitoring.window("1h"), [cbs["slow"].id])[cbs["slow"].id]
    assert stats.attempts == 2 and stats.p95 is not None and stats.p95 >= 200


def test_rollups_survive_pruning(app, admin, auth, receiver):
    receiver.reply(Reply(200), Reply(500))
    make_callback(receiver.url())
    for i in range(4):
        admin.post("/api/v1/events", json={"definition": "order.created", "payload": {"i": i}}, headers=auth)
    run_worker(app)
    w = monitoring.window("24h")
    before = monitoring.totals(w)
    assert (before.attempts, before.attempts_ok) == (4, 1)
    removed = retention.prune(timedelta(0))
    assert removed["attempts"] == 4
    assert db.session.scalar(select(func.count()).select_from(Attempt)) == 0
    after = monitoring.totals(monitoring.window("24h"))
    assert (after.attempts, after.attempts_ok, after.reasons, after.histogram) == (
        before.attempts,
        before.attempts_ok,
        before.reasons,
        before.histogram,
    )
    page = admin.get(f"{MONITORING}?window=24h").get_data(as_text=True)
    assert number(metric(page, "attempts")) == 4


def test_rollup_pruning_keeps_recent_minutes_and_all_hours(app):
    now = utcnow()
    old, recent = now - timedelta(days=9), now - timedelta(days=1)
    with db.engine.begin() as conn:
        for at in (old, recent):
            monitoring.count_attempt(conn, 1, at, 12.0, 200, None)
    removed = monitoring.prune_rollups(now)
    assert removed["minute"] == 4  # the 9-day-old minute rows (all callbacks + callback 1) in both tables
    minutes = db.session.scalars(
        select(StatsRollup.bucket).where(StatsRollup.resolution == monitoring.MINUTE)
    )
    assert all(b >= now - timedelta(days=8) for b in minutes)
    hours = db.session.scalar(
        select(func.count()).select_from(StatsRollup).where(StatsRollup.resolution == monitoring.HOUR)
    )
    assert hours == 4  # two hours × (all callbacks, callback 1)


def test_counting_happens_in_the_attempts_transaction(app, receiver):
    """A rolled-back attempt leaves no trace in the rollups."""
    cb = make_callback(receiver.url())
    from cbdash.services import delivery as delivery_service

    d = delivery_service.create_ping(cb)
    db.session.commit()
    db.session.add(Attempt(delivery_id=d.id, number=1, url=cb.url, status_code=200, duration_ms=3.0))
    db.session.flush()
    for scope in (monitoring.ALL_CALLBACKS, cb.id):  # minute, hour and all-time rows of each
        assert (
            db.session.scalar(select(func.sum(StatsRollup.attempts)).where(StatsRollup.callback_id == scope))
            == 3
        )
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(StatsRollup)) == 0
    assert db.session.scalar(select(func.count()).select_from(LatencyRollup)) == 0


def test_queue_panel_warns_without_worker_or_scheduler(app, admin):
    page = admin.get(MONITORING).get_data(as_text=True)
    assert "No worker is running" in page and "No scheduler is running" in page
    assert metric(page, "workers") == "0" and metric(page, "scheduler") == "not running"


def test_queue_panel_shows_depth_oldest_job_workers_and_scheduler(app, admin):
    from rq import SimpleWorker
    from rq.registry import FailedJobRegistry
    from rq.scheduler import RQScheduler

    queue = get_queue(app)
    job = queue.enqueue("cbdash.jobs.deliver", [])
    queue.enqueue("cbdash.jobs.deliver", [])
    failed = queue.enqueue("cbdash.jobs.deliver", [])
    queue.remove(failed)
    FailedJobRegistry(queue=queue).add(failed, ttl=600, exc_string="boom")
    worker = SimpleWorker([queue], connection=queue.connection, name="mon-test-worker")
    worker.register_birth()
    queue.connection.set(RQScheduler.get_locking_key(queue.name), "mon-test-scheduler", ex=60)
    try:
        time.sleep(1.1)
        page = admin.get(MONITORING).get_data(as_text=True)
    finally:
        worker.register_death()
    assert metric(page, "queue-depth") == "2"
    age = ms_value(metric(page, "oldest-age"))
    assert 1000 <= age <= 60_000, age
    assert metric(page, "workers") == "1" and "mon-test-worker" in page
    assert metric(page, "scheduler") == "running"
    assert metric(page, "failed-jobs") == "1"
    assert "No worker is running" not in page and "No scheduler is running" not in page
    state = monitoring.queue_state()
    assert state.oldest_enqueued_at is not None
    assert abs((state.oldest_enqueued_at - job.enqueued_at.replace(tzinfo=None)).total_seconds()) < 1


def test_page_markup_polls_without_inline_script_or_style(app, admin):
    response = admin.get(MONITORING)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    live = re.search(r'<div id="monitoring-live"[^>]*>', page).group(0)
    assert 'hx-trigger="cbdash:poll"' in live and 'hx-sync="this:drop"' in live
    assert 'hx-get="/settings/callbacks/monitoring/live"' in live
    assert "monitoring.js" in page
    assert " style=" not in page and "<style" not in page
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None  # no inline script
    assert "monitoring.js" not in admin.get("/settings/callbacks").get_data(as_text=True)
    chart = re.search(r'<section class="card mon-chart".*?</section>', page, re.S).group(0)
    legend = re.search(r'<ul class="chart-legend.*?</ul>', chart, re.S).group(0)
    assert "Succeeded" in legend and "Failed" in legend
    svg = re.search(r'<svg class="chart".*?</svg>', chart, re.S).group(0)
    assert "<title" in svg and "<desc" in svg and ">attempts</text>" in svg and "<line" in svg
    # Each window: a link for no-JS, an htmx swap of the live area, and the page URL pushed.
    link = re.search(r'<a class="tab" href="/settings/callbacks/monitoring\?window=7d"[^>]*>', page).group(0)
    assert 'hx-get="/settings/callbacks/monitoring/live?window=7d"' in link
    assert 'hx-push-url="/settings/callbacks/monitoring?window=7d"' in link


def test_live_fragment_and_window_switch(app, admin):
    fragment = admin.get(f"{MONITORING}/live?window=7d").get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="monitoring-live"') and "<html" not in fragment
    assert 'aria-current="page">Last 7 days' in fragment
    swapped = admin.get(
        f"{MONITORING}?window=1h", headers={"HX-Request": "true", "HX-Target": "monitoring-live"}
    )
    assert "<html" not in swapped.get_data(as_text=True) and "HX-Request" in swapped.headers["Vary"]
    restore = admin.get(
        f"{MONITORING}?window=1h",
        headers={"HX-Request": "true", "HX-History-Restore-Request": "true", "HX-Target": "monitoring-live"},
    )
    assert "<html" in restore.get_data(as_text=True)
    odd = admin.get(f"{MONITORING}?window=99y&page=abc")
    assert odd.status_code == 200 and 'aria-current="page">Last 24 hours' in odd.get_data(as_text=True)


def test_viewer_sees_monitoring_and_signed_out_polls_get_a_full_redirect(app, client):
    login(client, "viewer@example.com", "viewer")
    assert client.get(MONITORING).status_code == 200
    client.post("/logout")
    poll = client.get(f"{MONITORING}/live", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and "HX-Redirect" in poll.headers


def test_chart_geometry_stacks_failed_on_succeeded_within_the_plot():
    from zoneinfo import ZoneInfo

    now = utcnow()
    w = monitoring.window("1h", now)
    pts = [monitoring.Point(w.start, w.start + w.step, 7, 3), monitoring.Point(w.start + w.step, w.end, 0, 0)]
    chart = monitoring.build_chart(pts, w, ZoneInfo("Europe/Berlin"))
    assert chart.y_max == 10 and chart.succeeded == 7 and chart.failed == 3
    bar = chart.bars[0]
    assert bar.ok_y + bar.ok_h == pytest.approx(chart.bottom)
    assert bar.fail_y + bar.fail_h == pytest.approx(bar.ok_y)
    assert bar.fail_y == pytest.approx(chart.top)
    assert "7 succeeded, 3 failed" in bar.title
    assert chart.y_ticks[0][1] == "0" and chart.y_ticks[-1][1] == "10"


def test_windows_read_minute_rows_only_for_the_last_hour():
    from datetime import datetime

    now = datetime(2026, 3, 4, 15, 37, 20)
    hour = monitoring.window("1h", now)
    assert hour.start == datetime(2026, 3, 4, 14, 37) and hour.segments() == [
        (monitoring.MINUTE, hour.start, None)
    ]
    day = monitoring.window("24h", now)
    assert day.start == datetime(2026, 3, 3, 15, 0) and day.segments() == [(monitoring.HOUR, day.start, None)]
    week = monitoring.window("7d", now)
    assert week.start == datetime(2026, 2, 25, 15, 0) and week.segments() == [
        (monitoring.HOUR, week.start, None)
    ]
    with pytest.raises(ValueError):
        monitoring.window("2w", now)


def test_percentiles_from_a_histogram_stay_in_the_right_bucket_and_hit_the_extremes():
    hist: dict[int, int] = {}
    extremes: dict[int, tuple[float, float]] = {}
    values = [1.0 + i * 3.7 for i in range(400)] + [4900.0] * 5
    for v in values:
        i = monitoring.latency_index(v)
        hist[i] = hist.get(i, 0) + 1
        low, high = extremes.get(i, (v, v))
        extremes[i] = (min(low, v), max(high, v))
    for q in (0.25, 0.5, 0.9, 0.95, 0.99):
        exact = exact_percentile(values, q)
        rough = monitoring.histogram_percentile(hist, q)
        close = monitoring.histogram_percentile(hist, q, extremes)
        assert monitoring.latency_index(close) == monitoring.latency_index(exact), q
        assert abs(monitoring.latency_index(rough) - monitoring.latency_index(exact)) <= 1, q
    assert monitoring.histogram_percentile(hist, 1.0, extremes) == 4900.0  # the slowest, exactly
    assert monitoring.histogram_percentile(hist, 0.0001, extremes) == 1.0  # the fastest, exactly
    assert monitoring.histogram_percentile({3: 1}, 0.5, {3: (1.7, 1.7)}) == 1.7  # one value: itself
    assert monitoring.histogram_percentile({}, 0.5) is None
    assert monitoring.failure_reason(503, "http_status") == "5xx"
    assert monitoring.failure_reason(None, "timeout") == "timeout"
    assert monitoring.failure_reason(200, None) is None
    assert monitoring.failure_reason(None, "invalid_url") == "other"


@pytest.fixture
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("app_config", [{"MONITORING_REFRESH_SECONDS": 1, "RETRY_SCHEDULE": ""}])
def test_polling_in_a_browser_pauses_when_hidden_and_never_stacks(app, live_server, receiver, tmp_path):
    from playwright.sync_api import sync_playwright

    create_user()
    make_callback(receiver.url())
    slow_server = threading.Event()

    @app.before_request
    def _slow_live():  # type: ignore[no-untyped-def]
        from flask import request

        if slow_server.is_set() and request.path.endswith("/monitoring/live"):
            time.sleep(2.5)  # longer than the polling period

    polls: list[float] = []
    in_flight, most = [0], [0]

    def started(r) -> None:  # type: ignore[no-untyped-def]
        if "/monitoring/live" in r.url:
            polls.append(time.monotonic())
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

    def ended(r) -> None:  # type: ignore[no-untyped-def]
        if "/monitoring/live" in r.url:
            in_flight[0] -= 1

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1400})
            tab.goto(f"{live_server}/login")
            tab.fill("input[name=email]", "admin@example.com")
            tab.fill("input[name=password]", "password-123")
            tab.click("button[type=submit]")
            tab.goto(f"{live_server}{MONITORING}")
            tab.wait_for_selector("svg.chart")
            tab.on("request", started)
            tab.on("requestfinished", ended)
            tab.on("requestfailed", ended)
            tab.wait_for_timeout(3500)
            assert len(polls) >= 2, polls
            tab.evaluate(
                "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
                "document.dispatchEvent(new Event('visibilitychange'))"
            )
            tab.wait_for_timeout(1200)  # a poll already on its way may land
            hidden_from = len(polls)
            tab.wait_for_timeout(3000)
            assert len(polls) == hidden_from, "polled while the tab was hidden"
            slow_server.set()
            most[0] = in_flight[0]
            tab.evaluate(
                "Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});"
                "document.dispatchEvent(new Event('visibilitychange'))"
            )
            tab.wait_for_timeout(6000)
            assert len(polls) > hidden_from, "did not resume when visible again"
            assert most[0] == 1, f"{most[0]} polls were in flight at once"
            slow_server.clear()
            tab.wait_for_timeout(3000)
            tab.screenshot(path=str(tmp_path / "monitoring.png"), full_page=True)
            assert tab.locator("svg.chart rect").count() > 3
        finally:
            browser.close()


@pytest.mark.slow
def test_bench_scale_seeds_consistent_rollups_and_ends_with_the_ratio_line(tmp_path, redis_url):
    from cbdash.bench_scale import PAGES, run_scale

    lines: list[str] = []
    results = run_scale(
        echo=lines.append,
        callbacks=30,
        attempts=400,
        baseline_callbacks=10,
        baseline_attempts=100,
        repeat=3,
        workdir=str(tmp_path),
        redis_url=redis_url,
    )
    assert re.fullmatch(r"ratio scale=\d+\.\d\d", lines[-1])
    assert set(results) == {label for label, _, _ in PAGES}
    assert float(lines[-1].split("=")[1]) == pytest.approx(max(r[2] for r in results.values()), abs=0.006)
    from cbdash.bench_scale import _app

    seeded = _app(tmp_path / "large", redis_url)
    with seeded.app_context():
        total = db.session.scalar(
            select(StatsRollup.attempts).where(
                StatsRollup.resolution == monitoring.TOTAL,
                StatsRollup.callback_id == monitoring.ALL_CALLBACKS,
            )
        )
        assert total == db.session.scalar(select(func.count()).select_from(Attempt)) == 400
        finished = db.session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status.in_(["succeeded", "failed"]))
        )
        outcomes = db.session.scalar(
            select(StatsRollup.deliveries_succeeded + StatsRollup.deliveries_failed).where(
                StatsRollup.resolution == monitoring.TOTAL,
                StatsRollup.callback_id == monitoring.ALL_CALLBACKS,
            )
        )
        assert outcomes == finished
        db.session.remove()
        db.engine.dispose()


def test_scheduled_prune_runs_once_per_interval_and_keeps_the_figures(app, admin, auth, receiver):
    from cbdash import scheduled

    make_callback(receiver.url())
    admin.post("/api/v1/events", json={"definition": "order.created", "payload": {}}, headers=auth)
    run_worker(app)
    old = db.session.scalars(select(Attempt)).one()
    old.started_at -= timedelta(days=app.config["RETENTION_DAYS"] + 1)
    db.session.commit()
    before = monitoring.totals(monitoring.window("7d"))
    first = scheduled.run_if_due(app, interval=60)
    assert first is not None and first["attempts"] == 1 and "rollups" in first
    assert scheduled.run_if_due(app, interval=60) is None  # another worker ran it moments ago
    assert db.session.scalar(select(func.count()).select_from(Attempt)) == 0
    after = monitoring.totals(monitoring.window("7d"))
    assert (after.attempts, after.attempts_ok) == (before.attempts, before.attempts_ok) == (1, 1)
