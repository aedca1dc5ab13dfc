"""The Callbacks documentation page, and its Python and Node snippets against real deliveries."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cbdash.extensions import db
from cbdash.services import callbacks
from tests.conftest import make_callback, run_worker
from tests.htmlq import parse

DOCS = Path(__file__).resolve().parent.parent / "static" / "docs"
NODE = shutil.which("node") or "node"


def test_docs_page_renders_every_section_and_both_snippets(admin):
    r = admin.get("/settings/callbacks/docs")
    assert r.status_code == 200
    doc = parse(r.data)
    ids = {el.attrs["id"] for el in doc.find_all("h2") if "id" in el.attrs}
    assert {"payload", "headers", "verify", "retries", "timeouts", "api"} <= ids
    body = r.get_data(as_text=True)
    assert "webhook-signature" in body and "webhook-timestamp" in body and "webhook-id" in body
    code = [c.text for c in doc.find_all("pre")]
    assert any("webhook.verify(request.get_data()" in c for c in code)
    assert any("function verifyWebhook(secret, headers, rawBody" in c for c in code)
    schedule = [li.text for li in doc.find("ol", class_="schedule").find_all("li")]
    assert schedule == [
        "immediately",
        "after 5 s",
        "after 5 min",
        "after 30 min",
        "after 2 h",
        "after 5 h",
        "after 10 h",
        "after 10 h",
    ]
    assert "up to 4.0 KiB of the response body (we read at most 64.0 KiB)" in doc.find("main").text
    # The page is linked from the Callbacks page header.
    assert b'href="/settings/callbacks/docs"' in admin.get("/settings/callbacks").data


def test_docs_snippets_are_downloadable(client):
    assert client.get("/static/docs/verify_webhook.py").data == (DOCS / "verify_webhook.py").read_bytes()
    assert client.get("/static/docs/verify_webhook.js").data == (DOCS / "verify_webhook.js").read_bytes()


@pytest.fixture
def delivery(app, auth, client, receiver):  # type: ignore[no-untyped-def]
    """A real event delivery captured by the receiver: (callback secret(s), headers, body)."""
    cb = make_callback(receiver.url(), "order.created")
    response = client.post(
        "/api/v1/events",
        json={"definition": "order.created", "payload": {"order_id": "ord_1042", "note": "Café ✓ <b>"}},
        headers=auth,
    )
    assert response.status_code == 202
    run_worker(app)
    [request] = receiver.wait_for(1)
    return cb, request


def _python_receiver(monkeypatch, secret: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CBDASH_SIGNING_SECRET", secret)
    spec = importlib.util.spec_from_file_location("verify_webhook_doc", DOCS / "verify_webhook.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.app.test_client()


def test_python_snippet_verifies_a_real_delivery(delivery, monkeypatch):
    cb, request = delivery
    receiver_client = _python_receiver(monkeypatch, cb.secret)
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    ok = receiver_client.post(
        "/hooks/cbdash", data=request.body, headers={**headers, "Content-Type": "application/json"}
    )
    assert ok.status_code == 204
    tampered = receiver_client.post(
        "/hooks/cbdash", data=request.body.replace(b"ord_1042", b"ord_9999"), headers=headers
    )
    assert tampered.status_code == 400
    wrong_secret = _python_receiver(monkeypatch, "whsec_" + "QUJD" * 8)
    assert wrong_secret.post("/hooks/cbdash", data=request.body, headers=headers).status_code == 400


def _node_verify(secret: str, headers: dict[str, str], body: bytes) -> subprocess.CompletedProcess:
    script = (
        f"const {{ verifyWebhook }} = require({json.dumps(str(DOCS / 'verify_webhook.js'))});"
        "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const raw = Buffer.from(input.body, 'base64').toString('utf8');"
        "const event = verifyWebhook(input.secret, input.headers, raw);"
        "process.stdout.write(JSON.stringify(event));"
    )
    payload = json.dumps({"secret": secret, "headers": headers, "body": base64.b64encode(body).decode()})
    return subprocess.run(
        [NODE, "-e", script], input=payload, capture_output=True, text=True, timeout=30, check=False
    )


def test_node_snippet_verifies_a_real_delivery(delivery):
    cb, request = delivery
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    ok = _node_verify(cb.secret, headers, request.body)
    assert ok.returncode == 0, ok.stderr
    event = json.loads(ok.stdout)
    assert event["type"] == "order.created"
    assert event["data"] == {"order_id": "ord_1042", "note": "Café ✓ <b>"}
    tampered = _node_verify(cb.secret, headers, request.body.replace(b"ord_1042", b"ord_9999"))
    assert tampered.returncode != 0 and "no valid signature" in tampered.stderr
    stale = _node_verify(cb.secret, {**headers, "webhook-timestamp": "1000000000"}, request.body)
    assert stale.returncode != 0 and "timestamp outside tolerance" in stale.stderr


def test_both_snippets_accept_either_secret_during_a_rotation(app, auth, client, receiver, monkeypatch):
    cb = make_callback(receiver.url(), "order.created")
    old_secret = cb.secret
    callbacks.rotate_secret(cb)
    db.session.commit()
    client.post("/api/v1/events", json={"definition": "order.created", "payload": {"n": 1}}, headers=auth)
    run_worker(app)
    [request] = receiver.wait_for(1)
    headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (cb.secret, old_secret):
        assert _node_verify(secret, headers, request.body).returncode == 0
        assert (
            _python_receiver(monkeypatch, secret)
            .post("/hooks/cbdash", data=request.body, headers=headers)
            .status_code
            == 204
        )
