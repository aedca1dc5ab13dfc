"""Misbehaving receivers on 127.0.0.1 that ``tests.receiver`` cannot script: a TLS
listener that never answers, an endless chunked body, a huge body. Each one is
bounded in time and bytes so a broken client cannot make a test hang."""

from __future__ import annotations

import socket
import threading
import time


class RawServer:
    """Accept connections on 127.0.0.1 and hand each to ``handle(conn)`` in a thread."""

    def __init__(self, max_seconds: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.max_seconds = max_seconds
        self.stopped = threading.Event()
        self.connections = 0
        self.bytes_sent = 0
        self.finished = threading.Event()  # set when a handler stops sending
        self._conns: list[socket.socket] = []

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> RawServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            self.finished.set()

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def read_request(self, conn: socket.socket) -> bytes:
        """Read one request's head and its Content-Length body."""
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 1_000_000:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head

    def stop(self) -> None:
        self.stopped.set()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
        self.sock.close()


class SilentServer(RawServer):
    """Accepts TCP and never says a word (a TLS handshake waits forever)."""

    def handle(self, conn: socket.socket) -> None:
        self.stopped.wait(self.max_seconds)


class ChunkedForever(RawServer):
    """200 with a chunked body that never ends (until the client goes or time is up)."""

    def handle(self, conn: socket.socket) -> None:
        self.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 16384
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        deadline = time.monotonic() + self.max_seconds
        conn.settimeout(2)
        while not self.stopped.is_set() and time.monotonic() < deadline:
            conn.sendall(frame)
            self.bytes_sent += len(chunk)


class HugeBody(RawServer):
    """200 with Content-Length ``size`` and that many bytes, sent as fast as the client reads."""

    def __init__(self, size: int, max_seconds: float = 60.0) -> None:
        super().__init__(max_seconds)
        self.size = size

    def handle(self, conn: socket.socket) -> None:
        self.read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % self.size
        )
        chunk = b"z" * 65536
        conn.settimeout(2)
        deadline = time.monotonic() + self.max_seconds
        while self.bytes_sent < self.size and not self.stopped.is_set() and time.monotonic() < deadline:
            n = min(len(chunk), self.size - self.bytes_sent)
            conn.sendall(chunk[:n])
            self.bytes_sent += n


class DripHeaders(RawServer):
    """Sends the status line and then one header byte per ``interval`` seconds, forever."""

    def __init__(self, interval: float = 1.0, max_seconds: float = 60.0) -> None:
        super().__init__(max_seconds)
        self.interval = interval

    def handle(self, conn: socket.socket) -> None:
        self.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        deadline = time.monotonic() + self.max_seconds
        while not self.stopped.is_set() and time.monotonic() < deadline:
            conn.sendall(b"a")
            self.bytes_sent += 1
            self.stopped.wait(self.interval)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
