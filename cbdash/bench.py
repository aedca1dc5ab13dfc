"""``cbdash bench``: delivery throughput, latency and ingestion, measured side by side (SPEC §12).

Absolute rates drift on shared machines, so every figure is a ratio against a
plain loop measured in the same run, on the same receiver and database:

- delivery: N deliveries end to end (API under gunicorn → database → Redis →
  one ``cbdash worker`` process → receiver → outcome recorded) against one
  ``requests.Session`` POSTing to the same receiver and committing one outcome
  row per request to the same database;
- latency: trigger-to-receipt p50/p99 of single events under light load;
- ingestion: ``POST /api/v1/events`` (fan-out to 10 callbacks) against a
  trivial JSON endpoint served by the same gunicorn (added to the bench's app
  only, never to the product).

The receiver is a small asyncio HTTP/1.1 server in its own process, so its
work does not compete with the loop's for one interpreter lock.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask

from .constants import FINAL_STATUSES, DeliveryStatus

PREFIX = "cbdash-bench"
DELIVERY_DEF = f"{PREFIX}.delivery"
LATENCY_DEF = f"{PREFIX}.latency"
INGEST_DEF = f"{PREFIX}.ingest"
BASELINE_TABLE = "cbdash_bench_baseline"
ECHO_PATH = "/_bench/echo"
INGEST_ROUNDS = 6
OK_REPLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
Echo = Callable[[str], None]


@dataclass
class Options:
    deliveries: int = 2000
    fanout: int = 10
    requests: int = 1000
    latency_events: int = 100
    clients: int = 4
    web_workers: int = 2
    web_threads: int = 4
    database_url: str | None = None
    redis_url: str | None = None


@dataclass
class Result:
    deliveries: int = 0
    e2e_seconds: float = 0.0
    baseline_seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    events_rate: float = 0.0
    trivial_rate: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def e2e_rate(self) -> float:
        return self.deliveries / self.e2e_seconds if self.e2e_seconds else 0.0

    @property
    def baseline_rate(self) -> float:
        return self.deliveries / self.baseline_seconds if self.baseline_seconds else 0.0

    @property
    def delivery_ratio(self) -> float:
        return self.e2e_rate / self.baseline_rate if self.baseline_rate else 0.0

    @property
    def ingestion_ratio(self) -> float:
        return self.events_rate / self.trivial_rate if self.trivial_rate else 0.0


# The receiver process


class _ReceiverState:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}


def _event_uid(body: bytes) -> str | None:
    # Bodies start with {"id":"evt_…" (build_body's envelope): no JSON parse per request.
    if body.startswith(b'{"id":"'):
        end = body.find(b'"', 7)
        if end > 7:
            return body[7:end].decode("ascii", "replace")
    return None


async def _serve_connection(
    state: _ReceiverState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            now = time.monotonic()
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip() or 0)
            body = await reader.readexactly(length) if length else b""
            if path == "/_stats":
                data = json.dumps({"counts": state.counts, "first": state.first}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
            elif path == "/_reset":
                state.counts.clear()
                state.first.clear()
                writer.write(OK_REPLY)
            else:
                state.counts[path] = state.counts.get(path, 0) + 1
                uid = _event_uid(body)
                if uid is not None and uid not in state.first:
                    state.first[uid] = now
                writer.write(OK_REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    except asyncio.CancelledError:
        return  # shutting down with the connection still open
    finally:
        writer.close()


def _receiver_main() -> None:
    """Entry point of the receiver process: print the port, serve until stdin closes."""
    state = _ReceiverState()

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(state, r, w), "127.0.0.1", 0, backlog=512
        )
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        # The parent holds our stdin; when it goes away (even killed), we stop.
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


class ReceiverProcess:
    """The fast receiver, running in a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cbdash.bench", "receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError("the bench receiver did not start")
        self.port = int(line)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def reset(self) -> None:
        self._call("/_reset", "POST")

    def stop(self) -> None:
        with suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# The web app the bench serves: the product plus one trivial endpoint


def bench_app() -> Flask:
    """The product app plus a trivial JSON endpoint to compare ingestion against (bench only)."""
    from flask import Blueprint, jsonify, request

    from . import create_app, web
    from .extensions import csrf

    app = create_app()
    bp = Blueprint("bench", __name__)

    @bp.post(ECHO_PATH)
    def echo():  # type: ignore[no-untyped-def]
        data = request.get_json(silent=True)
        # The pid lets the bench spread its connections over the web workers.
        return jsonify({"ok": True, "fields": len(data) if isinstance(data, dict) else 0, "pid": os.getpid()})

    csrf.exempt(bp)
    app.register_blueprint(bp)
    # This process only ever serves the bench app; the product never has this endpoint.
    web.PUBLIC_ENDPOINTS.add("bench.echo")
    return app


class Client:
    """One keep-alive HTTP/1.1 connection to the bench's gunicorn (cheap, unlike a requests call)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                # gunicorn closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def balanced_clients(port: int, token: str, count: int, web_workers: int) -> list[Client]:
    """``count`` keep-alive connections spread evenly over the gunicorn workers.

    Which worker accepts a connection is up to the kernel, and a handful of
    keep-alive connections often all land on one process, which then serves
    everything on one core while the other idles: a run-to-run swing of almost 2×.
    A load balancer in front of several workers spreads them; so does the bench.
    """
    per_worker = -(-count // web_workers)
    by_pid: dict[int, list[Client]] = {}
    spare: list[Client] = []
    for _ in range(count * 20):
        if sum(len(v) for v in by_pid.values()) >= count:
            break
        client = Client(port, token)
        status, data = client.post(ECHO_PATH, b"{}")
        pid = json.loads(data).get("pid", 0) if status == 200 else 0
        group = by_pid.setdefault(pid, [])
        (group if len(group) < per_worker else spare).append(client)
    clients = [c for group in by_pid.values() for c in group]
    for client in spare:
        client.close()
    while len(clients) < count:  # the kernel kept choosing one worker: accept the imbalance
        clients.append(Client(port, token))
    return clients[:count]


def _run_parallel(clients: list[Client], jobs: list[tuple[str, bytes]]) -> tuple[float, list[str]]:
    """Send ``jobs`` (path, body) through ``clients`` in parallel; return (seconds, problems)."""
    lock = threading.Lock()
    pending = iter(jobs)
    problems: list[str] = []

    def loop(client: Client) -> None:
        while True:
            with lock:
                job = next(pending, None)
            if job is None:
                return
            status, data = client.post(*job)
            if status >= 300:
                with lock:
                    problems.append(f"{job[0]} answered {status}: {data[:200]!r}")

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, problems


# Processes: gunicorn and one worker


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class Services:
    """gunicorn serving the bench app, and the worker processes, with a shared environment."""

    def __init__(self, env: dict[str, str], workdir: Path, options: Options) -> None:
        self.env, self.workdir, self.options = env, workdir, options
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def start_web(self) -> None:
        # gunicorn binds the socket we opened: no race for a free port.
        self.sock = _free_socket()
        fd = self.sock.fileno()
        log = open(self.workdir / "gunicorn.log", "ab")  # noqa: SIM115 - closed with the process
        self.web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"fd://{fd}",
                "--workers",
                str(self.options.web_workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(self.options.web_threads),
                "--keep-alive",
                "30",
                "--log-level",
                "warning",
                "cbdash.bench:bench_app()",
            ],
            env=self.env,
            pass_fds=(fd,),
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self._tail('gunicorn.log')}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("POST", ECHO_PATH, body=b"{}", headers={"Content-Type": "application/json"})
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not answer within 60 s")

    def start_worker(self) -> None:
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115 - closed with the process
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "cbdash", "worker"], env=self.env, stdout=log, stderr=log
        )
        log.close()

    def stop_worker(self) -> None:
        _stop(self.worker)
        self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        _stop(self.web, group=True)  # started in its own session
        self.web = None
        if self.sock is not None:
            self.sock.close()

    def _tail(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes] | None, group: bool = False) -> None:
    """End ``proc``; with ``group``, also whatever is left of the process group it leads."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT if "worker" in " ".join(map(str, proc.args)) else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group:
        # A gunicorn worker that hung in its own shutdown (gthread can deadlock when the quit
        # signal lands mid-submit) must not outlive the bench as an orphan.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# Database helpers


def _ensure_pg_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` when it does not exist yet."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()


def _bench_callbacks(definition: str, count: int, url: str) -> list[int]:
    from .extensions import db
    from .services import callbacks

    rows = [callbacks.create({"definition": definition, "url": url, "timeout": 5}) for _ in range(count)]
    db.session.commit()
    return [cb.id for cb in rows]


def _cleanup_rows() -> None:
    """Remove every row the bench created (it may run against a shared database)."""
    from sqlalchemy import delete, select

    from .extensions import db
    from .models import ApiToken, Attempt, Callback, Delivery, Event

    cb_ids = select(Callback.id).where(Callback.definition.like(f"{PREFIX}.%"))
    delivery_ids = select(Delivery.id).where(Delivery.callback_id.in_(cb_ids))
    db.session.execute(delete(Attempt).where(Attempt.delivery_id.in_(delivery_ids)))
    db.session.execute(delete(Delivery).where(Delivery.callback_id.in_(cb_ids)))
    db.session.execute(delete(Event).where(Event.definition.like(f"{PREFIX}.%")))
    db.session.execute(delete(Callback).where(Callback.definition.like(f"{PREFIX}.%")))
    db.session.execute(delete(ApiToken).where(ApiToken.name == PREFIX))
    db.session.commit()


def _final_count(callback_ids: list[int]) -> int:
    from sqlalchemy import func, select

    from .extensions import db
    from .models import Delivery

    count = db.session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.callback_id.in_(callback_ids), Delivery.status.in_(list(FINAL_STATUSES)))
    )
    db.session.rollback()  # end the read transaction so the next poll sees new commits
    return int(count or 0)


def _last_finished(callback_ids: list[int]) -> datetime | None:
    from sqlalchemy import func, select

    from .extensions import db
    from .models import Delivery

    last = db.session.scalar(
        select(func.max(Delivery.finished_at)).where(Delivery.callback_id.in_(callback_ids))
    )
    db.session.rollback()
    return last


def _status_counts(callback_ids: list[int]) -> dict[str, int]:
    from sqlalchemy import func, select

    from .extensions import db
    from .models import Delivery

    rows = db.session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.callback_id.in_(callback_ids))
        .group_by(Delivery.status)
    ).all()
    db.session.rollback()
    return {status: n for status, n in rows}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _envelope(n: int) -> bytes:
    from datetime import datetime

    from .services.delivery import build_body

    payload = {"order_id": f"ord_{n}", "total": "99.00", "currency": "EUR", "items": 3}
    return build_body(f"evt_baseline{n:08d}", "order.created", payload, datetime.now(), False).encode()


# Phases


def measure_baseline(app: Flask, receiver: ReceiverProcess, count: int) -> float:
    """The plain loop: one Session, one POST and one committed outcome row per request."""
    import requests
    from sqlalchemy import Column, DateTime, Float, Integer, MetaData, Table, insert

    from .extensions import db
    from .models import utcnow

    table = Table(
        BASELINE_TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer, nullable=False),
        Column("status_code", Integer),
        Column("duration_ms", Float),
        Column("created_at", DateTime),
    )
    bodies = [_envelope(n) for n in range(count)]
    url = receiver.url("/baseline")
    with app.app_context():
        engine = db.engine
        table.drop(engine, checkfirst=True)
        table.create(engine)
        session = requests.Session()
        # The baseline gets every advantage the engine has: no proxy scan per call.
        session.trust_env = False
        try:
            with engine.connect() as conn:
                start = time.perf_counter()
                for n, body in enumerate(bodies):
                    t0 = time.perf_counter()
                    response = session.post(
                        url, data=body, headers={"Content-Type": "application/json"}, timeout=5
                    )
                    conn.execute(
                        insert(table).values(
                            n=n,
                            status_code=response.status_code,
                            duration_ms=(time.perf_counter() - t0) * 1000,
                            created_at=utcnow(),
                        )
                    )
                    conn.commit()
                elapsed = time.perf_counter() - start
        finally:
            session.close()
            table.drop(engine, checkfirst=True)
    return elapsed


def measure_delivery(
    app: Flask, services: Services, token: str, callback_ids: list[int], options: Options
) -> tuple[float, list[str]]:
    """Events through the API until every fanned-out delivery has its outcome recorded."""
    from .models import utcnow

    events = options.deliveries // len(callback_ids)
    expected = events * len(callback_ids)
    body = json.dumps(
        {"definition": DELIVERY_DEF, "payload": {"order_id": "ord_1", "total": "9.99"}}
    ).encode()
    clients = balanced_clients(services.port, token, options.clients, options.web_workers)
    problems: list[str] = []
    with app.app_context():
        # The end is when the last outcome was recorded (its finished_at), not when a poll
        # noticed: polls stay rare, so they take no CPU from the run they measure.
        start = utcnow()
        started = time.perf_counter()
        _seconds, problems = _run_parallel(clients, [("/api/v1/events", body)] * events)
        deadline = time.monotonic() + max(120.0, expected / 20)
        done = 0
        while time.monotonic() < deadline:
            done = _final_count(callback_ids)
            if done >= expected:
                break
            time.sleep(0.2)
        last = _last_finished(callback_ids)
        elapsed = (last - start).total_seconds() if last else time.perf_counter() - started
        if done < expected:
            problems.append(f"only {done} of {expected} deliveries finished: {_status_counts(callback_ids)}")
        counts = _status_counts(callback_ids)
        if counts.get(DeliveryStatus.SUCCEEDED, 0) != expected:
            problems.append(f"not every delivery succeeded: {counts}")
    for c in clients:
        c.close()
    return elapsed, problems


def measure_latency(services: Services, receiver: ReceiverProcess, token: str, events: int) -> list[float]:
    """Trigger-to-receipt (ms) of single events sent 50 ms apart (light load)."""
    client = Client(services.port, token)
    sent: dict[str, float] = {}
    try:
        for n in range(events):
            body = json.dumps({"definition": LATENCY_DEF, "payload": {"n": n}}).encode()
            t0 = time.monotonic()
            status, data = client.post("/api/v1/events", body)
            if status == 202:
                sent[json.loads(data)["event_id"]] = t0
            time.sleep(0.05)
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        first = receiver.stats()["first"]
        if all(uid in first for uid in sent):
            break
        time.sleep(0.1)
    return [(first[uid] - t0) * 1000 for uid, t0 in sent.items() if uid in first]


def measure_ingestion(services: Services, token: str, options: Options) -> tuple[float, float, list[str]]:
    """Requests/s of POST /api/v1/events (fan-out) vs the trivial endpoint, interleaved twice."""
    body = json.dumps(
        {"definition": INGEST_DEF, "payload": {"order_id": "ord_1", "total": "9.99", "currency": "EUR"}}
    ).encode()
    # Short alternating rounds (ABBA…): load from other processes drifts, and both
    # endpoints then see the same average machine.
    per_round = max(options.requests // INGEST_ROUNDS, 1)
    clients = balanced_clients(services.port, token, options.clients * 2, options.web_workers)
    times = {"events": 0.0, "trivial": 0.0}
    problems: list[str] = []
    order = (("trivial", ECHO_PATH), ("events", "/api/v1/events"))
    try:
        _run_parallel(clients, [(ECHO_PATH, body)] * len(clients) * 2)  # warm every connection
        for n in range(INGEST_ROUNDS):
            for name, path in order if n % 2 == 0 else order[::-1]:
                seconds, errs = _run_parallel(clients, [(path, body)] * per_round)
                times[name] += seconds
                problems += errs[:3]
    finally:
        for c in clients:
            c.close()
    total = per_round * INGEST_ROUNDS
    return total / times["events"], total / times["trivial"], problems


# Orchestration


@contextmanager
def _workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cbdash-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(options: Options, echo: Echo = print) -> Result:
    """Run every phase and return the figures (the caller prints them)."""
    from . import create_app
    from .cli import upgrade_db
    from .config import _normalise_db_url
    from .extensions import db
    from .queue import get_queue, start_embedded
    from .services import tokens

    result = Result()
    with _workspace() as workdir:
        db_url = (
            options.database_url or os.environ.get("CBDASH_DATABASE_URL") or os.environ.get("DATABASE_URL")
        )
        db_url = _normalise_db_url(db_url) if db_url else f"sqlite:///{workdir / 'bench.sqlite3'}"
        redis_url = options.redis_url or os.environ.get("CBDASH_REDIS_URL") or os.environ.get("REDIS_URL")
        embedded = None
        if not redis_url:
            embedded, redis_url = start_embedded(workdir / "redis")
        _ensure_pg_database(db_url)
        queue_name = f"{PREFIX}-{os.getpid()}"
        env = {
            **os.environ,
            "CBDASH_DATABASE_URL": db_url,
            "CBDASH_REDIS_URL": redis_url,
            "CBDASH_INSTANCE_PATH": str(workdir / "instance"),
            "CBDASH_QUEUE_NAME": queue_name,
            "CBDASH_ALLOWED_TARGETS": "127.0.0.1/32",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        app = create_app(
            {
                "DATABASE_URL": db_url,
                "REDIS_URL": redis_url,
                "INSTANCE_PATH": str(workdir / "instance"),
                "QUEUE_NAME": queue_name,
                "ALLOWED_TARGETS": "127.0.0.1/32",
            }
        )
        echo(
            f"cbdash bench: database {_safe_url(db_url)}, Redis {_safe_url(redis_url)}, {os.cpu_count()} CPUs"
        )
        upgrade_db(app)
        receiver = ReceiverProcess()
        services = Services(env, workdir, options)
        try:
            with app.app_context():
                _cleanup_rows()
                _row, token = tokens.create(PREFIX, "admin")
                delivery_cbs = _bench_callbacks(DELIVERY_DEF, options.fanout, receiver.url("/delivery"))
                latency_cbs = _bench_callbacks(LATENCY_DEF, 1, receiver.url("/latency"))
                _bench_callbacks(INGEST_DEF, 10, receiver.url("/ingest"))
                db.session.commit()
            events = options.deliveries // options.fanout
            result.deliveries = events * options.fanout

            services.start_web()
            services.start_worker()
            # Warm up: the worker is ready once it has delivered one event.
            warm = measure_latency(services, receiver, token, 3)
            if not warm:
                raise RuntimeError(f"the worker delivered nothing: {services._tail('worker.log')}")
            # The baseline runs in two halves around the end-to-end run, so drifting
            # load from other processes weighs on both alike.
            half = result.deliveries // 2
            echo(f"baseline: {result.deliveries} POSTs with one requests.Session, one committed row each…")
            result.baseline_seconds = measure_baseline(app, receiver, half)
            echo(f"end to end: {events} events × {options.fanout} callbacks through gunicorn and one worker…")
            result.e2e_seconds, problems = measure_delivery(app, services, token, delivery_cbs, options)
            result.problems += problems
            result.baseline_seconds += measure_baseline(app, receiver, result.deliveries - half)
            got = receiver.stats()["counts"].get("/delivery", 0)
            if got != result.deliveries:
                result.problems.append(f"receiver got {got} requests for {result.deliveries} deliveries")

            echo(f"latency: {options.latency_events} single events, 50 ms apart…")
            latencies = measure_latency(services, receiver, token, options.latency_events)
            if len(latencies) < options.latency_events:
                result.problems.append(f"only {len(latencies)} latency events arrived")
            result.p50_ms, result.p99_ms = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
            with app.app_context():
                if _final_count(latency_cbs) < len(latencies):
                    result.problems.append("latency deliveries not all recorded")

            # Ingestion alone: no worker competing for the CPU.
            services.stop_worker()
            echo(f"ingestion: {options.requests} × POST /api/v1/events (fan-out 10) vs a trivial endpoint…")
            result.events_rate, result.trivial_rate, problems = measure_ingestion(services, token, options)
            result.problems += problems
        finally:
            services.stop()
            receiver.stop()
            with suppress(Exception):
                queue = get_queue(app)
                queue.delete(delete_jobs=True)
            with app.app_context():
                with suppress(Exception):
                    _cleanup_rows()
                db.engine.dispose()
            if embedded is not None:
                with suppress(Exception):
                    embedded.shutdown()  # type: ignore[attr-defined]
    return result


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - redis:// and unix:// URLs
        return url.split("@")[-1]


def report(result: Result, echo: Echo = print) -> None:
    """Print the figures; the last line is machine-readable."""
    echo("")
    echo(f"{'':<24}{'rate':>12}{'time':>10}")
    echo(
        f"{'end to end':<24}{result.e2e_rate:>10.0f}/s{result.e2e_seconds:>9.2f}s"
        f"   ({result.deliveries} deliveries, API → DB → queue → worker → receiver → outcome)"
    )
    echo(
        f"{'baseline loop':<24}{result.baseline_rate:>10.0f}/s{result.baseline_seconds:>9.2f}s"
        "   (one requests.Session, one committed outcome row per request)"
    )
    echo(f"{'delivery ratio':<24}{result.delivery_ratio:>12.2f}   (target ≥ 0.6)")
    echo(f"{'latency p50 / p99':<24}{result.p50_ms:>9.1f} ms / {result.p99_ms:.1f} ms   (trigger → receipt)")
    echo(f"{'POST /api/v1/events':<24}{result.events_rate:>10.0f}/s   (fan-out to 10 callbacks)")
    echo(f"{'trivial JSON endpoint':<24}{result.trivial_rate:>10.0f}/s   (same gunicorn)")
    echo(f"{'ingestion ratio':<24}{result.ingestion_ratio:>12.2f}   (target ≥ 0.5)")
    for problem in result.problems:
        echo(f"PROBLEM: {problem}")
    echo(f"ratio delivery={result.delivery_ratio:.2f} ingestion={result.ingestion_ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["receiver"]:
        _receiver_main()
    else:
        raise SystemExit("usage: python -m cbdash.bench receiver")
