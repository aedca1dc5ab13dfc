"""Real ``python -m cbdash worker`` processes for tests that need a process to die.

They share the test session's database and embedded Redis (passed through the
environment exactly as an operator would) and get tuning knobs through an
``instance/config.py`` of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rq import Worker

from cbdash.queue import get_redis

ROOT = Path(__file__).resolve().parent.parent

# Faster recovery than production so the tests finish in seconds; the bounds
# they measure scale with these (see cbdash/worker.py).
FAST = {
    "RECONCILE_INTERVAL": 0.5,
    "RECONCILE_DUE_GRACE": 1,
    "RECONCILE_REQUEUE_AFTER": 3,
    "CLAIM_LEASE": 4,
    "SCHEDULER_INTERVAL": 0.2,
    "MAINTENANCE_INTERVAL": 5,
}


class Workers:
    """Start, stop and kill worker processes; everything started is stopped at the end."""

    def __init__(self, app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.instance = tmp_path / "worker-instance"
        self.instance.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.config = dict(FAST)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        cfg = self.app.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("CBDASH_")}
        env.update(
            {
                "CBDASH_DATABASE_URL": cfg["DATABASE_URL"],
                "CBDASH_REDIS_URL": cfg["REDIS_URL"],
                "CBDASH_INSTANCE_PATH": str(self.instance),
                "CBDASH_QUEUE_NAME": cfg["QUEUE_NAME"],
                "CBDASH_ALLOWED_TARGETS": "127.0.0.1/32",
                "CBDASH_SECRET_KEY": "test-secret",
                "CBDASH_RETRY_JITTER": "0",
                "CBDASH_RETRY_SCHEDULE": cfg["RETRY_SCHEDULE"],
                "CBDASH_MAX_TIMEOUT": str(cfg["MAX_TIMEOUT"]),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(self, extra_env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen:
        """Start ``python -m cbdash worker`` and (by default) wait until RQ lists it."""
        (self.instance / "config.py").write_text("".join(f"{k} = {v!r}\n" for k, v in self.config.items()))
        log = open(self.instance / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "cbdash", "worker"],
            cwd=ROOT,
            env=self.env(extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the scheduler child can be found
        )
        log.close()
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc)
        return proc

    def names(self) -> list[str]:
        return [w.name for w in Worker.all(connection=get_redis(self.app))]

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{self.logs()}")
            if any(name.endswith(f"-{proc.pid}") for name in self.names()):
                return
            time.sleep(0.05)
        raise AssertionError(f"worker {proc.pid} did not start:\n{self.logs()}")

    def wait_scheduler(self, timeout: float = 20.0) -> None:
        """Until some worker's scheduler holds the queue's scheduler lock."""
        key = f"rq:scheduler-lock:{self.app.config['QUEUE_NAME']}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if get_redis(self.app).exists(key):
                return
            time.sleep(0.05)
        raise AssertionError(f"no scheduler started:\n{self.logs()}")

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> int:
        """SIGTERM: RQ's warm shutdown finishes the current job first."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker process only (its scheduler child must notice by itself)."""
        proc.kill()
        proc.wait(5)

    def group_alive(self, proc: subprocess.Popen) -> bool:
        """True while any process of the worker's group (e.g. its scheduler) lives."""
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie child of ours still "exists"; reap-free check via /proc state.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            state, pgrp = fields[0], int(fields[2])
            if pgrp == proc.pid and state != "Z":
                return True
        return False

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.instance.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a scheduler child left behind, if any
            except ProcessLookupError:
                pass
