"""Inbound messages as their own kind: the delivery log's filter and the monitoring page's panels."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import Delivery, InboundMessage, utcnow
from cbdash.services import recovery
from tests.conftest import make_callback, run_worker
from tests.htmlq import parse
from tests.receiver import Reply
from tests.test_inbound_flow import BODY, make_source, signed

LOG = "/settings/callbacks/deliveries"
MONITORING = "/settings/callbacks/monitoring"


def post(client, slug: str, msg_id: str, **kw):  # type: ignore[no-untyped-def]
    body = json.dumps({"n": msg_id}).encode()
    response = client.post(f"/hooks/{slug}", data=body, headers=kw.get("headers") or signed(body, msg_id))
    response.close()  # what a WSGI server does once the answer is sent: queues the relay
    return response


def log_ids(client, query: str) -> set[int]:  # type: ignore[no-untyped-def]
    page = parse(client.get(f"{LOG}?{query}").get_data(as_text=True))
    return {int(tr.attrs["data-delivery-id"]) for tr in page.find_all("tr") if "data-delivery-id" in tr.attrs}


def test_relays_are_inbound_deliveries_and_the_log_filters_them(app, admin, auth, receiver):
    cb = make_callback(receiver.url("/pay"), "payment.confirmed")
    source = make_source("pay")
    receiver.reply(Reply(status=503))  # every first attempt fails: the relays wait for a retry
    assert post(admin, "pay", "m1").status_code == 200
    assert post(admin, "pay", "m2").status_code == 200
    assert post(admin, "pay", "m1").status_code == 200  # a repeat: acknowledged, not relayed
    api = admin.post(
        "/api/v1/events", json={"definition": "payment.confirmed", "payload": {"x": 1}}, headers=auth
    )
    assert api.status_code == 202
    admin.post(f"/settings/callbacks/{cb.id}/ping", headers={"HX-Request": "true"})
    run_worker(app)

    rows = {d.id: d for d in db.session.scalars(select(Delivery))}
    inbound_ids = {i for i, d in rows.items() if d.event.source == "inbound:pay"}
    assert len(inbound_ids) == 2
    assert {rows[i].kind for i in inbound_ids} == {"inbound"}
    # Both relays got a 503 and wait for their retry: still inbound deliveries.
    assert {(rows[i].status, rows[i].attempt_count) for i in inbound_ids} == {("retrying", 1)}
    assert {d.kind for i, d in rows.items() if i not in inbound_ids} >= {"event"}

    assert log_ids(admin, "kind=inbound") == inbound_ids
    assert log_ids(admin, "kind=event").isdisjoint(inbound_ids)
    assert log_ids(admin, "kind=inbound&status=retrying") == inbound_ids
    assert log_ids(admin, "kind=inbound&status=succeeded") == set()

    page = parse(admin.get(f"{LOG}?kind=inbound").get_data(as_text=True))
    origins = [el for el in page.iter() if el.attrs.get("data-inbound-source") == "pay"]
    assert len(origins) == 2
    link = origins[0].find("a")
    assert link is not None and link.attrs["href"] == f"/settings/inbound/{source.id}"
    kinds = page.find("select", name="kind")
    assert kinds is not None and "inbound" in [o.attrs.get("value") for o in kinds.find_all("option")]


def test_unknown_kind_in_the_log_is_ignored_with_a_message(admin):
    response = admin.get(f"{LOG}?kind=webhooky")
    assert response.status_code == 200
    assert "Unknown kind." in response.get_data(as_text=True)


def _panel(admin, window: str) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    page = parse(admin.get(f"{MONITORING}?window={window}").get_data(as_text=True))
    panel = next(el for el in page.iter() if el.attrs.get("data-panel") == "inbound-sources")
    out = {}
    for tr in panel.find_all("tr"):
        slug = tr.attrs.get("data-source")
        if slug:
            cells = {
                td.attrs["data-metric"]: td.text for td in tr.find_all("td") if "data-metric" in td.attrs
            }
            cells["href"] = tr.find("a").attrs["href"]  # type: ignore[union-attr]
            out[slug] = cells
    return out


def _kinds(admin, window: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    page = parse(admin.get(f"{MONITORING}?window={window}").get_data(as_text=True))
    panel = next(el for el in page.iter() if el.attrs.get("data-panel") == "kinds")
    return {
        td.attrs["data-metric"].removeprefix("kind-"): td.text
        for td in panel.find_all("td")
        if "data-metric" in td.attrs
    }


def test_monitoring_shows_inbound_kind_and_per_source_counts(app, admin, auth, receiver):
    make_callback(receiver.url("/pay"), "payment.confirmed")
    pay = make_source("pay")
    ship = make_source(
        "ship", definition="shipment.updated", rate_limit=1, rate_window=3600, dedupe_header=None
    )
    quiet = make_source("quiet-one", active=False)

    assert [post(admin, "pay", m).status_code for m in ("a", "b", "a")] == [200, 200, 200]
    bad = signed(BODY, "c")
    bad["webhook-signature"] = "v1," + "A" * 44
    assert post(admin, "pay", "c", headers=bad).status_code == 401
    assert [post(admin, "ship", m).status_code for m in ("s1", "s2", "s3")] == [200, 429, 429]
    api = admin.post("/api/v1/events", json={"definition": "payment.confirmed", "payload": {}}, headers=auth)
    assert api.status_code == 202
    # A message from before the last hour: in the 24 h window only.
    db.session.add(
        InboundMessage(
            source_id=pay.id, outcome="refused", status_code=401, received_at=utcnow() - timedelta(hours=2)
        )
    )
    db.session.commit()
    run_worker(app)

    hour = _panel(admin, "1h")
    assert hour["pay"] == {
        "accepted": "2",
        "duplicate": "1",
        "refused": "1",
        "throttled": "0",
        "href": f"/settings/inbound/{pay.id}",
    }
    assert hour["ship"] == {
        "accepted": "1",
        "duplicate": "0",
        "refused": "0",
        "throttled": "2",
        "href": f"/settings/inbound/{ship.id}",
    }
    assert (
        hour["quiet-one"]["accepted"] == "0" and hour["quiet-one"]["href"] == f"/settings/inbound/{quiet.id}"
    )
    assert _panel(admin, "24h")["pay"]["refused"] == "2"

    # pay's two accepted messages are relayed to its one callback; ship's definition has none.
    kinds = _kinds(admin, "1h")
    assert kinds["inbound"] == "2" and kinds["event"] == "1" and kinds["ping"] == "0"
    # The rollups count inbound relays like every other delivery.
    page = admin.get(f"{MONITORING}?window=1h").get_data(as_text=True)
    tile = parse(page).find(data_metric="deliveries")
    assert tile is not None and tile.text == "3"


def test_bulk_recovery_and_replay_include_inbound_relays(app, admin, receiver):
    cb = make_callback(receiver.url("/pay"), "payment.confirmed")
    make_source("pay")
    assert post(admin, "pay", "r1").status_code == 200
    d = db.session.scalar(select(Delivery))
    d.status = "failed"
    d.finished_at = utcnow()
    db.session.commit()

    sel = recovery.parse_selection({"status": "failed", "window": "1h"})
    assert recovery.count(sel) == 1
    since = utcnow() - timedelta(minutes=5)
    db.session.delete(d)
    db.session.commit()
    created = recovery.replay(cb, since)
    assert [x.kind for x in created] == ["inbound"]


def test_a_flood_of_bad_signatures_stores_a_minutes_budget_and_counts_the_rest(app, admin, monkeypatch):
    monkeypatch.setattr("cbdash.services.inbound.REFUSALS_STORED", 3)
    source = make_source("pay", rate_limit=0)
    bad = signed(BODY, "x")
    bad["webhook-signature"] = "v1," + "A" * 44
    codes = [admin.post("/hooks/pay", data=BODY, headers=bad).status_code for _ in range(8)]

    assert codes == [401] * 8
    stored = list(db.session.scalars(select(InboundMessage).where(InboundMessage.source_id == source.id)))
    assert len(stored) == 3 and all(m.outcome == "refused" for m in stored)
    assert all(m.debug and m.debug.get("hint") for m in stored)  # the debugger for the kept ones
    assert _panel(admin, "1h")["pay"]["refused"] == "8"  # the other five are counted


def test_a_secret_changed_in_this_process_is_used_at_once(app, client):
    source = make_source("pay", rate_limit=0)
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, "a1")).status_code == 200
    new = "whsec_" + base64.b64encode(b"another-key-of-32-bytes-long!!!!").decode()
    source.secret, source.previous_secret = new, None
    db.session.commit()
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, "a2")).status_code == 401
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, "a3", secret=new)).status_code == 200
    source.active = False
    db.session.commit()
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, "a4", secret=new)).status_code == 404


class TestRefusalCountsAgree:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"PAYLOAD_LIMIT": 2048}

    def test_list_and_source_page_explain_what_monitoring_adds(self, app, admin, monkeypatch):
        """Stored refusals + the ones only counted (past the per-minute budget) = Monitoring's figure."""
        monkeypatch.setattr("cbdash.services.inbound.REFUSALS_STORED", 3)
        source = make_source("pay", rate_limit=0)
        big = json.dumps({"blob": "x" * 3000}).encode()
        assert admin.post("/hooks/pay", data=big, headers=signed(big)).status_code == 413
        bad = signed(BODY, "x")
        bad["webhook-signature"] = "v1," + "A" * 44
        assert [admin.post("/hooks/pay", data=BODY, headers=bad).status_code for _ in range(7)] == [401] * 7

        assert _panel(admin, "1h")["pay"]["refused"] == "8"
        listing = admin.get("/settings/inbound").get_data(as_text=True)
        assert '3<span class="visually-hidden"> refused</span>' in listing
        assert 'data-unstored="5"' in listing and "+5 refused, counted only" in listing
        detail = parse(admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True))
        summary = detail.find(id="refusal-summary")
        assert summary is not None
        text = " ".join(summary.text.split())
        assert "3 stored" in text and "5 counted only" in text and "past 3 refusals a minute" in text
        # What the refusals were, each with the status it was answered with (the 413 is no signature).
        assert "2 bad signature (401)" in text and "1 body over the size limit (413)" in text
