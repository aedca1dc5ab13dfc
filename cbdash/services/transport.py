"""The HTTP transport every delivery, ping and invocation goes through.

- Connects only to the address the SSRF guard checked (``GuardedConnection``).
- One deadline bounds the whole attempt -- DNS, connect, TLS, headers and
  body -- even against a receiver that drips bytes: a watchdog timer shuts the
  socket down when the deadline passes, because no client timeout bounds a
  slow body's total time by itself.
- Never follows redirects; reads at most ``read_limit`` response bytes.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..constants import ErrorClass
from . import ssrf

USER_AGENT = "cbdash/0.1 (+https://github.com/cbdash)"
MAX_HEADER_VALUE = 1024
MAX_HEADERS = 64

_local = threading.local()
log = logging.getLogger(__name__)


class _Watchdog:
    """One thread per process that cuts attempts at their deadlines.

    A ``threading.Timer`` per attempt started a thread per delivery, which cost
    more CPU and latency than a fast delivery itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()
        self._pid: int | None = None

    def schedule(self, deadline: float, action: Callable[[], None]) -> int:
        """Run ``action`` at ``deadline`` (time.monotonic) unless cancelled first."""
        with self._cond:
            if self._pid != os.getpid():  # first use, or a forked child: start our own thread
                self._pid = os.getpid()
                self._heap.clear()
                self._cancelled.clear()
                thread = threading.Thread(target=self._run, args=(self._pid,), daemon=True)
                thread.name = "cbdash-watchdog"
                thread.start()
            key = next(self._seq)
            heapq.heappush(self._heap, (deadline, key, action))
            if self._heap[0][1] == key:
                self._cond.notify()
            return key

    def cancel(self, key: int) -> None:
        with self._cond:
            self._cancelled.add(key)

    def _run(self, pid: int) -> None:
        while True:
            with self._cond:
                if self._pid != pid:
                    return
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, key, action = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            try:
                action()
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one attempt
                log.exception("watchdog action failed")


_WATCHDOG = _Watchdog()


class _Trace:
    """Per-attempt state shared between the sender and its connection."""

    def __init__(self, policy: ssrf.TargetPolicy, deadline: float, timeout: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self.timeout = timeout
        self.timings: dict[str, float] = {}
        self.peer: str | None = None
        self.conn: HTTPConnection | None = None
        self.expired = False
        self.done = False
        # What the attempt was doing, so a timeout can say where it got stuck.
        self.phase = "resolving the host name"
        self.lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expire(self) -> None:
        """Watchdog: the deadline passed, cut the connection wherever it is."""
        with self.lock:
            if self.done:
                return
            self.expired = True
            sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> bool:
        """Stop the watchdog from acting; True when it already cut the connection."""
        with self.lock:
            self.done = True
            return self.expired


class BlockedTarget(Exception):
    """Raised from the connection layer; deliberately not an OSError so nothing retries it."""

    def __init__(self, error: ssrf.TargetError) -> None:
        super().__init__(error.message)
        self.error = error


class _GuardedMixin:
    """Resolve, check and connect to the checked address; report timings."""

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        trace: _Trace | None = getattr(_local, "trace", None)
        if trace is None:
            raise BlockedTarget(ssrf.TargetError("No delivery in progress on this thread."))
        trace.conn = self  # type: ignore[assignment]
        host = self._dns_host.rstrip(".")  # type: ignore[attr-defined]
        t0 = time.monotonic()
        try:
            addresses = ssrf.resolve(host, self.port, trace.remaining())  # type: ignore[attr-defined]
            addresses = ssrf.check_addresses(host, addresses, trace.policy)
        except ssrf.TargetError as exc:
            raise BlockedTarget(exc) from None
        t1 = time.monotonic()
        trace.timings["dns_ms"] = round((t1 - t0) * 1000, 2)
        trace.phase = "connecting"
        last_error: OSError | None = None
        for family, ip in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(max(trace.remaining(), 0.01))
                with trace.lock:
                    self.sock = sock  # the watchdog can now reach it
                sock.connect((str(ip), self.port))  # type: ignore[attr-defined]
            except OSError as exc:
                sock.close()
                last_error = exc
                if trace.expired or trace.remaining() <= 0:
                    break
                continue
            trace.peer = str(ip)
            trace.timings["connect_ms"] = round((time.monotonic() - t1) * 1000, 2)
            tls = isinstance(self, HTTPSConnection)
            trace.phase = "in the TLS handshake" if tls else "sending the request"
            sock.settimeout(max(trace.remaining(), 0.01))
            return sock
        if isinstance(last_error, TimeoutError) or trace.remaining() <= 0:
            raise urllib3.exceptions.ConnectTimeoutError(self, f"Connection to {host} timed out")
        raise urllib3.exceptions.NewConnectionError(self, f"Failed to connect to {host}: {last_error}")

    def connect(self) -> None:
        trace: _Trace | None = getattr(_local, "trace", None)
        t0 = time.monotonic()
        super().connect()  # type: ignore[misc]
        if trace is not None and "connect_ms" in trace.timings:
            total = (time.monotonic() - t0) * 1000
            tls = total - trace.timings["connect_ms"] - trace.timings.get("dns_ms", 0)
            if isinstance(self, HTTPSConnection):
                trace.timings["tls_ms"] = round(max(tls, 0.0), 2)

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        trace: _Trace | None = getattr(_local, "trace", None)
        if trace is not None:
            with trace.lock:
                trace.conn = self  # type: ignore[assignment]
            if self.sock is not None:  # type: ignore[attr-defined]
                self.sock.settimeout(max(trace.remaining(), 0.01))  # type: ignore[attr-defined]
            trace.phase = "sending the request"
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        trace: _Trace | None = getattr(_local, "trace", None)
        if trace is not None:
            trace.phase = "waiting for the response headers"
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


def new_session(pool_size: int = 20) -> requests.Session:
    """A Session whose every connection goes through the guard; one per worker thread."""
    session = requests.Session()
    # trust_env=False: no proxy/netrc scan per call, and no proxy that would bypass the guard.
    session.trust_env = False
    adapter = GuardedAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = new_session()
    return session


@dataclass
class Response:
    """What one HTTP attempt produced."""

    url: str
    started_monotonic: float
    duration_ms: float = 0.0
    status_code: int | None = None
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_size: int = 0
    truncated: bool = False
    error_class: str | None = None
    error_message: str | None = None
    location: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    peer: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None and self.status_code is not None


def _header_dict(raw: urllib3.HTTPHeaderDict) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in list(raw.keys())[:MAX_HEADERS]:
        headers[name.lower()] = ", ".join(raw.getlist(name))[:MAX_HEADER_VALUE]
    return headers


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    policy: ssrf.TargetPolicy,
    read_limit: int = 64 * 1024,
) -> Response:
    """POST ``body`` to ``url`` within ``timeout`` seconds in total; never raises."""
    start = time.monotonic()
    result = Response(url=url, started_monotonic=start)
    try:
        ssrf.split_url(url)
    except ssrf.TargetError as exc:
        result.error_class, result.error_message = exc.error_class, exc.message
        return result
    trace = _Trace(policy, start + timeout, timeout)
    _local.trace = trace
    watchdog = _WATCHDOG.schedule(trace.deadline, trace.expire)
    resp: requests.Response | None = None
    try:
        session = _session()
        # A prepared request sent as is: Session.post would also merge the session's
        # cookie jar (receivers' cookies must not travel between deliveries) and
        # settings on every call, about a third of the client's CPU per attempt.
        merged = merge_setting(headers, session.headers, dict_class=CaseInsensitiveDict)
        prepared = requests.Request("POST", url, data=body, headers=merged).prepare()
        resp = session.send(prepared, timeout=(timeout, timeout), allow_redirects=False, stream=True)
        result.timings["ttfb_ms"] = round((time.monotonic() - start) * 1000, 2)
        trace.phase = "reading the response body"
        result.status_code = resp.status_code
        result.reason = (resp.reason or "")[:200] if isinstance(resp.reason, str) else None
        result.headers = _header_dict(resp.raw.headers)
        chunks: list[bytes] = []
        received = 0
        while received < read_limit:
            chunk = resp.raw.read(min(16 * 1024, read_limit - received), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if trace.remaining() <= 0:
                raise TimeoutError("response body not complete before the deadline")
        # The watchdog may have cut the socket mid-headers or mid-body; http.client
        # then sees a clean EOF, so a short answer would pass for a complete one.
        if trace.finish():
            raise TimeoutError("the deadline passed while the response was being read")
        result.body = b"".join(chunks)
        declared = resp.headers.get("content-length", "")
        more = received >= read_limit and not resp.raw.isclosed()
        result.truncated = more
        result.body_size = int(declared) if declared.isdigit() and more else received
        if 300 <= resp.status_code < 400:
            result.error_class = ErrorClass.REDIRECT
            result.location = resp.headers.get("location", "")[:2048]
            result.error_message = f"{resp.status_code} redirect to {result.location or '?'}"
        elif not 200 <= resp.status_code < 300:
            result.error_class = ErrorClass.HTTP_STATUS
            result.error_message = f"HTTP {resp.status_code} {result.reason or ''}".strip()
    except BlockedTarget as exc:
        result.error_class, result.error_message = exc.error.error_class, exc.error.message
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified outcome
        result.error_class, result.error_message = _classify(exc, trace)
    finally:
        trace.finish()
        _WATCHDOG.cancel(watchdog)
        _local.trace = None
        if resp is not None:
            if result.truncated or result.error_class == ErrorClass.TIMEOUT:
                _discard(resp)  # unread bytes: the connection cannot be reused
            resp.close()
    result.duration_ms = round((time.monotonic() - start) * 1000, 2)
    result.timings = {**trace.timings, **result.timings, "total_ms": result.duration_ms}
    result.peer = trace.peer
    return result


def _discard(resp: requests.Response) -> None:
    conn = getattr(resp.raw, "_connection", None)
    if conn is not None:
        conn.close()


def _timeout_message(trace: _Trace) -> str:
    return f"No complete answer within {trace.timeout:g} s: timed out {trace.phase}."


def _classify(exc: BaseException, trace: _Trace) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}"[:1000]
    if trace.expired or trace.remaining() <= 0:
        return ErrorClass.TIMEOUT, _timeout_message(trace)
    chain = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    names = " ".join(type(e).__name__ for e in chain) + " " + text
    if any(isinstance(e, requests.exceptions.SSLError | urllib3.exceptions.SSLError) for e in chain):
        return ErrorClass.TLS, text
    if "NameResolution" in names or "gaierror" in names:
        return ErrorClass.DNS, text
    if any(isinstance(e, TimeoutError | requests.exceptions.Timeout) for e in chain):
        return ErrorClass.TIMEOUT, _timeout_message(trace)
    if any(isinstance(e, requests.exceptions.InvalidURL | ValueError) for e in chain):
        return ErrorClass.INVALID_URL, text
    return ErrorClass.CONNECT, _connect_message(exc, chain, text)


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused (nothing is listening on that port)",
    errno.ECONNRESET: "connection reset by the receiver",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EPIPE: "the receiver closed the connection while we were sending",
}


def _connect_message(exc: BaseException, chain: list[BaseException], text: str) -> str:
    """A sentence a support person can act on, instead of urllib3's nested repr."""
    target = ""
    request = getattr(exc, "request", None)
    if request is not None and getattr(request, "url", None):
        parts = urllib3.util.parse_url(request.url)
        target = f" to {parts.host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    for e in chain:
        reason = _ERRNO_TEXT.get(getattr(e, "errno", None) or 0)
        if reason is None:
            for arg in getattr(e, "args", ()):
                reason = _ERRNO_TEXT.get(getattr(arg, "errno", None) or 0)
                if reason:
                    break
        if reason:
            return f"Connection{target} failed: {reason}."
    # urllib3 keeps the OS error only in its message text.
    found = re.search(r"\[Errno (\d+)\]", text)
    if found and int(found.group(1)) in _ERRNO_TEXT:
        return f"Connection{target} failed: {_ERRNO_TEXT[int(found.group(1))]}."
    if "IncompleteRead" in text:
        found = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
        got = f" ({found.group(1)} of {int(found.group(1)) + int(found.group(2))} bytes)" if found else ""
        return f"The receiver closed the connection{target} before sending its whole response body{got}."
    if "RemoteDisconnected" in text or "ProtocolError" in text:
        return f"Connection{target} closed by the receiver before it answered."
    return f"Connection{target} failed ({text[:300]})."
