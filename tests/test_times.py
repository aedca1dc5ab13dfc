"""Times: stored as naive UTC, ISO 8601 with Z in the API, one labelled zone on pages, sorted by
the real instant -- checked across the night Europe/Berlin turns its clocks back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from cbdash.extensions import db
from cbdash.models import Callback, Delivery, Event, new_uid, utcnow
from cbdash.services import monitoring
from tests.conftest import make_callback

# On Sunday 26 October 2025 Berlin went from 03:00 CEST back to 02:00 CET at 01:00 UTC,
# so 00:30 UTC and 01:30 UTC both read "02:30" on a Berlin wall clock.
EARLY = datetime(2025, 10, 26, 0, 30)
LATE = datetime(2025, 10, 26, 1, 30)
LOG = "/settings/callbacks/deliveries"


@pytest.fixture
def app_config() -> dict:
    return {"TIMEZONE": "Europe/Berlin"}


def delivery_at(cb: Callback, at: datetime) -> Delivery:
    event = Event(uid=new_uid("evt"), definition=cb.definition, body="{}", created_at=at)
    d = Delivery(
        event=event, callback_id=cb.id, kind="event", status="succeeded", created_at=at, attempt_count=1
    )
    db.session.add(d)
    db.session.commit()
    return d


def test_log_sorts_by_instant_and_labels_each_side_of_the_change(app, admin):
    cb = make_callback("http://127.0.0.1:9/hook")
    late = delivery_at(cb, LATE)  # written first: a lower id must not put it last
    early = delivery_at(cb, EARLY)
    page = admin.get(LOG).get_data(as_text=True)
    order = [int(i) for i in re.findall(r'<tr data-delivery-id="(\d+)">', page)]
    assert order == [late.id, early.id]
    times = re.findall(r'<time datetime="([^"]+)" title="[^"]+">([^<]+)</time>', page)
    assert times[:2] == [
        ("2025-10-26T01:30:00Z", "Oct 26, 2025 02:30:00 CET"),
        ("2025-10-26T00:30:00Z", "Oct 26, 2025 02:30:00 CEST"),
    ]
    assert 'Created <span class="tz">(Europe/Berlin)</span>' in page


def test_api_returns_utc_instants_with_z(app, client, auth):
    cb = make_callback("http://127.0.0.1:9/hook")
    d = delivery_at(cb, LATE)
    body = client.get(f"/api/v1/deliveries/{d.id}", headers=auth).get_json()
    assert body["created_at"] == "2025-10-26T01:30:00Z"


def test_local_range_filter_reads_times_in_the_display_zone(app, admin):
    cb = make_callback("http://127.0.0.1:9/hook")
    early, late = delivery_at(cb, EARLY), delivery_at(cb, LATE)

    def ids(query: str) -> list[int]:
        page = admin.get(f"{LOG}?{query}").get_data(as_text=True)
        return [int(i) for i in re.findall(r'<tr data-delivery-id="(\d+)">', page)]

    # 01:00–03:45 Berlin covers both; a repeated wall time means its first (summer) occurrence.
    assert ids("from=2025-10-26T01:00&to=2025-10-26T03:45") == [late.id, early.id]
    assert ids("from=2025-10-26T02:00&to=2025-10-26T02:45") == [early.id]  # 00:00–00:45 UTC
    assert ids("from=2025-10-26T02:31") == [late.id]  # 00:31 UTC: only the 01:30 UTC row is later
    assert ids("from=2025-10-26T03:00") == []  # 03:00 CET = 02:00 UTC, after both
    assert ids("to=2025-10-26T02:29") == []


def test_monitoring_series_runs_in_instant_order_through_the_repeated_hour(app):
    from zoneinfo import ZoneInfo

    with db.engine.begin() as conn:
        monitoring.count_attempt(conn, 1, EARLY, 40.0, 200, None)
        monitoring.count_attempt(conn, 1, LATE, 40.0, 500, "http_status")
    w = monitoring.window("24h", datetime(2025, 10, 26, 12, 0))
    points = monitoring.series(w)
    starts = [p.start for p in points]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    by_start = {p.start: (p.succeeded, p.failed) for p in points}
    assert by_start[datetime(2025, 10, 26, 0, 0)] == (1, 0)
    assert by_start[datetime(2025, 10, 26, 1, 0)] == (0, 1)
    chart = monitoring.build_chart(points, w, ZoneInfo("Europe/Berlin"))
    titles = [b.title for b in chart.bars if b.point.succeeded or b.point.failed]
    assert titles == [
        "Sun Oct 26, 02:00 CEST – 02:00 CET: 1 succeeded, 0 failed",
        "Sun Oct 26, 02:00 CET – 03:00 CET: 0 succeeded, 1 failed",
    ]
    assert "(Europe/Berlin)" in chart.title


def test_times_are_stored_as_naive_utc_whatever_the_display_zone(app, client, auth):
    make_callback("http://127.0.0.1:9/hook")
    before = datetime.now(UTC).replace(tzinfo=None)
    client.post("/api/v1/events", json={"definition": "order.created", "payload": {}}, headers=auth)
    d = db.session.query(Delivery).one()
    assert d.created_at.tzinfo is None
    assert before - timedelta(seconds=1) <= d.created_at <= utcnow() + timedelta(seconds=1)


def test_monitoring_page_names_its_zone(app, admin):
    page = admin.get("/settings/callbacks/monitoring").get_data(as_text=True)
    assert "(Europe/Berlin)" in page and "Attempts per hour: succeeded vs failed (Europe/Berlin)" in page
