"""Inbound verification presets, each checked against a signer written from the provider's docs.

The signers below follow the providers' published algorithms and deliberately
do not call cbdash code:
- Standard Webhooks: ``v1,`` + base64(HMAC-SHA256(base64decode(secret after whsec_), "id.ts.body"))
- Stripe: ``Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret text, "<ts>.<body>")>``
- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret text, body)>``
- Shopify: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret text, body)>``
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from cbdash.services import inbound

BODY = b'{"id":"evt_1","type":"payment.succeeded","amount":1999,"note":"caf\xc3\xa9"}'
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
TEXT_SECRET = "It's a Secret to Everybody"


def standard_headers(
    secret: str, body: bytes, msg_id: str = "msg_1", ts: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def stripe_headers(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={mac},v0=deadbeef"}


def github_headers(secret: str, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": "sha256=" + mac,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }


def shopify_headers(secret: str, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(mac).decode()}


def tamper(body: bytes) -> bytes:
    """The same body with one byte changed."""
    return body.replace(b"1999", b"1998")


def test_github_documented_test_vector_verifies():
    # The example from GitHub's "Validating webhook deliveries" docs.
    headers = {
        "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    }
    assert inbound.verify("github", [TEXT_SECRET], headers, b"Hello, World!").ok


def test_standard_webhooks_message_from_the_reference_library_verifies():
    msg_id, ts = "msg_ref", int(time.time())
    from datetime import UTC, datetime

    signature = Webhook(WHSEC).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}
    assert inbound.verify("standard", [WHSEC], headers, BODY).ok


@pytest.mark.parametrize(
    ("preset", "secret", "sign"),
    [
        ("standard", WHSEC, standard_headers),
        ("stripe", "whsec_stripe_endpoint_secret_123", stripe_headers),
        ("github", TEXT_SECRET, github_headers),
        ("shopify", "shpss_0123456789abcdef", shopify_headers),
    ],
)
def test_preset_accepts_documented_signature_and_refuses_one_changed_byte(preset, secret, sign):
    headers = sign(secret, BODY)
    assert inbound.verify(preset, [secret], headers, BODY).ok
    verdict = inbound.verify(preset, [secret], headers, tamper(BODY))
    assert not verdict.ok
    assert verdict.reason == "bad_signature"
    assert verdict.debug["expected"] != verdict.debug["received"]


@pytest.mark.parametrize(
    ("preset", "secret", "sign"),
    [
        ("standard", WHSEC, standard_headers),
        ("stripe", "whsec_stripe_endpoint_secret_123", stripe_headers),
        ("github", TEXT_SECRET, github_headers),
        ("shopify", "shpss_0123456789abcdef", shopify_headers),
    ],
)
def test_preset_refuses_a_different_secret(preset, secret, sign):
    headers = sign(secret, BODY)
    other = WHSEC.replace("a", "b") if preset == "standard" else secret + "x"
    verdict = inbound.verify(preset, [other], headers, BODY)
    assert not verdict.ok and verdict.reason == "bad_signature"


@pytest.mark.parametrize("preset", ["standard", "stripe", "github", "shopify", "token"])
def test_missing_signature_header_is_refused(preset):
    verdict = inbound.verify(preset, [WHSEC], {"Content-Type": "application/json"}, BODY)
    assert not verdict.ok
    assert verdict.reason == "missing_signature"


def test_standard_webhooks_timestamp_tolerance_is_five_minutes_either_way():
    now = time.time()
    for skew, ok in ((-299, True), (299, True), (-301, False), (301, False), (3600, False)):
        headers = standard_headers(WHSEC, BODY, ts=int(now) - skew)
        verdict = inbound.verify("standard", [WHSEC], headers, BODY, tolerance=300, now=int(now))
        assert verdict.ok is ok, skew
        if not ok:
            assert verdict.reason == "stale_timestamp"
            assert "timestamp" in verdict.debug["hint"]


def test_stripe_timestamp_tolerance_and_signed_timestamp():
    now = int(time.time())
    secret = "whsec_stripe_endpoint_secret_123"
    stale = stripe_headers(secret, BODY, ts=now - 301)
    verdict = inbound.verify("stripe", [secret], stale, BODY, tolerance=300, now=now)
    assert verdict.reason == "stale_timestamp"
    # Moving t= forward without re-signing breaks the signature: the timestamp is signed.
    fresh_t = stale["Stripe-Signature"].replace(f"t={now - 301}", f"t={now}")
    verdict = inbound.verify("stripe", [secret], {"Stripe-Signature": fresh_t}, BODY, now=now)
    assert verdict.reason == "bad_signature"


def test_several_signatures_any_one_matching_is_enough():
    good = standard_headers(WHSEC, BODY)
    good["webhook-signature"] = "v1,bm90IGl0 v2,whatever " + good["webhook-signature"]
    assert inbound.verify("standard", [WHSEC], good, BODY).ok


def test_previous_secret_verifies_during_overlap():
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    verdict = inbound.verify("standard", [WHSEC, old], standard_headers(old, BODY), BODY)
    assert verdict.ok and verdict.used_previous_secret


def test_svix_header_names_are_accepted_for_standard_webhooks():
    headers = {k.replace("webhook-", "svix-"): v for k, v in standard_headers(WHSEC, BODY).items()}
    assert inbound.verify("standard", [WHSEC], headers, BODY).ok


def test_shared_token_header_and_bearer_form():
    assert inbound.verify(
        "token",
        ["tok_abcdefgh123"],
        {"X-Carrier-Token": "tok_abcdefgh123"},
        BODY,
        token_header="X-Carrier-Token",
    ).ok
    assert inbound.verify(
        "token",
        ["tok_abcdefgh123"],
        {"Authorization": "Bearer tok_abcdefgh123"},
        BODY,
        token_header="Authorization",
    ).ok
    verdict = inbound.verify("token", ["tok_abcdefgh123"], {"X-Webhook-Token": "tok_abcdefgh124"}, BODY)
    assert not verdict.ok and verdict.reason == "bad_signature"
    # The debugger never shows the token itself.
    assert "tok_abcdefgh123" not in json.dumps(verdict.debug)


def test_none_preset_accepts_anything():
    assert inbound.verify("none", [], {}, b"anything").ok


def test_comparisons_are_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(inbound.hmac, "compare_digest", spy)
    for preset, secret, headers in (
        ("standard", WHSEC, standard_headers(WHSEC, BODY)),
        ("stripe", "whsec_s3cret_value", stripe_headers("whsec_s3cret_value", BODY)),
        ("github", TEXT_SECRET, github_headers(TEXT_SECRET, BODY)),
        ("shopify", TEXT_SECRET, shopify_headers(TEXT_SECRET, BODY)),
        ("token", "tok_abcdefgh123", {"X-Webhook-Token": "tok_abcdefgh123"}),
    ):
        calls.clear()
        assert inbound.verify(preset, [secret], headers, BODY).ok
        assert calls, f"{preset} did not use hmac.compare_digest"


def test_debugger_records_signed_string_expected_and_received():
    headers = standard_headers(WHSEC, BODY, msg_id="msg_dbg")
    verdict = inbound.verify("standard", [WHSEC], headers, tamper(BODY))
    d = verdict.debug
    assert d["signed"].startswith(f"msg_dbg.{headers['webhook-timestamp']}.")
    assert "1998" in d["signed"]
    assert d["received"] == headers["webhook-signature"].split(",", 1)[1]
    key = base64.b64decode(WHSEC[6:])
    expected = base64.b64encode(
        hmac.new(
            key, f"msg_dbg.{headers['webhook-timestamp']}.".encode() + tamper(BODY), hashlib.sha256
        ).digest()
    ).decode()
    assert d["expected"] == expected


def test_debugger_caps_the_signed_string():
    body = b'{"blob":"' + b"x" * 5000 + b'"}'
    verdict = inbound.verify("github", [TEXT_SECRET], {"X-Hub-Signature-256": "sha256=00"}, body)
    assert len(verdict.debug["signed"]) <= inbound.EXCERPT
    assert verdict.debug["signed_size"] == len(body) and verdict.debug["signed_truncated"]


def test_hint_points_at_a_reserialised_body():
    # The sender signed its object dumped with spaces; what arrived is compact JSON.
    obj = {"id": "evt_1", "amount": 1999}
    signed_body = json.dumps(obj).encode()  # '{"id": "evt_1", "amount": 1999}'
    arrived = json.dumps(obj, separators=(",", ":")).encode()
    verdict = inbound.verify("github", [TEXT_SECRET], github_headers(TEXT_SECRET, signed_body), arrived)
    assert verdict.reason == "bad_signature"
    assert verdict.debug["hint"].startswith("Re-serialised body")


def test_hint_points_at_the_wrong_secret_encoding_for_standard_webhooks():
    # A sender that used the whsec_ text itself as the key instead of base64-decoding it.
    ts = int(time.time())
    mac = hmac.new(WHSEC.encode(), f"msg_1.{ts}.".encode() + BODY, hashlib.sha256).digest()
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    verdict = inbound.verify("standard", [WHSEC], headers, BODY)
    assert verdict.reason == "bad_signature"
    assert verdict.debug["hint"].startswith("Wrong secret encoding")
    assert "base64-decoded" in verdict.debug["hint"]


def test_hint_points_at_the_wrong_secret_encoding_for_stripe():
    # Decoding Stripe's whsec_ secret as base64 (Standard Webhooks style) is a classic mistake.
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    ts = int(time.time())
    mac = hmac.new(base64.b64decode(secret[6:]), f"{ts}.".encode() + BODY, hashlib.sha256).hexdigest()
    verdict = inbound.verify("stripe", [secret], {"Stripe-Signature": f"t={ts},v1={mac}"}, BODY)
    assert verdict.reason == "bad_signature"
    assert verdict.debug["hint"].startswith("Wrong secret encoding")


def test_hint_points_at_a_wrong_preset():
    verdict = inbound.verify("shopify", [TEXT_SECRET], github_headers(TEXT_SECRET, BODY), BODY)
    assert verdict.reason == "missing_signature"
    assert "X-Hub-Signature-256" in verdict.debug["hint"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Stripe-Signature": "garbage"},
        {"Stripe-Signature": "t=abc,v1=00"},
        {"Stripe-Signature": "t=1,v1=\u00e9\u00e9"},
    ],
)
def test_malformed_headers_are_refused_not_crashing(headers):
    verdict = inbound.verify("stripe", ["whsec_abcdefgh"], headers, BODY)
    assert not verdict.ok
    assert verdict.reason in {"malformed_signature", "bad_signature", "stale_timestamp"}


def test_odd_standard_headers_are_refused_not_crashing():
    for headers in (
        {"webhook-id": "x", "webhook-timestamp": "soon", "webhook-signature": "v1,abc"},
        {"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v2,abc"},
        {
            "webhook-id": "x",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,\u00ff\u00fe",
        },
    ):
        assert not inbound.verify("standard", [WHSEC], headers, BODY).ok


def test_secret_rules_per_preset():
    assert inbound.secret_error("standard", inbound.new_secret("standard")) is None
    assert inbound.secret_error("standard", "whsec_not base64") is not None
    assert inbound.secret_error("standard", "plain-secret-value") is not None
    assert inbound.secret_error("github", inbound.new_secret("github")) is None
    assert inbound.secret_error("shopify", "short") is not None
    assert inbound.new_secret("stripe") == ""  # the provider issues it


def test_payload_parsing_falls_back_to_text():
    assert inbound.parse_payload(b'{"a": 1}') == ({"a": 1}, False)
    assert inbound.parse_payload(b"status=shipped&id=9") == ("status=shipped&id=9", True)
    assert inbound.parse_payload(b"NaN")[1] is True  # not valid JSON for receivers
    assert inbound.parse_payload(b"\xff\xfe")[1] is True


def test_bearer_form_verifies_when_the_token_header_is_absent(monkeypatch):
    """The UI says "Authorization: Bearer <token> works too" for any configured token header."""
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(inbound.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    token = "tok_abcdefgh123"
    bearer = {"Authorization": f"Bearer {token}"}
    assert inbound.verify("token", [token], bearer, BODY).ok  # default X-Webhook-Token configured
    assert calls, "the Bearer form must be compared in constant time too"
    assert inbound.verify("token", [token], {"authorization": f"bearer {token}"}, BODY).ok
    assert inbound.verify("token", ["new-token-1234", token], bearer, BODY).used_previous_secret  # overlap
    wrong = inbound.verify("token", [token], {"Authorization": "Bearer tok_abcdefgh124"}, BODY)
    assert not wrong.ok and wrong.reason == "bad_signature"
    assert wrong.debug["signature_header"] == "Authorization" and token not in json.dumps(wrong.debug)
    # Another Authorization scheme is not a token; the configured header wins when both are sent.
    basic = inbound.verify("token", [token], {"Authorization": f"Basic {token}"}, BODY)
    assert not basic.ok and basic.reason == "missing_signature"
    assert "Bearer" in basic.message and "X-Webhook-Token" in basic.message
    both = {"X-Webhook-Token": "tok_wrong_value", "Authorization": f"Bearer {token}"}
    assert not inbound.verify("token", [token], both, BODY).ok


def test_body_that_is_not_utf8_is_kept_base64_encoded():
    for raw in (b"\x00\xff\xfe", gzip_bytes(), bytes(range(256))):
        payload, is_text = inbound.parse_payload(raw)
        assert is_text is True
        assert payload == {"encoding": "base64", "body": base64.b64encode(raw).decode()}
        assert inbound.binary_body(payload, is_text) == raw
    # UTF-8 text (NUL included) stays text; a parsed JSON object is never taken for the wrapper.
    assert inbound.parse_payload("caf\u00e9 \x00".encode()) == ("caf\u00e9 \x00", True)
    lookalike = b'{"encoding": "base64", "body": "AAE="}'
    assert inbound.binary_body(*inbound.parse_payload(lookalike)) is None


def gzip_bytes() -> bytes:
    import gzip

    return gzip.compress(b'{"status": "delivered"}', mtime=0)
