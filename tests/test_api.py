"""The JSON API (SPEC §5): callbacks CRUD, events, deliveries — and 4xx JSON for bad input."""

from __future__ import annotations

import pytest

from cbdash.extensions import db
from cbdash.models import Callback, Event
from tests.conftest import make_callback, run_worker


def _error(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.get_json()
    assert set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def test_callback_crud_round_trip(client, auth, receiver):
    created = client.post(
        "/api/v1/callbacks",
        headers=auth,
        json={"definition": "order.created", "url": receiver.url(), "timeout": 7, "active": True},
    )
    assert created.status_code == 201
    cb = created.get_json()
    assert cb["timeout"] == 7 and cb["status"] == "active" and cb["secret"].startswith("whsec_")
    assert "••••" in cb["secret"]  # masked, never the secret itself

    listed = client.get("/api/v1/callbacks?status=active", headers=auth).get_json()
    assert [c["id"] for c in listed["data"]] == [cb["id"]]

    patched = client.patch(f"/api/v1/callbacks/{cb['id']}", headers=auth, json={"active": False})
    assert patched.status_code == 200 and patched.get_json()["status"] == "inactive"
    assert client.get("/api/v1/callbacks?status=active", headers=auth).get_json()["data"] == []

    assert client.delete(f"/api/v1/callbacks/{cb['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/callbacks/{cb['id']}", headers=auth).status_code == 404


def test_two_callbacks_may_share_a_definition_and_both_get_the_event(app, client, auth, receiver):
    make_callback(receiver.url("/a"), "payment.confirmed")
    make_callback(receiver.url("/b"), "payment.confirmed")
    response = client.post(
        "/api/v1/events", headers=auth, json={"definition": "payment.confirmed", "payload": {"n": 1}}
    )
    assert response.status_code == 202
    assert len(response.get_json()["delivery_ids"]) == 2
    run_worker(app)
    assert sorted(r.path for r in receiver.wait_for(2)) == ["/a", "/b"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://example.com/"}, "definition"),
        ({"definition": "Bad Name!", "url": "https://example.com/"}, "definition"),
        ({"definition": "order.created", "url": "ftp://example.com/"}, "url"),
        ({"definition": "order.created", "url": "https://example.com/", "timeout": 0}, "timeout"),
        ({"definition": "order.created", "url": "https://example.com/", "timeout": 31}, "timeout"),
        ({"definition": "order.created", "url": "https://example.com/", "timeout": "abc"}, "timeout"),
        ({"definition": "order.created", "url": "https://example.com/", "headers": "x"}, "headers"),
        ({"definition": "order.created", "url": "https://example.com/", "colour": "red"}, "colour"),
    ],
)
def test_bad_callback_fields_are_400_with_the_field_named(client, auth, body, field):
    response = client.post("/api/v1/callbacks", headers=auth, json=body)
    assert response.status_code == 400
    assert field in _error(response)["fields"]
    assert db.session.query(Callback).count() == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"payload": {}}', "invalid_field"),
        (b'{"definition": "order.created"}', "invalid_field"),
        (b'{"definition": "order.created", "payload": {}, "extra": 1}', "unknown_fields"),
        (b'{"definition": 5, "payload": {}}', "invalid_field"),
    ],
)
def test_bad_event_bodies_are_4xx_json_and_store_nothing(client, auth, data, code):
    response = client.post("/api/v1/events", headers={**auth, "Content-Type": "application/json"}, data=data)
    assert response.status_code == 400
    assert _error(response)["code"] == code
    assert db.session.query(Event).count() == 0


def test_payload_over_the_limit_is_413(app, client, auth):
    big = "x" * (app.config["PAYLOAD_LIMIT"] + 10)
    response = client.post(
        "/api/v1/events", headers=auth, json={"definition": "order.created", "payload": big}
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


def test_delivery_detail_lists_its_attempts_and_redeliver_keeps_the_webhook_id(app, client, auth, receiver):
    make_callback(receiver.url())
    ids = client.post(
        "/api/v1/events", headers=auth, json={"definition": "order.created", "payload": {}}
    ).get_json()["delivery_ids"]
    run_worker(app)
    detail = client.get(f"/api/v1/deliveries/{ids[0]}", headers=auth).get_json()
    assert detail["status"] == "succeeded"
    assert detail["attempt_log"][0]["status_code"] == 200
    assert detail["created_at"].endswith("Z")
    again = client.post(f"/api/v1/deliveries/{ids[0]}/redeliver", headers=auth)
    assert again.status_code == 202
    assert again.get_json()["webhook_id"] == detail["webhook_id"]
    assert again.get_json()["kind"] == "redelivery"
    listed = client.get("/api/v1/deliveries?kind=redelivery", headers=auth).get_json()["data"]
    assert [d["id"] for d in listed] == [again.get_json()["id"]]
    assert client.get("/api/v1/deliveries?status=bogus", headers=auth).status_code == 400
    assert client.get("/api/v1/deliveries?callback_id=abc", headers=auth).status_code == 400


def test_openapi_document_is_served_without_a_token(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert "/events" in doc["paths"] and "/definitions/{name}/invoke" in doc["paths"]


def test_status_field_as_shown_in_the_json_can_be_patched(client, auth, receiver):
    cb = client.post(
        "/api/v1/callbacks", headers=auth, json={"definition": "order.created", "url": receiver.url()}
    ).get_json()
    patched = client.patch(f"/api/v1/callbacks/{cb['id']}", headers=auth, json={"status": "inactive"})
    assert patched.status_code == 200 and patched.get_json()["active"] is False
    bad = client.patch(f"/api/v1/callbacks/{cb['id']}", headers=auth, json={"status": "paused"})
    assert bad.status_code == 400 and "active" in bad.get_json()["error"]["fields"]
