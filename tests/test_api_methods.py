"""Wrong methods on real API endpoints answer 405 with Allow, unknown paths 404 — all JSON."""

from __future__ import annotations


def test_wrong_method_on_an_api_endpoint_is_405_with_allow(client, auth):
    response = client.get("/api/v1/events", headers=auth)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_put_on_callbacks_lists_the_methods_it_takes(client, auth):
    response = client.put("/api/v1/callbacks", headers=auth, json={})
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}


def test_unknown_api_path_is_a_json_404(client, auth):
    response = client.get("/api/v1/nope", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_wrong_method_without_a_token_is_still_401(client):
    assert client.get("/api/v1/events").status_code == 401
