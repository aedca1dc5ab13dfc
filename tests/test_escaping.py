"""Everything a user or a receiver supplies renders as text, never as markup."""

from __future__ import annotations

from sqlalchemy import select

from cbdash.extensions import db
from cbdash.models import Delivery
from tests.conftest import login, make_callback, run_worker
from tests.receiver import Reply

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def _raw_markup_absent(page: str) -> None:
    assert SCRIPT not in page
    assert IMG not in page
    assert "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")


def test_hostile_status_line_and_body_show_as_capped_text(app, client, receiver) -> None:  # type: ignore[no-untyped-def]
    body = IMG.encode() + b"A" * 5000 + b"\x00\xff<b>"
    receiver.reply(Reply(404, body, {"Content-Type": "text/html"}, reason=SCRIPT))
    cb = make_callback(receiver.url())
    login(client)
    htmx = {"HX-Request": "true", "HX-Current-URL": "http://localhost/settings/callbacks"}
    assert client.post(f"/settings/callbacks/{cb.id}/ping", headers=htmx).status_code == 200
    run_worker(app)
    d = db.session.scalar(select(Delivery))

    row = client.get(f"/settings/callbacks/{cb.id}/ping/{d.id}", headers=htmx).get_data(as_text=True)
    _raw_markup_absent(row)
    # The row names the status by its standard phrase; whatever of the receiver's own
    # status line it shows must be text (checked above), never markup.
    assert ">404<" in row
    assert "&lt;img src=x onerror=alert(2)&gt;" in row  # the body, as text
    assert "A" * 300 not in row  # capped on the row

    log = client.get(f"/settings/callbacks/deliveries/{d.id}").get_data(as_text=True)
    _raw_markup_absent(log)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in log
    assert "&lt;img src=x onerror=alert(2)&gt;" in log
    assert "A" * 4097 not in log and "truncated" in log  # the stored excerpt is capped too
    assert "<b>" not in log
    listing = client.get("/settings/callbacks/deliveries").get_data(as_text=True)
    _raw_markup_absent(listing)


def test_hostile_names_urls_and_descriptions_display_literally(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    # Stored without the form's checks, as an import or an older version could have.
    cb = make_callback(
        f"https://hooks.example.com/{SCRIPT}?next={IMG}",
        definition=SCRIPT,
        description=f"{IMG} \"quoted\" 'single'",
        headers={"X-Note": SCRIPT},
    )
    d = make_ping(cb)
    login(client)
    pages = {
        path: client.get(path).get_data(as_text=True)
        for path in (
            "/settings/callbacks",
            "/settings/callbacks?q=script",
            f"/settings/callbacks/{cb.id}",
            f"/settings/callbacks/{cb.id}/edit",
            f"/settings/callbacks/{cb.id}/delete",
            "/settings/callbacks/deliveries",
            f"/settings/callbacks/deliveries/{d.id}",
            "/settings/audit",
        )
    }
    for path, page in pages.items():
        assert client.get(path).status_code == 200, path
        _raw_markup_absent(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/settings/callbacks"]
    fragment = client.get("/settings/callbacks/table", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "callback-" in fragment
    _raw_markup_absent(fragment)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[f"/settings/callbacks/{cb.id}"]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[f"/settings/callbacks/{cb.id}"]
    edit = pages[f"/settings/callbacks/{cb.id}/edit"]
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in edit


def test_hostile_input_echoed_by_a_failed_form_is_escaped(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)
    data = {
        "definition": SCRIPT,
        "url": f'javascript:"><{IMG}',
        "timeout": f'"><{IMG}',
        "headers": f"{SCRIPT}: x",
        "description": IMG,
    }
    response = client.post("/settings/callbacks/new", data=data)
    assert response.status_code == 422
    _raw_markup_absent(response.get_data(as_text=True))


def make_ping(cb):  # type: ignore[no-untyped-def]
    from cbdash.services import delivery

    d = delivery.create_ping(cb)
    db.session.commit()
    return d
