"""Invocations through a real gunicorn process never block other web requests (SPEC §6, issue 7.8).

Twenty invocations wait on a receiver that sleeps 2 s while the Callbacks page is
loaded; the page must answer at once. The server runs the settings recommended
in docs/sync-callbacks.md: ``gunicorn -w 2 --threads 32 wsgi:app``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.receiver import Receiver, Reply

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 20
SLEEP = 2.0


def _free_port() -> int:
    """A free port in the range set aside for this work's servers (5200-5219)."""
    for port in range(5200, 5220):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 5200-5219")


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cbdash")), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """gunicorn serving wsgi:app on a private SQLite database, migrated with ``cbdash db upgrade``."""
    env = {
        **os.environ,
        "CBDASH_INSTANCE_PATH": str(tmp_path / "instance"),
        "CBDASH_DATABASE_URL": f"sqlite:///{tmp_path / 'server.sqlite3'}",
        "CBDASH_REDIS_URL": redis_url,
        "CBDASH_ALLOWED_TARGETS": "127.0.0.1/32",
        "CBDASH_SECRET_KEY": "concurrency-test",
        "CBDASH_QUEUE_NAME": "cbdash-concurrency-test",
    }
    _run(env, "db", "upgrade")
    _run(env, "create-user", "--email", "admin@example.com", "--password", "password-123", "--role", "admin")
    token = _run(env, "create-token", "--name", "load", "--role", "admin").strip().splitlines()[-1]
    port = _free_port()
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "32", "-b", f"127.0.0.1:{port}"]
        + ["--timeout", "60", "wsgi:app"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        yield {"base": base, "token": token}
    finally:
        proc.send_signal(signal.SIGINT)  # quick shutdown: nothing is in flight any more
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def sleepy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    # The stdlib's listen backlog of 5 would make 20 simultaneous connects wait on SYN retries.
    monkeypatch.setattr(ThreadingHTTPServer, "request_queue_size", 64)
    r = Receiver()
    r.start()
    r.reply(Reply(200, b'{"redirect_url": "https://pay.example/slow"}', delay=SLEEP))
    yield r
    r.stop()


def _login(base: str) -> requests.Session:
    s = requests.Session()
    form = s.get(f"{base}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    assert csrf, form[:500]
    answer = s.post(
        f"{base}/login",
        data={"csrf_token": csrf.group(1), "email": "admin@example.com", "password": "password-123"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text[:500]
    return s


def _timed_get(session: requests.Session, url: str) -> float:
    t0 = time.monotonic()
    response = session.get(url, timeout=10)
    elapsed = time.monotonic() - t0
    assert response.status_code == 200 and "Callbacks" in response.text
    return elapsed


@pytest.mark.slow
def test_twenty_slow_invocations_do_not_block_the_callbacks_page(server, sleepy):
    base, auth = server["base"], {"Authorization": f"Bearer {server['token']}"}
    created = requests.post(
        f"{base}/api/v1/callbacks",
        json={"definition": "redirect_cart_payment", "url": sleepy.url(), "timeout": 5},
        headers=auth,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    browser = _login(base)
    idle = [_timed_get(browser, f"{base}/settings/callbacks") for _ in range(5)]

    results: list[tuple[int, float, dict]] = []
    lock = threading.Lock()
    start = threading.Barrier(CONCURRENT + 1)

    def call() -> None:
        start.wait(10)
        t0 = time.monotonic()
        response = requests.post(
            f"{base}/api/v1/definitions/redirect_cart_payment/invoke",
            json={"payload": {"cart_id": "c1"}},
            headers=auth,
            timeout=30,
        )
        with lock:
            results.append((response.status_code, time.monotonic() - t0, response.json()))

    threads = [threading.Thread(target=call) for _ in range(CONCURRENT)]
    for t in threads:
        t.start()
    t_start = time.monotonic()
    start.wait(10)
    # Wait until every invocation is parked on the sleeping receiver, then load the page:
    # the last one to arrive keeps its web thread busy for SLEEP seconds from then on.
    sleepy.wait_for(CONCURRENT, timeout=15)
    all_in = time.monotonic()
    busy = [_timed_get(browser, f"{base}/settings/callbacks") for _ in range(5)]
    pages_done = time.monotonic()
    with lock:
        in_flight = CONCURRENT - len(results)  # still waiting for their answer when the pages were done
    for t in threads:
        t.join(30)
    wall = time.monotonic() - t_start

    arrivals = sorted(r.at for r in sleepy.requests)
    statuses = sorted(status for status, _, _ in results)
    latencies = sorted(elapsed for _, elapsed, _ in results)
    ms = [round(x * 1000) for x in (statistics.median(idle), max(idle), statistics.median(busy), max(busy))]
    print(
        f"\nidle Callbacks page: median {ms[0]} ms, max {ms[1]} ms"
        f"\nwith all {CONCURRENT} invocations parked on the receiver: median {ms[2]} ms, max {ms[3]} ms; "
        f"5 loads took {pages_done - all_in:.2f} s, {in_flight} invocations still waiting after them"
        f"\ninvocations: min {latencies[0]:.2f} s, median {statistics.median(latencies):.2f} s, "
        f"max {latencies[-1]:.2f} s; all {CONCURRENT} done after {wall:.2f} s; "
        f"all reached the receiver within {(arrivals[-1] - arrivals[0]) * 1000:.0f} ms of each other"
    )
    assert statuses == [200] * CONCURRENT
    assert all(data["body"] == {"redirect_url": "https://pay.example/slow"} for _, _, data in results)
    assert len(arrivals) == CONCURRENT
    # Blocked, a page would wait out a sleeping receiver (up to SLEEP s); it answers well before.
    assert max(busy) < SLEEP * 0.75, busy
    assert pages_done - all_in < SLEEP, pages_done - all_in  # five loads while the last one still slept
    assert in_flight >= 1, in_flight
    assert wall < SLEEP * 4, wall  # side by side: one after another would take 20 x 2 s
    # Each was logged as an invoke delivery with its attempt (recorded right after answering).
    deadline = time.monotonic() + 15
    while True:
        logged = requests.get(f"{base}/api/v1/deliveries?kind=invoke", headers=auth, timeout=10).json()
        if sorted(d["status"] for d in logged["data"]) == ["succeeded"] * CONCURRENT:
            break
        assert time.monotonic() < deadline, logged
        time.sleep(0.2)
    assert {d["id"] for d in logged["data"]} == {data["delivery_id"] for _, _, data in results}
