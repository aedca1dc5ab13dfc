"""The create/edit callback form: inline errors next to their field, values kept, warnings."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import Callback
from tests.conftest import make_callback
from tests.htmlq import parse

NEW = "/settings/callbacks/new"
VALID = {
    "definition": "order.created",
    "url": "https://erp.example.com/hooks/orders",
    "timeout": "5",
    "active": "active",
    "description": "",
    "headers": "",
    "retry_schedule": "",
}


@pytest.fixture
def app_config() -> dict:
    return {"MAX_TIMEOUT": 20}


def field_errors(html: bytes) -> dict[str, str]:
    """Each invalid field's error message, read from inside that field's own block."""
    doc = parse(html)
    errors = {}
    for block in doc.find_all("div", class_="field-invalid"):
        name = block.attrs["id"].removeprefix("field-")
        control = block.find(id=name)
        error = block.find("p", class_="field-error")
        assert control is not None and error is not None
        # The message is wired to its control for screen readers.
        assert control.attrs.get("aria-invalid") == "true"
        assert f"{name}-error" in control.attrs["aria-describedby"].split()
        assert error.attrs["id"] == f"{name}-error"
        errors[name] = error.text.lstrip("⚠ ")
    return errors


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("definition", "", "Enter a definition name."),
        ("definition", "   ", "Enter a definition name."),
        ("definition", "Order Created", "Use 3–100 lowercase letters"),
        ("definition", "ab", "Use 3–100 lowercase letters"),
        ("definition", "x" * 101, "Use 3–100 lowercase letters"),
        ("url", "", "Enter the URL to call."),
        ("url", "ftp://files.example.com/drop", "http"),
        ("url", "javascript:alert(1)", "http"),
        ("url", "not a url", ""),
        ("timeout", "0", "Choose between 1 and 20 seconds."),
        ("timeout", "21", "Choose between 1 and 20 seconds."),
        ("timeout", "-3", "Choose between 1 and 20 seconds."),
        ("timeout", "five", "Enter a whole number of seconds."),
        ("timeout", "", "Enter a whole number of seconds."),
        ("headers", "X-Api-Key secret", "is not a “Name: value” line."),
        ("headers", "Bad Name: x", "is not a valid header name."),
        ("headers", "webhook-signature: forged", "is set by cbdash and cannot be overridden."),
        ("retry_schedule", "5,soon", "Seconds between attempts, comma-separated"),
        ("active", "maybe", "Status must be active or inactive."),
    ],
)
def test_each_bad_field_gets_its_own_inline_error(admin, field, value, message):
    r = admin.post(NEW, data={**VALID, field: value})
    assert r.status_code == 422
    errors = field_errors(r.data)
    assert list(errors) == [field]
    assert message in errors[field]
    assert db.session.scalar(select(Callback.id)) is None


def test_several_errors_show_at_once_with_a_summary_linking_to_each(admin):
    r = admin.post(NEW, data={**VALID, "definition": "", "url": "ftp://x.example", "timeout": "0"})
    assert r.status_code == 422
    assert set(field_errors(r.data)) == {"definition", "url", "timeout"}
    summary = parse(r.data).find("div", class_="flash-danger")
    assert "3 fields need attention" in summary.text
    assert {a.attrs["href"] for a in summary.find_all("a")} == {"#definition", "#url", "#timeout"}


def test_values_are_kept_after_an_error(admin):
    data = {
        **VALID,
        "definition": "BAD NAME",
        "url": "http://erp.example.com/<x>",
        "timeout": "12",
        "active": "inactive",
        "description": "Sends orders",
        "headers": "X-Api-Key: abc",
        "retry_schedule": "5,60",
    }
    doc = parse(admin.post(NEW, data=data).data)
    assert doc.by_id("definition").attrs["value"] == "BAD NAME"
    assert doc.by_id("url").attrs["value"] == "http://erp.example.com/<x>"
    assert doc.by_id("timeout").attrs["value"] == "12"
    assert doc.by_id("active").find("option", selected="").attrs["value"] == "inactive"
    assert doc.by_id("description").text == "Sends orders"
    assert doc.by_id("headers").text == "X-Api-Key: abc"
    assert doc.by_id("retry_schedule").attrs["value"] == "5,60"


def test_http_url_shows_the_https_recommended_warning(admin):
    doc = parse(admin.post(NEW, data={**VALID, "url": "http://erp.example.com/hook", "timeout": "0"}).data)
    warning = doc.by_id("url-http-warning")
    assert "HTTPS recommended" in warning.text and "hidden" not in warning.attrs
    # The URL input names the note, so static/app.js can show or hide it as the user types.
    assert doc.by_id("url").attrs["data-http-warning"] == "url-http-warning"
    doc = parse(admin.get(NEW).data)
    assert "hidden" in doc.by_id("url-http-warning").attrs


def test_http_urls_are_allowed(admin):
    r = admin.post(NEW, data={**VALID, "url": "http://erp.example.com/hook"})
    assert r.status_code == 303
    assert db.session.scalar(select(Callback.url)) == "http://erp.example.com/hook"


def test_form_offers_catalogue_suggestions(admin):
    doc = parse(admin.get(NEW).data)
    assert doc.by_id("definition").attrs["list"] == "definition-catalogue"
    options = [o.attrs["value"] for o in doc.by_id("definition-catalogue").find_all("option")]
    assert "redirect_cart_payment" in options and "order.created" in options
    # Without JavaScript each catalogue entry is a link that pre-fills the form.
    link = doc.find("a", data_value="order.created")
    assert link.attrs["href"] == "/settings/callbacks/new?definition=order.created"
    prefilled = parse(admin.get(link.attrs["href"]).data)
    assert prefilled.by_id("definition").attrs["value"] == "order.created"


def test_valid_form_creates_and_goes_to_the_detail_page(admin):
    r = admin.post(NEW, data={**VALID, "headers": "X-Api-Key: abc\n\nX-Tenant: 7", "retry_schedule": "5, 60"})
    assert r.status_code == 303
    cb = db.session.scalars(select(Callback)).one()
    assert r.headers["Location"] == f"/settings/callbacks/{cb.id}"
    assert (cb.definition, cb.timeout, cb.active) == ("order.created", 5, True)
    assert cb.headers == {"X-Api-Key": "abc", "X-Tenant": "7"}
    assert cb.retry_schedule == "5,60"
    assert cb.secret.startswith("whsec_")


def test_several_callbacks_may_share_a_definition_name(admin):
    for url in ("https://a.example.com/hook", "https://b.example.com/hook"):
        assert admin.post(NEW, data={**VALID, "url": url}).status_code == 303
    assert db.session.scalars(select(Callback.definition)).all() == ["order.created", "order.created"]


def test_inactive_on_create_records_a_manual_reason(admin):
    admin.post(NEW, data={**VALID, "active": "inactive"})
    cb = db.session.scalars(select(Callback)).one()
    assert cb.active is False and cb.inactive_reason == "manual"


def test_edit_form_is_prefilled_and_shows_errors_inline(admin):
    cb = make_callback("https://erp.example.com/hook", headers={"X-Api-Key": "abc"})
    doc = parse(admin.get(f"/settings/callbacks/{cb.id}/edit").data)
    assert doc.by_id("definition").attrs["value"] == "order.created"
    assert doc.by_id("headers").text == "X-Api-Key: abc"
    assert doc.find("button", type="submit", class_="btn-primary").text == "Save changes"
    r = admin.post(f"/settings/callbacks/{cb.id}/edit", data={**VALID, "timeout": "99"})
    assert r.status_code == 422
    assert field_errors(r.data) == {"timeout": "Choose between 1 and 20 seconds."}
    db.session.refresh(cb)
    assert cb.timeout == 5


def test_html_in_submitted_values_is_escaped_when_redisplayed(admin):
    r = admin.post(
        NEW, data={**VALID, "definition": '"><script>alert(1)</script>', "description": "</textarea><b>x"}
    )
    body = r.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body and "</textarea><b>x" not in body
    assert "&lt;script&gt;" in body
