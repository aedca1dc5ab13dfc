"""The main job end to end: an event through the API reaches a receiver, signed."""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import Delivery
from tests.conftest import make_callback, run_worker


def test_event_is_delivered_signed_and_recorded(app, client, auth, receiver):
    cb = make_callback(receiver.url())
    inactive = make_callback(receiver.url("/inactive"), active=False)
    response = client.post(
        "/api/v1/events", json={"definition": "order.created", "payload": {"id": 7}}, headers=auth
    )
    assert response.status_code == 202
    body = response.get_json()
    assert len(body["delivery_ids"]) == 1
    run_worker(app)
    requests = receiver.wait_for(1)
    assert [r.path for r in requests] == ["/hook"]
    event = Webhook(cb.secret).verify(requests[0].body, requests[0].headers)
    assert event["data"] == {"id": 7}
    d = db.session.get(Delivery, body["delivery_ids"][0])
    assert d.status == "succeeded"
    assert d.attempts[0].status_code == 200
    assert inactive.id != cb.id
