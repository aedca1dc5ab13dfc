"""The HTTP transport against slow, silent, redirecting and flooding receivers on 127.0.0.1."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from cbdash.services import ssrf, transport
from tests.rawservers import ChunkedForever, DripHeaders, HugeBody, RawServer, SilentServer, closed_port
from tests.receiver import Reply

POLICY = ssrf.TargetPolicy.from_setting("127.0.0.1/32")


def post(url: str, timeout: float, **kw) -> tuple[transport.Response, float]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    result = transport.post(url, b'{"a":1}', {"Content-Type": "application/json"}, timeout, POLICY, **kw)
    return result, time.monotonic() - t0


@pytest.mark.slow
def test_drip_body_is_cut_at_the_timeout(receiver):
    # 200 headers, then one byte per second for 60 s: the whole attempt is bounded.
    receiver.reply(Reply(200, body=b"x" * 60, drip=1.0))
    result, took = post(receiver.url(), 5)
    assert result.error_class == "timeout"
    assert result.status_code == 200  # the headers came; the body did not finish
    assert 4.8 <= took <= 7.0, took  # about 5 s, never more than 7
    assert result.duration_ms <= 6000


@pytest.mark.slow
def test_dripping_headers_are_cut_at_the_timeout():
    server = DripHeaders(interval=0.5).start()
    try:
        result, took = post(server.url(), 3)
    finally:
        server.stop()
    assert result.error_class == "timeout"
    assert 2.8 <= took <= 4.0, took


@pytest.mark.slow
def test_tls_listener_that_never_answers_times_out():
    server = SilentServer().start()
    try:
        result, took = post(server.url(scheme="https"), 3)
    finally:
        server.stop()
    assert result.error_class == "timeout", result.error_message
    assert "TLS" in result.error_message or "handshake" in result.error_message.lower()
    assert 2.8 <= took <= 4.0, took


@pytest.mark.slow
def test_receiver_that_waits_longer_than_the_timeout(receiver):
    receiver.reply(Reply(200, delay=10))
    result, took = post(receiver.url(), 3)
    assert result.error_class == "timeout"
    assert 2.8 <= took <= 4.0, took


@pytest.mark.slow
def test_slow_receiver_within_the_timeout_succeeds(receiver):
    # No hidden shorter timeout anywhere: 2 s out of 5 is fine.
    receiver.reply(Reply(200, body=b"late but fine", delay=2))
    result, took = post(receiver.url(), 5)
    assert result.ok, result.error_message
    assert result.body == b"late but fine"
    assert 1.9 <= took < 3.5


def test_closed_port_is_a_connect_error():
    result, took = post(f"http://127.0.0.1:{closed_port()}/hook", 5)
    assert result.error_class == "connect"
    assert took < 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(receiver, status):
    receiver.reply(Reply(status, body=b"", headers={"Location": receiver.url("/elsewhere")}))
    result, _ = post(receiver.url("/hook"), 5)
    assert [r.path for r in receiver.wait_for(1, 2)] == ["/hook"]
    time.sleep(0.1)
    assert [r.path for r in receiver.requests] == ["/hook"]  # nothing reached /elsewhere
    assert result.error_class == "redirect"
    assert result.status_code == status
    assert result.location == receiver.url("/elsewhere")
    assert not result.ok


def test_blocked_address_never_connects(receiver):
    result = transport.post(receiver.url(), b"{}", {}, 5, ssrf.TargetPolicy.from_setting(""))
    assert result.error_class == "blocked"
    assert receiver.requests == []


@pytest.mark.slow
def test_fifty_megabyte_body_reads_only_64_kib():
    size = 50 * 1024 * 1024
    server = HugeBody(size).start()
    tracemalloc.start()
    try:
        result, took = post(server.url(), 10)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        time.sleep(0.2)
        server.stop()
    assert result.ok
    assert len(result.body) == 64 * 1024
    assert result.truncated
    assert result.body_size == size  # the declared total is reported
    assert peak < 4 * 1024 * 1024, peak  # memory stays flat: nothing near 50 MB was held
    assert server.bytes_sent < size  # the client stopped reading and hung up
    assert took < 5


@pytest.mark.slow
def test_endless_chunked_body_reads_only_64_kib():
    server = ChunkedForever(max_seconds=20).start()
    tracemalloc.start()
    try:
        result, took = post(server.url(), 10)
        _current, peak = tracemalloc.get_traced_memory()
        assert server.finished.wait(5), "the client never hung up"
    finally:
        tracemalloc.stop()
        server.stop()
    assert result.ok
    assert len(result.body) == 64 * 1024
    assert result.truncated
    assert result.body_size >= 64 * 1024
    assert peak < 4 * 1024 * 1024, peak
    assert took < 5
    assert server.connections == 1


def test_small_body_is_read_whole(receiver):
    receiver.reply(Reply(200, body=b"\x00\xff not utf-8"))
    result, _ = post(receiver.url(), 5)
    assert result.ok
    assert result.body == b"\x00\xff not utf-8"
    assert not result.truncated
    assert result.body_size == len(b"\x00\xff not utf-8")


def test_connection_refused_is_explained_in_one_sentence():
    import socket

    from cbdash.services import ssrf, transport

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = transport.post(
        f"http://127.0.0.1:{port}/hook", b"{}", {}, 3, ssrf.TargetPolicy.from_setting("127.0.0.1/32")
    )
    assert result.error_class == "connect"
    assert result.error_message == (
        f"Connection to 127.0.0.1:{port} failed: connection refused (nothing is listening on that port)."
    )


class _ShortBody(RawServer):
    """Promises 100 bytes, sends 3 and hangs up."""

    def handle(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        conn.close()


class _HangUp(RawServer):
    """Reads the request, waits, hangs up without a word."""

    def handle(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.read_request(conn)
        time.sleep(1.5)
        conn.close()


POLICY = ssrf.TargetPolicy.from_setting("127.0.0.1/32")


def test_a_cut_short_body_is_explained_without_library_reprs():
    server = _ShortBody().start()
    try:
        result = transport.post(server.url(), b"{}", {}, 3, POLICY)
    finally:
        server.stop()
    assert result.error_class == "connect" and result.status_code == 200
    assert result.error_message == (
        "The receiver closed the connection before sending its whole response body (3 of 100 bytes)."
    )


def test_a_timeout_message_names_the_phase_and_nothing_of_python():
    server = _HangUp().start()
    try:
        result = transport.post(server.url(), b"{}", {}, 1, POLICY)
    finally:
        server.stop()
    assert result.error_class == "timeout"
    assert (
        result.error_message == "No complete answer within 1 s: timed out waiting for the response headers."
    )


def test_a_failed_dns_lookup_is_explained_in_words():
    import socket

    def nxdomain(host, port):  # type: ignore[no-untyped-def]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ssrf.TargetError) as caught:
        ssrf.resolve("shop.example.invalid", 443, 2, resolver=nxdomain)
    assert caught.value.message == "DNS lookup for shop.example.invalid failed: no such host name."
    assert "Errno" not in caught.value.message
