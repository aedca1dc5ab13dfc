"""``cbdash bench-flood``: does a flood on /hooks/<slug> slow the dashboard? (SPEC §6a, issue 8).

gunicorn (as ``cbdash bench`` starts it: 2 gthread workers), SQLite and an embedded
Redis in a temporary folder. A signed-in browser session times the Callbacks page and
the monitoring page, first idle, then while 5,000 POSTs hit two inbound sources over
a few parallel connections: a rate-limited one getting signed messages (accepted up
to its limit, then 429) and one getting bad signatures (401). Prints p50/p95 per page
idle and under the flood, and what the flood got back. Loopback only; every loop is
bounded in count and time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import click

from . import bench
from .bench import Options, Services, _workspace

PAGES = (("Callbacks", "/settings/callbacks"), ("Monitoring", "/settings/callbacks/monitoring"))
ADMIN = ("flood@example.com", "flood-password-123")
KEY = b"flood-bench-key-32-bytes-long!!!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
DEADLINE = 300.0  # seconds: no phase runs longer, whatever happens


@dataclass
class Timings:
    samples: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name, _ in PAGES})

    def p(self, name: str, q: float) -> float:
        values = sorted(self.samples[name])
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@dataclass
class FloodResult:
    connections: int
    idle: Timings
    flood: Timings
    statuses: Counter
    seconds: float


class Browser:
    """One keep-alive connection with a signed-in session cookie."""

    def __init__(self, port: int) -> None:
        self.port, self.cookie = port, ""
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):  # type: ignore[no-untyped-def]
        headers = {**(headers or {}), **({"Cookie": self.cookie} if self.cookie else {})}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # an idle keep-alive connection closed by gunicorn: once more
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        cookie = response.getheader("Set-Cookie")
        if cookie and cookie.startswith("session="):
            self.cookie = cookie.split(";", 1)[0]
        return response.status, data

    def login(self) -> None:
        _status, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)
        assert token, "no CSRF token on the login page"
        form = f"email={ADMIN[0]}&password={ADMIN[1]}&csrf_token={token.group(1).decode()}"
        status, _ = self.request(
            "POST", "/login", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 302:
            raise RuntimeError(f"sign-in answered {status}")


def _signed(msg_id: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    mac = hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def _requests(run: int, total: int, bad_share: float) -> list[tuple[str, bytes, dict[str, str]]]:
    """The flood: signed messages to the rate-limited source, bad signatures to the other."""
    rng = random.Random(run)
    jobs = []
    for i in range(total):
        body = json.dumps({"payment_id": f"pay_{run}_{i}", "status": "captured"}).encode()
        if rng.random() < bad_share:
            headers = _signed(f"msg_bad_{run}_{i}", body)
            headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
            jobs.append((f"/hooks/refuse-{run}", body, headers))
        else:
            jobs.append((f"/hooks/limited-{run}", body, _signed(f"msg_{run}_{i}", body)))
    return jobs


def _time_pages(browser: Browser, timings: Timings, stop: threading.Event, rounds: int) -> None:
    """Load each page in turn, ``rounds`` times or until ``stop`` is set."""
    deadline = time.monotonic() + DEADLINE
    for _ in range(rounds):
        for name, path in PAGES:
            start = time.perf_counter()
            status, _ = browser.request("GET", path)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}")
            timings.samples[name].append((time.perf_counter() - start) * 1000)
        if stop.is_set() or time.monotonic() > deadline:
            return


def _flood(port: int, jobs: list, connections: int) -> tuple[Counter, float]:
    lock, pending, statuses = threading.Lock(), iter(jobs), Counter()
    deadline = time.monotonic() + DEADLINE

    def loop() -> None:
        client = Browser(port)
        while time.monotonic() < deadline:
            with lock:
                job = next(pending, None)
            if job is None:
                return
            status, _ = client.request("POST", job[0], job[1], job[2])
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    return statuses, time.perf_counter() - start


def run(connections: list[int], total: int = 5000, limit: int = 300, idle_rounds: int = 40, echo=print):  # type: ignore[no-untyped-def]
    """Measure the dashboard idle and under a flood for each number of flood connections."""
    from . import create_app
    from .cli import upgrade_db
    from .extensions import db
    from .queue import start_embedded
    from .services import callbacks, inbound, users

    results: list[FloodResult] = []
    with _workspace() as workdir:
        db_url = f"sqlite:///{workdir / 'flood.sqlite3'}"
        embedded, redis_url = start_embedded(workdir / "redis")
        env = {
            **os.environ,
            "CBDASH_DATABASE_URL": db_url,
            "CBDASH_REDIS_URL": redis_url,
            "CBDASH_INSTANCE_PATH": str(workdir / "instance"),
            "CBDASH_QUEUE_NAME": f"{bench.PREFIX}-flood-{os.getpid()}",
            "CBDASH_ALLOWED_TARGETS": "127.0.0.1/32",
        }
        app = create_app(
            {
                "DATABASE_URL": db_url,
                "REDIS_URL": redis_url,
                "INSTANCE_PATH": env["CBDASH_INSTANCE_PATH"],
                "QUEUE_NAME": env["CBDASH_QUEUE_NAME"],
                "ALLOWED_TARGETS": "127.0.0.1/32",
            }
        )
        upgrade_db(app)
        with app.app_context():
            users.create(ADMIN[0], "admin", ADMIN[1])
            for i in range(30):  # a Callbacks page with a full first page of rows
                callbacks.create(
                    {"definition": f"order.step{i % 6}", "url": f"http://127.0.0.1:9/cb{i}", "timeout": 5}
                )
            callbacks.create(
                {"definition": "payment.confirmed", "url": "http://127.0.0.1:9/pay", "timeout": 5}
            )
            for n in connections:
                for slug, rate in ((f"limited-{n}", limit), (f"refuse-{n}", total)):
                    inbound.create(
                        {
                            "slug": slug,
                            "preset": "standard",
                            "secret": SECRET,
                            "definition": "payment.confirmed",
                            "dedupe_header": "webhook-id",
                            "response_status": 200,
                            "response_body": '{"received": true}',
                            "tolerance": 300,
                            "rate_limit": rate,
                            "rate_window": 3600,
                            "active": True,
                        }
                    )
            db.session.commit()
        services = Services(env, workdir, Options(web_workers=2, web_threads=4))
        try:
            services.start_web()
            browser = Browser(services.port)
            browser.login()
            echo(f"cbdash bench-flood: gunicorn 2 × gthread 4, SQLite, embedded Redis, {os.cpu_count()} CPUs")
            for n in connections:
                idle = Timings()
                _time_pages(browser, idle, threading.Event(), idle_rounds)
                flood = Timings()
                stop = threading.Event()
                timer = threading.Thread(target=_time_pages, args=(browser, flood, stop, 10_000), daemon=True)
                jobs = _requests(n, total, bad_share=0.2)
                timer.start()
                statuses, seconds = _flood(services.port, jobs, n)
                stop.set()
                timer.join(DEADLINE)
                results.append(FloodResult(n, idle, flood, statuses, seconds))
                report(results[-1], echo)
        finally:
            services.stop()
            with app.app_context():
                db.engine.dispose()
            embedded.shutdown()  # type: ignore[attr-defined]
    return results


def report(r: FloodResult, echo=print) -> None:  # type: ignore[no-untyped-def]
    codes = ", ".join(f"{n} × {code}" for code, n in sorted(r.statuses.items()))
    sent = sum(r.statuses.values())
    echo(
        f"flood: {sent} POSTs over {r.connections} connections in {r.seconds:.1f} s "
        f"({sent / r.seconds:.0f}/s): {codes}"
    )
    for name, _ in PAGES:
        i50, f50 = r.idle.p(name, 0.5), r.flood.p(name, 0.5)
        echo(
            f"  {name:<10} idle p50 {i50:6.1f} ms p95 {r.idle.p(name, 0.95):6.1f} ms"
            f" | flood p50 {f50:6.1f} ms p95 {r.flood.p(name, 0.95):6.1f} ms"
            f" ({len(r.flood.samples[name])} loads) | p50 × {f50 / i50:.2f}"
        )


@click.command("bench-flood")
@click.option(
    "--connections",
    default="2,4,8",
    show_default=True,
    help="Flood connections, one run each (comma-separated).",
)
@click.option("--requests", "total", default=5000, show_default=True, type=click.IntRange(100, 50_000))
@click.option(
    "--limit",
    default=300,
    show_default=True,
    type=click.IntRange(1, 50_000),
    help="Accepted per source before 429.",
)
def bench_flood(connections: str, total: int, limit: int) -> None:
    """Time the dashboard idle and during a flood on /hooks/<slug> (loopback, temporary database)."""
    try:
        counts = sorted({int(c) for c in connections.split(",") if c.strip()})
    except ValueError:
        raise click.BadParameter("use whole numbers, e.g. 2,4,8", param_hint="--connections") from None
    if not counts or not all(1 <= c <= 64 for c in counts):
        raise click.BadParameter("between 1 and 64 connections", param_hint="--connections")
    run(counts, total, limit, echo=click.echo)
