"""POST /hooks/<slug> end to end: verify, store as an event, answer, relay to callbacks."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import logging
import time

import pytest
from sqlalchemy import func, insert, select
from standardwebhooks.webhooks import Webhook

from cbdash.extensions import db
from cbdash.models import Delivery, Event, InboundMessage, InboundSource
from cbdash.services import inbound
from tests.conftest import make_callback, run_worker

WHSEC = "whsec_" + base64.b64encode(b"inbound-test-key-32-bytes-long!!").decode()


def make_source(slug: str = "pay", preset: str = "standard", **fields) -> InboundSource:  # type: ignore[no-untyped-def]
    data = {
        "slug": slug,
        "preset": preset,
        "secret": fields.pop("secret", WHSEC if preset == "standard" else "s3cret-value-123"),
        "definition": "payment.confirmed",
        "dedupe_header": "webhook-id" if preset == "standard" else None,
        "response_status": 200,
        "response_body": '{"received": true}',
        "tolerance": 300,
        "rate_limit": 600,
        "rate_window": 60,
        "description": "",
        "active": True,
        **fields,
    }
    source = inbound.create(data)
    db.session.commit()
    return source


def signed(
    body: bytes, msg_id: str = "msg_abc", secret: str = WHSEC, ts: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers, signed as the spec documents (not with cbdash code)."""
    ts = int(time.time()) if ts is None else ts
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


BODY = json.dumps({"payment_id": "pay_42", "status": "captured", "amount": 1999}).encode()


def count(model) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count()).select_from(model)) or 0


def test_verified_message_is_stored_answered_and_relayed(app, client, receiver):
    cb = make_callback(receiver.url("/a"), "payment.confirmed")
    make_callback(receiver.url("/off"), "payment.confirmed", active=False)
    make_callback(receiver.url("/other"), "order.created")
    make_source(response_status=202, response_body='{"ok": 1}')

    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY))

    assert response.status_code == 202
    assert response.get_json() == {"ok": 1}
    assert "store;dur=" in response.headers["Server-Timing"]
    event = db.session.scalar(select(Event))
    assert event.source == "inbound:pay" and event.definition == "payment.confirmed"
    assert event.payload == {"payment_id": "pay_42", "status": "captured", "amount": 1999}
    msg = db.session.scalar(select(InboundMessage))
    assert (msg.outcome, msg.event_id, msg.provider_id) == ("accepted", event.id, "msg_abc")
    assert msg.headers["Webhook-Signature"] == inbound.REDACTED
    assert msg.headers["Webhook-Id"] == "msg_abc"
    assert msg.body_excerpt is None  # the body lives in the event
    deliveries = list(db.session.scalars(select(Delivery)))
    assert [d.callback_id for d in deliveries] == [cb.id]
    # Queued only once the answer is out (the WSGI server closes the response after sending it).
    assert deliveries[0].enqueued_at is None
    response.close()
    db.session.expire_all()
    assert deliveries[0].enqueued_at is not None

    run_worker(app)
    got = receiver.wait_for(1)
    assert [r.path for r in got] == ["/a"]
    relayed = Webhook(cb.secret).verify(got[0].body, got[0].headers)
    assert relayed["data"] == {"payment_id": "pay_42", "status": "captured", "amount": 1999}
    assert relayed["type"] == "payment.confirmed"


def test_replayed_provider_id_is_acknowledged_but_not_stored_or_relayed_twice(app, client, receiver):
    make_callback(receiver.url(), "payment.confirmed")
    make_source()
    headers = signed(BODY, msg_id="msg_once")

    first = client.post("/hooks/pay", data=BODY, headers=headers)
    second = client.post("/hooks/pay", data=BODY, headers=headers)
    first.close(), second.close()  # what a WSGI server does after sending: queues the deliveries

    assert first.status_code == second.status_code == 200
    assert second.get_json() == {"received": True}
    assert count(Event) == 1 and count(Delivery) == 1
    outcomes = [m.outcome for m in db.session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert outcomes == ["accepted", "duplicate"]
    run_worker(app)
    time.sleep(0.2)
    assert len(receiver.requests) == 1
    assert inbound.outcome_counts([1])[1] == {"accepted": 1, "duplicate": 1, "refused": 0}


def test_concurrent_repeat_is_caught_by_the_unique_constraint(app, client, monkeypatch):
    source = make_source()
    real_create = inbound.delivery.create_event

    def racing_create(*args, **kwargs):  # type: ignore[no-untyped-def]
        # Another request stores the same provider id after our duplicate check, before our commit.
        with db.engine.begin() as conn:
            conn.execute(
                insert(InboundMessage).values(
                    source_id=source.id,
                    received_at=inbound.utcnow(),
                    outcome="accepted",
                    status_code=200,
                    dedupe_key="msg_race",
                    provider_id="msg_race",
                    headers={},
                    body_size=0,
                    payload_is_text=False,
                )
            )
        return real_create(*args, **kwargs)

    monkeypatch.setattr(inbound.delivery, "create_event", racing_create)
    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY, msg_id="msg_race"))
    assert response.status_code == 200
    assert count(Event) == 0  # ours was rolled back
    outcomes = sorted(m.outcome for m in db.session.scalars(select(InboundMessage)))
    assert outcomes == ["accepted", "duplicate"]


def test_bad_signature_is_refused_logged_and_debuggable(app, client, receiver, caplog):
    make_callback(receiver.url(), "payment.confirmed")
    make_source()
    headers = signed(BODY)
    tampered = BODY.replace(b"1999", b"1998")

    with caplog.at_level(logging.WARNING, logger="cbdash.services.inbound"):
        response = client.post("/hooks/pay", data=tampered, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "bad_signature"
    assert "expected" not in response.get_data(as_text=True)  # nothing useful for a forger
    assert count(Event) == 0 and count(Delivery) == 0
    msg = db.session.scalar(select(InboundMessage))
    assert (msg.outcome, msg.status_code, msg.reason) == ("refused", 401, "bad_signature")
    assert msg.body_excerpt == tampered.decode()
    assert msg.debug["signed"].endswith(tampered.decode())
    assert msg.debug["received"] == headers["webhook-signature"][3:]
    assert any("refused" in r.getMessage() and "pay" in r.getMessage() for r in caplog.records)


def test_unverified_body_keeps_only_a_capped_excerpt(client):
    make_source()
    body = json.dumps({"blob": "x" * 20000}).encode()
    response = client.post("/hooks/pay", data=body, headers={"webhook-id": "a", "webhook-timestamp": "1"})
    assert response.status_code == 401
    msg = db.session.scalar(select(InboundMessage))
    assert msg.reason == "missing_signature"
    assert len(msg.body_excerpt) == inbound.EXCERPT and msg.body_size == len(body)


def test_stale_timestamp_is_refused(client):
    make_source()
    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY, ts=int(time.time()) - 600))
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "stale_timestamp"
    assert db.session.scalar(select(InboundMessage.reason)) == "stale_timestamp"


def test_unknown_slug_is_404_and_stores_nothing(client):
    make_source()
    for path in ("/hooks/nope", "/hooks/UPPER", "/hooks/" + "a" * 60):
        response = client.post(path, data=BODY, headers=signed(BODY))
        assert response.status_code == 404, path
        assert response.is_json
    assert count(InboundMessage) == 0


def test_inactive_source_answers_404_but_logs_the_attempt(client):
    make_source(active=False)
    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY))
    assert response.status_code == 404
    assert count(Event) == 0
    msg = db.session.scalar(select(InboundMessage))
    assert (msg.outcome, msg.reason, msg.status_code) == ("refused", "inactive", 404)


class TestBodyLimit:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"PAYLOAD_LIMIT": 2048}

    def test_body_over_the_limit_is_413(self, client):
        make_source()
        big = json.dumps({"blob": "x" * 3000}).encode()
        response = client.post("/hooks/pay", data=big, headers=signed(big))
        assert response.status_code == 413
        msg = db.session.scalar(select(InboundMessage))
        assert (msg.reason, msg.status_code, msg.body_excerpt) == ("too_large", 413, None)
        ok = json.dumps({"blob": "x" * 1000}).encode()
        assert client.post("/hooks/pay", data=ok, headers=signed(ok, msg_id="m2")).status_code == 200

    def test_body_far_over_the_server_limit_is_413_too(self, client):
        make_source()
        huge = b"x" * (200 * 1024)
        response = client.post("/hooks/pay", data=huge, headers=signed(huge))
        assert response.status_code == 413
        assert response.get_json()["error"]["code"] == "payload_too_large"


def test_non_json_body_is_stored_as_raw_text(app, client, receiver):
    make_callback(receiver.url(), "payment.confirmed")
    make_source()
    body = b"status=shipped&tracking=1Z999"
    response = client.post(
        "/hooks/pay", data=body, headers={**signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200
    response.close()
    event = db.session.scalar(select(Event))
    assert event.payload == "status=shipped&tracking=1Z999"
    assert db.session.scalar(select(InboundMessage.payload_is_text)) is True
    run_worker(app)
    assert json.loads(receiver.wait_for(1)[0].body)["data"] == "status=shipped&tracking=1Z999"


def test_rate_limit_answers_429_with_retry_after(client):
    make_source(rate_limit=3, rate_window=60)
    codes = []
    for i in range(5):
        response = client.post("/hooks/pay", data=BODY, headers=signed(BODY, msg_id=f"m{i}"))
        codes.append(response.status_code)
    assert codes == [200, 200, 200, 429, 429]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert count(InboundMessage) == 3  # throttled requests are counted, not stored
    assert inbound.throttled_today([1]) == {1: 2}


def test_throttled_requests_are_answered_without_the_database(client, monkeypatch):
    make_source(rate_limit=1, rate_window=60)
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, "r1")).status_code == 200

    def no_db(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("the database was queried for a throttled request")

    monkeypatch.setattr(inbound, "find", no_db)
    monkeypatch.setattr(inbound.db.session, "scalar", no_db)
    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY, "r2"))
    assert response.status_code == 429 and response.headers["Retry-After"]


def test_fixed_window_resets_and_counts_every_429(app):
    limits = inbound.Limits(source_id=7, rate_limit=2, rate_window=10)
    t = 1_000_000.0  # the start of a 10 s window
    assert [inbound.throttle(limits, t + dt) for dt in (0, 1, 2, 3, 9.5)] == [0, 0, 8, 7, 1]
    assert inbound.throttle(limits, t + 10) == 0  # a new window
    assert inbound.throttled_today([7]) == {7: 3}


def test_rate_limit_windows_are_per_source(client):
    make_source("a-src", rate_limit=1, rate_window=60)
    make_source("b-src", rate_limit=1, rate_window=60)
    assert client.post("/hooks/a-src", data=BODY, headers=signed(BODY, "x1")).status_code == 200
    assert client.post("/hooks/a-src", data=BODY, headers=signed(BODY, "x2")).status_code == 429
    assert client.post("/hooks/b-src", data=BODY, headers=signed(BODY, "x3")).status_code == 200


def _github(secret: str, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Delivery": "d-1"}


def _shopify(secret: str, body: bytes) -> dict[str, str]:
    mac = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": mac, "X-Shopify-Webhook-Id": "d-1"}


def _stripe(secret: str, body: bytes) -> dict[str, str]:
    ts = int(time.time())
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={mac}"}


def _token(secret: str, body: bytes) -> dict[str, str]:
    return {"X-Webhook-Token": secret, "X-Request-Id": "d-1"}


@pytest.mark.parametrize(
    ("preset", "sign", "dedupe"),
    [
        ("github", _github, "X-GitHub-Delivery"),
        ("shopify", _shopify, "X-Shopify-Webhook-Id"),
        ("stripe", _stripe, None),
        ("token", _token, "X-Request-Id"),
    ],
)
def test_each_preset_end_to_end_and_its_secret_redacted(client, preset, sign, dedupe):
    secret = "whsec_stripe_like_secret_1" if preset == "stripe" else "shared-secret-123456"
    make_source(preset=preset, secret=secret, dedupe_header=dedupe)
    headers = sign(secret, BODY)
    assert client.post("/hooks/pay", data=BODY, headers=headers).status_code == 200
    if preset == "token":  # nothing is signed: a wrong token is the tampering that matters
        forged = {**headers, "X-Webhook-Token": secret[:-1] + "7"}
        assert client.post("/hooks/pay", data=BODY, headers=forged).status_code == 401
    else:
        assert (
            client.post("/hooks/pay", data=BODY.replace(b"1999", b"9999"), headers=headers).status_code == 401
        )
    stored = db.session.scalar(select(InboundMessage).where(InboundMessage.outcome == "accepted"))
    assert secret not in json.dumps(stored.headers)
    for name in headers:
        if name != dedupe:
            assert stored.headers[name] == inbound.REDACTED, name
    if dedupe:
        assert client.post("/hooks/pay", data=BODY, headers=headers).status_code == 200
        assert db.session.scalar(select(func.count()).select_from(Event)) == 1


def test_stripe_event_id_in_the_body_dedupes_with_json_field(client):
    secret = "whsec_stripe_like_secret_1"
    make_source(preset="stripe", secret=secret, dedupe_header="json:id")
    body = json.dumps({"id": "evt_1NG8Du2eZvKYlo2C", "type": "payment_intent.succeeded"}).encode()
    first = _stripe(secret, body)
    assert client.post("/hooks/pay", data=body, headers=first).status_code == 200
    time.sleep(1.1)  # Stripe re-signs a retry with a new timestamp
    retry = _stripe(secret, body)
    assert retry != first
    assert client.post("/hooks/pay", data=body, headers=retry).status_code == 200
    assert count(Event) == 1
    outcomes = [m.outcome for m in db.session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert outcomes == ["accepted", "duplicate"]


def test_hook_needs_no_login_and_sets_no_session_cookie(client):
    make_source(preset="none", secret="")
    response = client.post("/hooks/pay", data=b"{}")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_get_on_the_hook_is_405_not_a_login_redirect(client):
    make_source()
    assert client.get("/hooks/pay").status_code == 405


def test_redis_down_does_not_lose_the_message(app, client, monkeypatch):
    make_source()

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis down")

    monkeypatch.setattr("cbdash.queue.get_redis", broken)
    monkeypatch.setattr("cbdash.dispatch.get_queue", broken)
    make_callback("http://127.0.0.1:9/x", "payment.confirmed")
    response = client.post("/hooks/pay", data=BODY, headers=signed(BODY))
    assert response.status_code == 200
    response.close()  # runs the enqueue, which fails quietly
    d = db.session.scalar(select(Delivery))
    assert d.status == "pending" and d.enqueued_at is None  # the reconciler picks it up


def test_old_messages_are_pruned_in_batches(client):
    from datetime import timedelta

    source = make_source()
    for i in range(5):
        client.post("/hooks/pay", data=BODY, headers=signed(BODY, f"p{i}"))
    old = list(db.session.scalars(select(InboundMessage).order_by(InboundMessage.id)))[:3]
    for m in old:
        m.received_at = inbound.utcnow() - timedelta(days=40)
    db.session.commit()
    assert inbound.prune_messages(timedelta(days=30), batch=2) == 3
    assert count(InboundMessage) == 2
    assert inbound.outcome_counts([source.id])[source.id]["accepted"] == 2


def test_shared_token_source_accepts_authorization_bearer(client):
    """The form and the source page promise "Authorization: Bearer <token> works too"."""
    make_source("carrier", preset="token", secret="tok_abcdefgh123456")
    ok = client.post("/hooks/carrier", data=BODY, headers={"Authorization": "Bearer tok_abcdefgh123456"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    wrong = client.post("/hooks/carrier", data=BODY, headers={"Authorization": "Bearer tok_abcdefgh123457"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "bad_signature"
    missing = client.post("/hooks/carrier", data=BODY)
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.get_json()["error"]["message"]
    accepted = db.session.scalar(select(InboundMessage).where(InboundMessage.outcome == "accepted"))
    assert accepted.headers["Authorization"] == inbound.REDACTED  # the token is never stored


@pytest.mark.parametrize(
    "raw", [b"\x00\xff\xfe", gzip.compress(b'{"a": 1}', mtime=0)], ids=["nul-ff-fe", "gzip"]
)
def test_body_that_is_not_utf8_is_relayed_base64_with_every_byte(app, client, receiver, raw):
    make_callback(receiver.url(), "payment.confirmed")
    source = make_source("raw", preset="none", secret="")
    response = client.post("/hooks/raw", data=raw, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    response.close()
    event = db.session.scalar(select(Event))
    assert event.payload == {"encoding": "base64", "body": base64.b64encode(raw).decode()}
    run_worker(app)
    relayed = json.loads(receiver.wait_for(1)[0].body)["data"]
    assert relayed["encoding"] == "base64"
    assert base64.b64decode(relayed["body"]) == raw  # the exact bytes, nothing replaced by U+FFFD
    msg = db.session.scalar(select(InboundMessage))
    assert msg.payload_is_text is True and msg.body_size == len(raw)
    assert inbound.binary_body(msg.event.payload, msg.payload_is_text) == raw
    assert source.id == msg.source_id


@pytest.mark.parametrize(
    "path",
    ["/hooks/..%2F..%2Fetc", "/hooks/../../etc", "/hooks/pay/extra", "/hooks/", "/hooks", "/hooks/a%00b"],
)
def test_any_post_under_hooks_that_is_no_slug_is_the_json_404(client, path):
    make_source()
    response = client.post(path, data=BODY, headers=signed(BODY))
    assert response.status_code == 404, (path, response.headers.get("Location"))
    assert response.is_json and response.get_json()["error"]["code"] == "not_found"
    assert "Location" not in response.headers and "Set-Cookie" not in response.headers
    assert count(InboundMessage) == 0
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY)).status_code == 200
