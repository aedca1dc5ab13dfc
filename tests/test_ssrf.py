"""The SSRF guard: the address policy, save-time refusals and send-time blocking."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlalchemy import func, select

from cbdash.constants import ErrorClass
from cbdash.extensions import db
from cbdash.models import Attempt, Callback, Delivery
from cbdash.services import ssrf
from tests.conftest import login, make_callback, run_worker
from tests.receiver import Reply

EMPTY = ssrf.TargetPolicy.from_setting("")
EVENT = {"definition": "order.created", "payload": {}}

# Every spelling from issue 3, plus the numeric IPv4 forms and CGNAT. Each must be refused
# with an empty allowlist.
BLOCKED_ADDRESSES = [
    "http://127.0.0.1:6379/",
    "http://localhost:8080/hook",
    "http://10.0.0.5/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://0.0.0.0:5000/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://172.16.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::]/",
    "http://[2002:7f00:1::]/",
    "http://[2001::7f00:1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://[::ffff:0:127.0.0.1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://0x7f000001/",
    "http://[fec0::1]/",
    "http://100.100.100.200/",
    "http://foo.localhost/",
    "http://LOCALHOST./",
    "http://metadata.google.internal/computeMetadata/v1/",
]
INVALID_URLS = [
    "ftp://example.com/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "http://.example.com/",
    "http://a..b.example/",
    "http://" + "a" * 64 + ".example.com/",
    "http://evil.example\\@127.0.0.1/",
    "http://[fe80::1%25eth0]/",
    "http://1.2.3.4.5/",
    "http://example.com:0/",
    "http:///path-only",
    "http://exa mple.com/",
    "",
]


def no_dns(host: str, port: int) -> list[tuple]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    """A resolver that answers every name with ``addresses``."""

    def resolver(host: str, port: int) -> list[tuple]:
        out = []
        for a in addresses:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (a, port)))
        return out

    return resolver


@pytest.mark.parametrize("url", BLOCKED_ADDRESSES)
def test_private_and_special_addresses_are_refused_with_the_allowlist_hint(url: str) -> None:
    with pytest.raises(ssrf.TargetError) as err:
        ssrf.check_target(url, EMPTY, resolver=no_dns)
    assert err.value.error_class == ErrorClass.BLOCKED
    assert "CBDASH_ALLOWED_TARGETS" in err.value.message


@pytest.mark.parametrize("url", INVALID_URLS)
def test_malformed_urls_and_other_schemes_are_refused_as_invalid(url: str) -> None:
    with pytest.raises(ssrf.TargetError) as err:
        ssrf.check_target(url, EMPTY, resolver=resolves_to("93.184.216.34"))
    assert err.value.error_class == ErrorClass.INVALID_URL
    assert err.value.message


def test_numeric_ipv4_spellings_name_the_real_address() -> None:
    with pytest.raises(ssrf.TargetError) as err:
        ssrf.check_target("http://2130706433/", EMPTY)
    assert "127.0.0.1" in err.value.message and "loopback" in err.value.message
    assert ssrf.parse_ip_literal("0x7f.0.0.1") == ssrf.parse_ip_literal("0177.0.0.1")


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(ssrf.TargetError) as err:
        ssrf.check_target("https://hooks.partner.example/x", EMPTY, resolver=resolves_to("10.1.2.3"))
    assert "10.1.2.3" in err.value.message and "private" in err.value.message


def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    resolver = resolves_to("93.184.216.34", "::ffff:169.254.169.254")
    with pytest.raises(ssrf.TargetError):
        ssrf.check_target("https://mixed.example/", EMPTY, resolver=resolver)


def test_a_name_resolving_to_public_addresses_is_accepted() -> None:
    ssrf.check_target(
        "https://hooks.partner.example/x", EMPTY, resolver=resolves_to("93.184.216.34", "2606:2800::1")
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/",
        "http://134744072/",  # 8.8.8.8 as one number
        "https://[2606:4700::1111]/",
        "https://[::ffff:8.8.8.8]/",
        "https://[64:ff9b::808:808]/",
        "https://[2002:808:808::1]/",
        "https://hooks.example.com:8443/path?x=1",
    ],
)
def test_public_addresses_are_accepted_in_every_spelling(url: str) -> None:
    # The guard must not turn into "refuse everything unusual".
    ssrf.check_target(url, EMPTY, resolver=resolves_to("93.184.216.34"))


def test_a_name_that_does_not_resolve_yet_is_accepted_on_save() -> None:
    # Every attempt resolves and checks again, so this is only a deferred decision.
    ssrf.check_target("https://not-deployed-yet.example/", EMPTY, resolver=no_dns)


def test_localhost_is_refused_through_the_system_resolver_too() -> None:
    addresses = ssrf.resolve("localhost", 80, 2.0)  # /etc/hosts
    assert addresses and all(ip.is_loopback for _f, ip in addresses)
    with pytest.raises(ssrf.TargetError):
        ssrf.check_addresses("some-alias", addresses, EMPTY)
    with pytest.raises(ssrf.TargetError):
        ssrf.check_target("http://localhost:8080/hook", EMPTY)


def test_allowlist_opens_networks_and_host_names() -> None:
    policy = ssrf.TargetPolicy.from_setting("10.0.0.0/8, crm.internal, .corp.example, 127.0.0.1")
    ssrf.check_target("http://10.0.0.5/", policy)
    ssrf.check_target("http://127.0.0.1:6379/", policy)
    ssrf.check_target("http://crm.internal/hook", policy, resolver=resolves_to("192.168.7.7"))
    ssrf.check_target("http://a.corp.example/hook", policy, resolver=resolves_to("172.16.0.9"))
    with pytest.raises(ssrf.TargetError):
        ssrf.check_target("http://192.168.1.1/", policy)
    with pytest.raises(ssrf.TargetError):  # a mapped spelling is not the allowed IPv4 network
        ssrf.check_target("http://[::ffff:10.0.0.5]/", ssrf.TargetPolicy.from_setting("::1/128"))


# Save time: the form and the API refuse each spelling with an empty allowlist.


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_TARGETS": ""}


def _callbacks() -> int:
    return db.session.scalar(select(func.count()).select_from(Callback)) or 0


def test_form_refuses_each_spelling_and_stores_nothing(app, client) -> None:  # type: ignore[no-untyped-def]
    login(client)  # once: signing in costs a password hash
    wrong = []
    for url in BLOCKED_ADDRESSES + INVALID_URLS[:6]:
        response = client.post(
            "/settings/callbacks/new",
            data={"definition": "order.created", "url": url, "timeout": "5", "active": "active"},
        )
        page = response.get_data(as_text=True)
        hint_ok = "CBDASH_ALLOWED_TARGETS" in page or url not in BLOCKED_ADDRESSES
        if response.status_code != 422 or 'class="field-error"' not in page or not hint_ok:
            wrong.append((url, response.status_code))
    assert wrong == []
    assert _callbacks() == 0


@pytest.mark.parametrize("url", BLOCKED_ADDRESSES + INVALID_URLS[:6])
def test_api_refuses_each_spelling_and_stores_nothing(app, client, auth, url: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/v1/callbacks", json={"definition": "order.created", "url": url}, headers=auth
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "url" in error["fields"]
    if url in BLOCKED_ADDRESSES:
        assert "CBDASH_ALLOWED_TARGETS" in error["fields"]["url"]
    assert _callbacks() == 0


def test_api_edit_to_a_private_url_is_refused(app, client, auth) -> None:  # type: ignore[no-untyped-def]
    cb = make_callback("https://hooks.example.com/x")
    response = client.patch(
        f"/api/v1/callbacks/{cb.id}", json={"url": "http://169.254.169.254/"}, headers=auth
    )
    assert response.status_code == 400
    db.session.expire_all()
    assert db.session.get(Callback, cb.id).url == "https://hooks.example.com/x"


# Send time: a canary listener proves that no connection is made.


class Canary:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
            conn.close()

    def settle(self) -> int:
        time.sleep(0.2)  # a connection in flight would be accepted by now
        return self.connections

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def canary():  # type: ignore[no-untyped-def]
    c = Canary()
    yield c
    c.close()


def _only_attempt() -> Attempt:
    attempts = list(db.session.scalars(select(Attempt)))
    assert len(attempts) == 1
    return attempts[0]


def test_ping_to_a_callback_no_longer_allowed_is_blocked_without_connecting(app, client, canary) -> None:  # type: ignore[no-untyped-def]
    # Stored while 127.0.0.1 was allowed; this app's allowlist is empty now.
    cb = make_callback(f"http://127.0.0.1:{canary.port}/hook")
    login(client)
    assert client.post(f"/settings/callbacks/{cb.id}/ping").status_code == 303
    run_worker(app)
    db.session.expire_all()
    attempt = _only_attempt()
    assert attempt.error_class == ErrorClass.BLOCKED
    assert "loopback" in attempt.error_message
    assert db.session.scalar(select(Delivery.status)) == "failed"
    assert canary.settle() == 0


def test_event_delivery_to_a_callback_no_longer_allowed_is_blocked(app, client, auth, canary) -> None:  # type: ignore[no-untyped-def]
    make_callback(f"http://127.0.0.1:{canary.port}/hook")
    response = client.post(
        "/api/v1/events", json={"definition": "order.created", "payload": {}}, headers=auth
    )
    assert response.status_code == 202
    run_worker(app)
    db.session.expire_all()
    assert _only_attempt().error_class == ErrorClass.BLOCKED
    assert canary.settle() == 0


def test_a_name_that_resolves_privately_at_send_time_is_blocked(
    app, client, auth, canary, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Saved while the name pointed elsewhere (DNS rebinding): the attempt re-resolves.
    monkeypatch.setattr(ssrf, "system_resolver", resolves_to("127.0.0.1"))
    make_callback(f"http://rebind.example:{canary.port}/hook")
    client.post("/api/v1/events", json=EVENT, headers=auth)
    run_worker(app)
    db.session.expire_all()
    attempt = _only_attempt()
    assert attempt.error_class == ErrorClass.BLOCKED
    assert "rebind.example resolves to 127.0.0.1" in attempt.error_message
    assert canary.settle() == 0


class TestWithLoopbackAllowed:
    @pytest.fixture
    def app_config(self) -> dict:
        return {"ALLOWED_TARGETS": "127.0.0.1/32"}

    def test_the_canary_does_see_an_allowed_delivery(self, app, client, auth, canary) -> None:  # type: ignore[no-untyped-def]
        # Control: proves the canary would notice a connection in the tests above.
        make_callback(f"http://127.0.0.1:{canary.port}/hook")
        client.post("/api/v1/events", json=EVENT, headers=auth)
        run_worker(app)
        db.session.expire_all()
        assert _only_attempt().status_code == 200
        assert canary.settle() == 1

    def test_a_redirect_to_a_private_address_is_not_followed(self, app, client, receiver, canary) -> None:  # type: ignore[no-untyped-def]
        target = f"http://127.0.0.1:{canary.port}/internal"
        receiver.reply(Reply(302, b"", {"Location": target, "Connection": "close"}))
        cb = make_callback(receiver.url())
        login(client)
        client.post(f"/settings/callbacks/{cb.id}/ping")
        run_worker(app)
        db.session.expire_all()
        attempt = _only_attempt()
        assert attempt.error_class == ErrorClass.REDIRECT
        assert attempt.location == target
        assert len(receiver.requests) == 1
        assert canary.settle() == 0
