"""The JSON API (SPEC §5): callbacks CRUD, events, deliveries — and 4xx JSON for bad input."""

from __future__ import annotations

import pytest

from cbdash.extensions import db
from cbdash.models import Callback, Delivery, Event
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
    assert cb["secret"] == db.session.get(Callback, cb["id"]).secret  # in full, in this answer only
    assert "••••" in client.get(f"/api/v1/callbacks/{cb['id']}", headers=auth).get_json()["secret"]

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
    assert bad.status_code == 400
    assert _error(bad)["fields"] == {"status": "Status must be active or inactive."}
    assert client.patch(f"/api/v1/callbacks/{cb['id']}", headers=auth, json={"active": "paused"}).get_json()[
        "error"
    ]["fields"] == {"active": "Status must be active or inactive."}


def test_a_bad_status_on_create_is_reported_under_status(client, auth):
    body = {"definition": "order.created", "url": "https://example.com/", "status": "paused"}
    response = client.post("/api/v1/callbacks", headers=auth, json=body)
    assert response.status_code == 400
    assert _error(response)["fields"] == {"status": "Status must be active or inactive."}
    both = client.post("/api/v1/callbacks", headers=auth, json={**body, "status": "active", "active": True})
    assert both.status_code == 400 and set(_error(both)["fields"]) == {"status"}
    assert db.session.query(Callback).count() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("description", {"a": 1}, "The description must be text."),
        ("description", [], "The description must be text."),
        ("description", "x" * 2001, "Keep the description under 2000 characters."),
        ("definition", 5, "The definition name must be text, for example order.created."),
        ("definition", {}, "The definition name must be text, for example order.created."),
        ("url", ["https://example.com/"], "The URL must be text, for example https://example.com/hook."),
        ("url", 0, "The URL must be text, for example https://example.com/hook."),
        ("headers", {"X-Shop": 5}, "The value of X-Shop must be text."),
        ("retry_schedule", {"a": 1}, "The retry schedule must be text like 5,300,1800 or a list"),
        ("retry_schedule", True, "The retry schedule must be text like 5,300,1800 or a list"),
    ],
)
def test_a_wrong_type_is_reported_as_a_type_error_not_a_length_error(client, auth, field, value, message):
    body = {"definition": "order.created", "url": "https://example.com/", field: value}
    response = client.post("/api/v1/callbacks", headers=auth, json=body)
    assert response.status_code == 400
    fields = _error(response)["fields"]
    assert list(fields) == [field] and fields[field].startswith(message)
    assert db.session.query(Callback).count() == 0


def _event(client, auth, key, definition="order.created", payload=None):  # type: ignore[no-untyped-def]
    payload = {"order_id": "ord_1", "total": 5} if payload is None else payload
    body = {"definition": definition, "payload": payload}
    return client.post("/api/v1/events", headers={**auth, "Idempotency-Key": key}, json=body)


def test_a_repeated_idempotency_key_with_the_same_request_replays_the_first_result(client, auth, receiver):
    make_callback(receiver.url())
    first = _event(client, auth, "k")
    # The same JSON with its keys in another order is the same payload.
    again = _event(client, auth, "k", payload={"total": 5, "order_id": "ord_1"})
    assert first.status_code == again.status_code == 202
    assert again.get_json() == {**first.get_json(), "idempotent_replay": True}
    assert db.session.query(Event).count() == 1 and db.session.query(Delivery).count() == 1


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"payload": {"order_id": "ord_2", "total": 5}}, {"payload"}),
        ({"payload": {"order_id": "ord_1", "total": True}}, {"payload"}),  # true is not 5, nor 1
        ({"payload": {"order_id": "ord_1", "total": 5.0}}, {"payload"}),
        ({"definition": "order.paid"}, {"definition"}),
        ({"definition": "order.paid", "payload": []}, {"definition", "payload"}),
    ],
)
def test_a_reused_idempotency_key_with_a_different_request_is_409_and_creates_nothing(
    client, auth, receiver, change, fields
):
    make_callback(receiver.url())
    make_callback(receiver.url(), "order.paid")
    first = _event(client, auth, "order-42")
    assert first.status_code == 202
    reused = _event(client, auth, "order-42", **change)
    assert reused.status_code == 409
    error = _error(reused)
    assert error["code"] == "idempotency_key_reused" and set(error["fields"]) == fields
    assert "order-42" in error["message"] and first.get_json()["event_id"] in error["message"]
    assert db.session.query(Event).count() == 1 and db.session.query(Delivery).count() == 1
    # The first request, repeated unchanged, still gets its result.
    assert _event(client, auth, "order-42").get_json()["event_id"] == first.get_json()["event_id"]


def test_openapi_documents_the_reused_idempotency_key(client):
    post = client.get("/api/v1/openapi.json").get_json()["paths"]["/events"]["post"]
    assert "idempotency_key_reused" in post["responses"]["409"]["description"]
    header = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
    assert "409" in header["description"]


def _token(role: str) -> dict[str, str]:
    from cbdash.services import tokens

    _row, plaintext = tokens.create(f"{role}-token", role)
    db.session.commit()
    return {"Authorization": f"Bearer {plaintext}"}


def test_the_secret_is_shown_in_full_once_and_verifies_signatures(app, client, auth, receiver):
    from standardwebhooks.webhooks import Webhook

    created = client.post(
        "/api/v1/callbacks", headers=auth, json={"definition": "order.created", "url": receiver.url()}
    ).get_json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and "•" not in secret
    assert secret not in client.get("/api/v1/callbacks", headers=auth).get_data(as_text=True)
    client.post("/api/v1/events", headers=auth, json={"definition": "order.created", "payload": {"n": 7}})
    run_worker(app)
    sent = receiver.wait_for(1)[0]
    assert Webhook(secret).verify(sent.body, sent.headers)["data"] == {"n": 7}


def test_an_admin_token_can_reveal_the_secret_and_it_is_audit_logged(client, auth, receiver):
    from cbdash.models import AuditEntry

    cb = make_callback(receiver.url())
    response = client.get(f"/api/v1/callbacks/{cb.id}/secret", headers=auth)
    assert response.status_code == 200
    shown = response.get_json()
    assert shown == {"secret": cb.secret, "previous_secret": None, "previous_secret_expires_at": None}
    entry = db.session.query(AuditEntry).filter_by(action="callback.reveal_secret").one()
    assert entry.actor == "token:tests" and entry.target_id == str(cb.id)
    assert cb.secret not in str(entry.detail)

    old = cb.secret
    new = client.post(f"/api/v1/callbacks/{cb.id}/rotate-secret", headers=auth).get_json()["new_secret"]
    after = client.get(f"/api/v1/callbacks/{cb.id}/secret", headers=auth).get_json()
    assert after["secret"] == new and after["previous_secret"] == old
    assert after["previous_secret_expires_at"].endswith("Z")
    assert client.get("/api/v1/callbacks/99999/secret", headers=auth).status_code == 404


@pytest.mark.parametrize("role", ["support", "viewer"])
def test_roles_that_cannot_reveal_in_the_ui_cannot_reveal_through_the_api(client, receiver, role):
    from cbdash.models import AuditEntry

    cb = make_callback(receiver.url())
    response = client.get(f"/api/v1/callbacks/{cb.id}/secret", headers=_token(role))
    assert response.status_code == 403 and _error(response)["code"] == "forbidden"
    assert cb.secret not in response.get_data(as_text=True)
    assert db.session.query(AuditEntry).filter_by(action="callback.reveal_secret").count() == 0
    assert client.get(f"/api/v1/callbacks/{cb.id}/secret").status_code == 401


def test_openapi_documents_the_secret_endpoint_and_the_one_time_secret(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    reveal = doc["paths"]["/callbacks/{id}/secret"]["get"]
    props = reveal["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert {"secret", "previous_secret"} <= set(props)
    created = doc["paths"]["/callbacks"]["post"]["responses"]["201"]
    schema = created["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/CallbackCreated"}
    secret = doc["components"]["schemas"]["CallbackCreated"]["allOf"][1]["properties"]["secret"]
    assert "only in this response" in secret["description"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/deliveries", {"definition": "x"}),
        ("/api/v1/callbacks", {"definition": "x", "sort": "oldest"}),
    ],
)
def test_unknown_query_parameters_on_list_endpoints_are_400_naming_them(client, auth, path, params):
    response = client.get(path, headers=auth, query_string=params)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "unknown_parameters" and set(error["fields"]) == set(params)
    assert all(name in error["message"] for name in params)


def test_every_documented_list_parameter_is_accepted(client, auth):
    doc = client.get("/api/v1/openapi.json").get_json()["paths"]
    samples = {"status": None, "kind": "event", "callback_id": "1", "limit": "5", "before_id": "9"}
    samples |= {"q": "order", "page": "1", "per_page": "10"}
    for path, status in (("/callbacks", "active"), ("/deliveries", "pending")):
        names = [p["name"] for p in doc[path]["get"]["parameters"]]
        assert names, path
        query = {name: samples[name] or status for name in names}
        response = client.get("/api/v1" + path, headers=auth, query_string=query)
        assert response.status_code == 200, (path, response.get_json())


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
@pytest.mark.parametrize("number", ["99999999999999999999999", "9223372036854775808"])
def test_an_out_of_range_callback_id_is_404_for_every_method(client, auth, method, number):
    response = getattr(client, method)(f"/api/v1/callbacks/{number}", headers=auth, json={"active": False})
    assert response.status_code == 404
    message = f"No callback with id {number}."
    assert _error(response) == {"code": "not_found", "message": message, "fields": {}}


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("post", "/api/v1/callbacks/99999999999999999999999/ping", "No callback with id"),
        ("get", "/api/v1/callbacks/99999999999999999999999/secret", "No callback with id"),
        ("patch", "/api/v1/callbacks/99999999999999999999999/sync", "No callback with id"),
        ("get", "/api/v1/callbacks/99999999999999999999999/ping", "No callback with id"),
        ("get", "/api/v1/deliveries/99999999999999999999999", "No delivery with id"),
        ("post", "/api/v1/deliveries/99999999999999999999999/redeliver", "No delivery with id"),
    ],
)
def test_other_id_routes_answer_404_for_out_of_range_ids(client, auth, method, path, message):
    response = getattr(client, method)(path, headers=auth, json={})
    assert response.status_code == 404
    assert _error(response)["message"].startswith(message)


def test_an_out_of_range_id_still_needs_a_token(client):
    response = client.patch("/api/v1/callbacks/99999999999999999999999", json={})
    assert response.status_code == 401 and _error(response)["code"] == "unauthorized"


def test_a_number_too_long_to_read_is_a_plain_400(client, auth):
    body = b'{"definition": "order.created", "payload": {"n": ' + b"9" * 5000 + b"}}"
    response = client.post("/api/v1/events", data=body, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"] == "The body has a number with more than 4300 digits."
