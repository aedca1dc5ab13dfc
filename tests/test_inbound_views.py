"""Settings › System › Inbound webhooks: table conventions, form, roles, secrets, debugger."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import AuditEntry, InboundMessage, InboundSource
from cbdash.services import inbound
from tests.conftest import login
from tests.test_inbound_flow import BODY, make_source, signed

HX = {"HX-Request": "true", "HX-Target": "inbound-panel"}

FORM = {
    "slug": "carrier-ups",
    "preset": "standard",
    "secret": "",
    "token_header": "X-Webhook-Token",
    "definition": "shipment.updated",
    "dedupe_header": "webhook-id",
    "response_status": "200",
    "response_body": '{"received": true}',
    "tolerance": "300",
    "rate_limit": "600",
    "rate_window": "60",
    "description": "UPS tracking updates",
    "active": "active",
}


def audit_actions() -> list[str]:
    rows = db.session.scalars(
        select(AuditEntry).where(AuditEntry.action.like("inbound.%")).order_by(AuditEntry.id)
    )
    return [a.action for a in rows]


def test_sidebar_lists_the_page_and_the_table_shows_each_column(admin):
    source = make_source("pay", dedupe_header="webhook-id", response_status=202, response_body="thanks")
    page = admin.get("/settings/inbound")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'href="/settings/inbound"' in html and "Inbound webhooks" in html
    row = re.search(r'<tr id="inbound-\d+">.*?</tr>', html, re.S).group(0)
    for text in (
        "pay",
        "/hooks/pay",
        "Standard Webhooks",
        inbound.mask(source.secret),
        "payment.confirmed",
        "webhook-id",
        "202",
        "thanks",
        "Active",
        '0<span class="visually-hidden"> accepted',
        '0<span class="visually-hidden"> duplicate',
        '0<span class="visually-hidden"> refused',
    ):
        assert text in row, text
    assert source.secret not in html


def test_tabs_have_counts_and_filter_by_status(admin):
    make_source("one")
    make_source("two")
    make_source("off", active=False)
    html = admin.get("/settings/inbound").get_data(as_text=True)
    counts = dict(re.findall(r'>(All|Active|Inactive) <span class="tab-count">(\d+)</span>', html))
    assert counts == {"All": "3", "Active": "2", "Inactive": "1"}
    inactive = admin.get("/settings/inbound?status=inactive").get_data(as_text=True)
    assert "/hooks/off" in inactive and "/hooks/one" not in inactive


def test_tab_switch_is_an_htmx_fragment_and_a_full_page_without_htmx(admin):
    make_source("one", active=False)
    fragment = admin.get("/settings/inbound/table?status=inactive", headers={"HX-Request": "true"})
    body = fragment.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="inbound-panel"')
    assert "<html" not in body and "/hooks/one" in body
    assert 'hx-push-url="/settings/inbound?status=inactive"' in body
    assert "HX-Request" in fragment.headers.get("Vary", "")
    same_url = admin.get("/settings/inbound?status=inactive", headers=HX)
    assert same_url.get_data(as_text=True).lstrip().startswith('<section id="inbound-panel"')
    # History restores and plain navigation get the whole page.
    restore = admin.get(
        "/settings/inbound?status=inactive", headers={**HX, "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.get_data(as_text=True)
    assert "<html" in admin.get("/settings/inbound?status=inactive").get_data(as_text=True)


def test_search_by_slug_or_definition(admin):
    make_source("stripe-live", definition="payment.confirmed")
    make_source("ups", definition="shipment.updated")
    html = admin.get("/settings/inbound?q=shipment").get_data(as_text=True)
    assert "/hooks/ups" in html and "/hooks/stripe-live" not in html


def test_create_generates_a_standard_webhooks_secret_and_audits(admin):
    response = admin.post("/settings/inbound/new", data=FORM)
    assert response.status_code == 303
    source = db.session.scalar(select(InboundSource))
    assert source.slug == "carrier-ups" and source.secret.startswith("whsec_")
    assert inbound.secret_error("standard", source.secret) is None
    assert audit_actions() == ["inbound.create"]
    assert source.secret not in str(db.session.scalar(select(AuditEntry)).detail)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"slug": "Bad Slug!"}, "slug", "lowercase"),
        ({"definition": "X"}, "definition", "lowercase"),
        ({"preset": "stripe"}, "secret", "Paste the signing secret"),
        ({"preset": "standard", "secret": "not-a-whsec"}, "secret", "whsec_"),
        ({"response_status": "500"}, "response_status", "2xx"),
        ({"response_status": "204"}, "response_body", "no body"),
        ({"tolerance": "5"}, "tolerance", "between 30 and 3600"),
        ({"rate_limit": "lots"}, "rate_limit", "whole number"),
        ({"dedupe_header": "bad header"}, "dedupe_header", "valid header"),
        ({"dedupe_header": "json:"}, "dedupe_header", "for a body field"),
    ],
)
def test_form_errors_show_inline_next_to_their_field(admin, changes, field, message):
    response = admin.post("/settings/inbound/new", data={**FORM, **changes})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    error = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', html)
    assert error and message in error.group(1), html[:3000]
    assert db.session.scalar(select(InboundSource)) is None


def test_dedupe_on_a_json_body_field_is_accepted(admin):
    form = {
        **FORM,
        "preset": "stripe",
        "secret": "whsec_from_stripe_123",
        "dedupe_header": "json:data.object.id",
    }
    assert admin.post("/settings/inbound/new", data=form).status_code == 303
    assert db.session.scalar(select(InboundSource.dedupe_header)) == "json:data.object.id"


def test_slug_must_be_unique(admin):
    make_source("carrier-ups")
    response = admin.post("/settings/inbound/new", data=FORM)
    assert response.status_code == 422
    assert "already used" in response.get_data(as_text=True)


def test_edit_keeps_the_secret_when_left_empty_and_replaces_it_with_overlap(admin):
    source = make_source("pay", preset="github", secret="first-secret-123")
    form = {**FORM, "slug": "pay", "preset": "github", "secret": "", "definition": "payment.confirmed"}
    assert admin.get(f"/settings/inbound/{source.id}/edit").status_code == 200
    assert admin.post(f"/settings/inbound/{source.id}/edit", data=form).status_code == 303
    db.session.refresh(source)
    assert source.secret == "first-secret-123" and source.previous_secret is None
    form["secret"] = "second-secret-456"
    assert admin.post(f"/settings/inbound/{source.id}/edit", data=form).status_code == 303
    db.session.refresh(source)
    assert source.secret == "second-secret-456"
    assert source.verifying_secrets() == ["second-secret-456", "first-secret-123"]
    edits = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "inbound.edit")).all()
    assert "first-secret-123" not in str([e.detail for e in edits])


def test_toggle_with_htmx_swaps_the_panel_and_updates_counts(admin):
    source = make_source("pay")
    response = admin.post(
        f"/settings/inbound/{source.id}/toggle", data={"status": "active"}, headers={"HX-Request": "true"}
    )
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="inbound-panel"')
    assert "/hooks/pay" not in html  # gone from the Active tab
    assert 'Inactive <span class="tab-count">1</span>' in html
    assert "cbdash:notice" in response.headers["HX-Trigger"]
    db.session.refresh(source)
    assert source.active is False and audit_actions() == ["inbound.deactivate"]


def test_toggle_without_javascript_redirects_back_to_the_tab(admin):
    source = make_source("pay")
    response = admin.post(f"/settings/inbound/{source.id}/toggle", data={"status": "inactive"})
    assert response.status_code == 303 and response.headers["Location"].endswith(
        "/settings/inbound?status=inactive"
    )


def test_delete_confirms_without_javascript_then_removes(admin):
    source = make_source("pay")
    confirm = admin.get(f"/settings/inbound/{source.id}/delete")
    assert confirm.status_code == 200 and "Delete this inbound source?" in confirm.get_data(as_text=True)
    assert admin.post(f"/settings/inbound/{source.id}/delete").status_code == 303
    assert db.session.scalar(select(InboundSource)) is None
    assert audit_actions() == ["inbound.delete"]


def test_rotate_keeps_the_old_secret_verifying_and_is_audited(admin, client):
    source = make_source("pay")
    old = source.secret
    response = admin.post(f"/settings/inbound/{source.id}/rotate", headers={"HX-Request": "true"})
    assert response.status_code == 200
    db.session.refresh(source)
    assert source.secret != old and source.previous_secret == old
    assert audit_actions() == ["inbound.rotate"]
    # A message the provider signed with the old secret still gets in during the overlap.
    assert client.post("/hooks/pay", data=BODY, headers=signed(BODY, secret=old)).status_code == 200


def test_rotate_refuses_provider_issued_secrets(admin):
    source = make_source("pay", preset="stripe", secret="whsec_from_stripe_123")
    response = admin.post(f"/settings/inbound/{source.id}/rotate")
    assert response.status_code == 303
    db.session.refresh(source)
    assert source.secret == "whsec_from_stripe_123"


def test_reveal_is_admin_only_and_audited(admin):
    source = make_source("pay")
    response = admin.post(f"/settings/inbound/{source.id}/reveal", headers={"HX-Request": "true"})
    assert source.secret in response.get_data(as_text=True)
    no_js = admin.post(f"/settings/inbound/{source.id}/reveal")
    assert no_js.status_code == 200 and source.secret in no_js.get_data(as_text=True)
    assert audit_actions() == ["inbound.reveal", "inbound.reveal"]


@pytest.mark.parametrize("role", ["support", "viewer"])
def test_support_and_viewers_read_but_cannot_manage(client, role):
    source = make_source("pay")
    login(client, f"{role}@example.com", role)
    html = client.get("/settings/inbound").get_data(as_text=True)
    assert "/hooks/pay" in html
    assert "Add source" not in html and "Rotate" not in html and ">Edit<" not in html
    assert client.get(f"/settings/inbound/{source.id}").status_code == 200
    for method, path in (
        ("get", "/settings/inbound/new"),
        ("post", f"/settings/inbound/{source.id}/toggle"),
        ("post", f"/settings/inbound/{source.id}/rotate"),
        ("post", f"/settings/inbound/{source.id}/reveal"),
        ("post", f"/settings/inbound/{source.id}/delete"),
        ("get", f"/settings/inbound/{source.id}/edit"),
    ):
        assert getattr(client, method)(path).status_code == 403, path
    db.session.refresh(source)
    assert source.active


def test_anonymous_users_are_sent_to_login(client):
    make_source("pay")
    response = client.get("/settings/inbound")
    assert response.status_code in (302, 303)


def test_detail_lists_messages_with_outcome_tabs_and_counts(admin, client):
    source = make_source("pay")
    client.post("/hooks/pay", data=BODY, headers=signed(BODY, "m1"))
    client.post("/hooks/pay", data=BODY, headers=signed(BODY, "m1"))
    client.post("/hooks/pay", data=BODY + b" ", headers=signed(BODY, "m2"))
    html = admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True)
    counts = dict(re.findall(r'>(All|Accepted|Duplicate|Refused) <span class="tab-count">(\d+)</span>', html))
    assert counts == {"All": "3", "Accepted": "1", "Duplicate": "1", "Refused": "1"}
    assert "bad_signature" in html
    refused = admin.get(
        f"/settings/inbound/{source.id}/messages?outcome=refused", headers={"HX-Request": "true"}
    )
    fragment = refused.get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="messages-panel"')
    assert "bad_signature" in fragment and ">accepted<" not in fragment
    table = admin.get("/settings/inbound").get_data(as_text=True)
    for outcome in ("accepted", "duplicate", "refused"):
        assert f'1<span class="visually-hidden"> {outcome}</span>' in table


def test_debugger_shows_admins_signed_expected_received_and_hint(admin, client):
    source = make_source("pay")
    client.post("/hooks/pay", data=b'{"a":1}', headers=signed(b'{"a": 1}', "m9"))
    msg = db.session.scalar(select(InboundMessage))
    html = admin.get(f"/settings/inbound/{source.id}/messages/{msg.id}").get_data(as_text=True)
    assert "Signature debugger" in html
    assert "m9." in html  # the signed string starts with id.timestamp.
    assert msg.debug["expected"] in html and msg.debug["received"] in html
    assert "Re-serialised body" in html
    assert "Webhook-Signature: ••••••" in html


def test_debugger_is_hidden_from_support(client):
    source = make_source("pay")
    client.post("/hooks/pay", data=BODY, headers={"webhook-id": "x"})
    msg = db.session.scalar(select(InboundMessage))
    login(client, "support@example.com", "support")
    html = client.get(f"/settings/inbound/{source.id}/messages/{msg.id}").get_data(as_text=True)
    assert "shown to admins" in html
    assert "Expected" not in html


def test_message_of_another_source_is_404(admin):
    a = make_source("aaa")
    b = make_source("bbb")
    msg = InboundMessage(source_id=a.id, outcome="refused", status_code=401, headers={})
    db.session.add(msg)
    db.session.commit()
    assert admin.get(f"/settings/inbound/{b.id}/messages/{msg.id}").status_code == 404
    assert admin.get("/settings/inbound/999").status_code == 404


def test_user_supplied_text_is_escaped(admin, client):
    source = make_source("pay", description="<script>alert(1)</script>", response_body="<b>ok</b>")
    client.post("/hooks/pay", data=b"<img src=x onerror=alert(1)>", headers={"X-Evil": "<script>"})
    msg = db.session.scalar(select(InboundMessage))
    pages = [
        admin.get("/settings/inbound").get_data(as_text=True),
        admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True),
        admin.get(f"/settings/inbound/{source.id}/messages/{msg.id}").get_data(as_text=True),
    ]
    for html in pages:
        assert "<script>" not in html and "<img src=x" not in html and "<b>ok</b>" not in html


class TestWithCsrf:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"WTF_CSRF_ENABLED": True}

    def test_hook_is_csrf_exempt_but_settings_forms_are_not(self, app, client):
        make_source("pay")
        assert client.post("/hooks/pay", data=BODY, headers=signed(BODY)).status_code == 200
        from tests.conftest import create_user

        create_user()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
        assert token, page[:2000]
        client.post(
            "/login",
            data={"email": "admin@example.com", "password": "password-123", "csrf_token": token.group(1)},
        )
        source = db.session.scalar(select(InboundSource))
        assert client.post(f"/settings/inbound/{source.id}/toggle").status_code == 400
        db.session.refresh(source)
        assert source.active


def test_page_shows_requests_rate_limited_today(admin, client):
    source = make_source("pay", rate_limit=1, rate_window=60)
    for i in range(3):
        client.post("/hooks/pay", data=BODY, headers=signed(BODY, f"rl{i}"))
    assert "2 rate-limited today" in admin.get("/settings/inbound").get_data(as_text=True)
    assert "2 answered 429 today" in admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True)


def test_fragment_urls_opened_directly_give_the_full_page(admin, client):
    """Reload, bookmark or a pushed search URL: never a bare, unstyled fragment."""
    source = make_source("one", active=False)
    client.post("/hooks/one", data=BODY, headers=signed(BODY))  # one refusal (inactive)
    table = admin.get("/settings/inbound/table?status=inactive&q=one")
    assert table.status_code == 302
    assert table.headers["Location"] == "/settings/inbound?status=inactive&q=one"
    page = admin.get("/settings/inbound/table?status=inactive&q=one", follow_redirects=True)
    html = page.get_data(as_text=True)
    assert "<html" in html and "/hooks/one" in html and 'href="/static/app.css' in html.replace("'", '"')
    messages = admin.get(f"/settings/inbound/{source.id}/messages?outcome=refused&page=1")
    assert messages.status_code == 302
    assert messages.headers["Location"] == f"/settings/inbound/{source.id}?outcome=refused"
    html = admin.get(messages.headers["Location"]).get_data(as_text=True)
    assert "<html" in html and "inactive" in html
    # htmx still gets the fragment, and the address bar the page URL.
    fragment = admin.get("/settings/inbound/table?q=one", headers={"HX-Request": "true"})
    assert fragment.get_data(as_text=True).lstrip().startswith('<section id="inbound-panel"')
    assert fragment.headers["HX-Push-Url"] == "/settings/inbound?q=one"
    restore = admin.get(
        "/settings/inbound/table?q=one", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert restore.status_code == 302


@pytest.mark.parametrize(
    ("preset", "secret", "says", "never"),
    [
        ("none", "", "anyone who knows the URL can post", "URL and secret"),
        ("token", "", "Authorization: Bearer", "URL and secret"),
        ("standard", "", "the secret cbdash generated", "no secret"),
        ("shopify", "shpss_client_secret_123", "the secret the provider issued", "no secret"),
    ],
)
def test_created_message_is_worded_per_preset(admin, preset, secret, says, never):
    form = {**FORM, "preset": preset, "secret": secret, "dedupe_header": ""}
    response = admin.post("/settings/inbound/new", data=form, follow_redirects=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Inbound source carrier-ups created." in html
    assert says in html and never not in html


def test_reveal_turns_into_hide_like_the_callback_secret(admin):
    source = make_source("pay")
    hx = {"HX-Request": "true"}
    page = admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True)
    row = re.search(rf'<div id="inbound-secret-{source.id}".*?</div>', page, re.S).group(0)
    assert ">Reveal</button>" in row and source.secret not in page  # the button is part of the row
    shown = admin.post(f"/settings/inbound/{source.id}/reveal", headers=hx).get_data(as_text=True)
    assert source.secret in shown and ">Hide</a>" in shown and "Reveal" not in shown
    assert f'hx-get="/settings/inbound/{source.id}/secret"' in shown
    assert f'hx-target="#inbound-secret-{source.id}"' in shown
    hidden = admin.get(f"/settings/inbound/{source.id}/secret", headers=hx).get_data(as_text=True)
    assert source.secret not in hidden and inbound.mask(source.secret) in hidden
    assert ">Reveal</button>" in hidden and "Hide" not in hidden
    # Without JavaScript: the page with the secret and a Hide link back to the masked page.
    no_js = admin.post(f"/settings/inbound/{source.id}/reveal").get_data(as_text=True)
    assert (
        source.secret in no_js and f'href="/settings/inbound/{source.id}"' in no_js and ">Hide</a>" in no_js
    )
    assert admin.get(f"/settings/inbound/{source.id}/secret").status_code == 302


def test_message_page_shows_a_body_that_is_not_utf8_recoverably(admin, client):
    import base64

    source = make_source("raw", preset="none", secret="")
    raw = b"\x00\xff\xfe"
    assert client.post("/hooks/raw", data=raw).status_code == 200
    msg = db.session.scalar(select(InboundMessage))
    html = admin.get(f"/settings/inbound/{source.id}/messages/{msg.id}").get_data(as_text=True)
    assert "not UTF-8 text" in html
    assert "\\x00\\xff\\xfe" in html  # the bytes, escaped
    assert base64.b64encode(raw).decode() in html  # the stored body carries them exactly
    assert "\ufffd" not in html
    listing = admin.get(f"/settings/inbound/{source.id}").get_data(as_text=True)
    assert "base64-encoded: not UTF-8" in listing
