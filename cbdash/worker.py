"""The cbdash worker: a non-forking RQ worker with the scheduler, the reconciler and a lease keeper.

RQ's default worker forks per job, which costs more than a delivery; a
SimpleWorker runs jobs in-process. The scheduler always runs: retries are
scheduled jobs. The reconciler runs on one worker at a time (a Redis lock).

Recovery bounds, with the defaults (all read from the app config):

- deliveries the API handed to the ready list: every worker's dispatcher
  thread turns them into RQ jobs at once; ones a dying dispatcher had taken are
  re-enqueued by the reconciler as below;
- a worker killed mid-attempt: its claim is a lease of ``CLAIM_LEASE`` (30 s)
  that a keeper thread renews every third of it while the attempt runs, so the
  reconciler (every ``RECONCILE_INTERVAL``, 2 s) hands the delivery to another
  worker at most ~32 s after the last renewal;
- the rest of a killed worker's batch, or a job Redis lost: re-enqueued once
  ``RECONCILE_REQUEUE_AFTER`` (60 s) has passed since it was queued and the
  queue no longer holds anything older (a live worker marks the rest of its
  batch as freshly queued at every lease renewal, so keep this setting well
  above ``CLAIM_LEASE`` / 3);
- Redis flushed or restarted empty: noticed on the next reconciler pass (a
  marker key disappears) and every open delivery is queued or scheduled again;
- a dead worker's scheduler: the scheduler process exits when its worker dies
  and releases its lock; a lock left by a killed process group expires after
  ~60 s (RQ) and a live worker takes over within ``MAINTENANCE_INTERVAL`` (15 s).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from flask import Flask
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler

from .queue import get_queue, get_redis

log = logging.getLogger(__name__)
RECONCILER_LOCK = "cbdash:reconciler"
DELIVER = "cbdash.jobs.deliver"
DISPATCH_GATHER = 0.01  # seconds the dispatcher lets the ready list fill while workers are busy


class _PreciseRegistry(ScheduledJobRegistry):
    """Due jobs by the exact clock: cbdash scores its retries with fractional seconds."""

    def get_jobs_to_schedule(self, timestamp: int | None = None, chunk_size: int = 1000) -> list[str]:
        return super().get_jobs_to_schedule(time.time(), chunk_size)  # type: ignore[arg-type]


class _Scheduler(RQScheduler):
    """RQ's scheduler, precise to its poll interval and leaving when its worker dies.

    Stock RQ compares whole seconds and polls once a second, so a retry could
    start up to two seconds late; cbdash schedules with exact scores (see
    ``dispatch.schedule_many``) and this scheduler reads them with the exact
    clock every ``poll_interval``. A scheduler orphaned by ``kill -9`` of its
    worker would otherwise keep the scheduler lock (and run) forever.
    """

    def __init__(self, *args, poll_interval: float = 1.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # RQ derives its lock TTLs from ``interval`` and Redis wants whole seconds
        # there, so the finer poll is kept apart.
        super().__init__(*args, interval=1, **kwargs)
        self.poll_interval = poll_interval
        self._worker_pid = os.getpid()

    def work(self) -> None:
        """RQ's scheduler loop with a sub-second poll."""
        self._install_signal_handlers()
        self.register_birth()
        while True:
            if self._stop_requested:
                self.stop()
                break
            if self.should_reacquire_locks:
                self.acquire_locks()
            self.heartbeat()
            self.enqueue_scheduled_jobs()
            time.sleep(self.poll_interval)

    def prepare_registries(self, queue_names=None) -> None:  # type: ignore[no-untyped-def]
        super().prepare_registries(queue_names)
        self._scheduled_job_registries = [
            _PreciseRegistry(r.name, connection=self.connection, serializer=self.serializer)
            for r in self._scheduled_job_registries
        ]

    def enqueue_scheduled_jobs(self) -> None:
        if os.getpid() != self._worker_pid and os.getppid() != self._worker_pid:
            log.warning("scheduler: worker %s is gone, stopping", self._worker_pid)
            self.request_stop()
            return
        super().enqueue_scheduled_jobs()


PUBSUB_POLL = 0.5  # seconds: how long the command listener's thread waits at a time


class QuickStopWorker(SimpleWorker):
    """A SimpleWorker whose command listener (RQ's pubsub thread) stops within ``PUBSUB_POLL``.

    RQ runs that thread with ``sleep_time=60``, and redis-py 8 joins it on stop: a
    worker that stops before its subscription was confirmed (a burst worker on a
    busy machine) then waits a full minute on shutdown.
    """

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL,
            daemon=True,
            exception_handler=getattr(self, "_pubsub_exception_handler", None),
        )


class CbdashWorker(QuickStopWorker):
    """A SimpleWorker whose scheduler polls every ``scheduler_interval`` seconds.

    It also folds the delivery jobs waiting behind the one it dequeued into that
    one (up to ``batch_limit`` deliveries): RQ's bookkeeping costs several
    milliseconds and a dozen Redis round trips per job, more than a delivery, and
    an event with one or two callbacks makes a job of one or two deliveries.
    """

    scheduler_interval: float = 0.25
    batch_limit: int = 50

    def execute_job(self, job: Job, queue: Queue) -> None:  # type: ignore[override]
        if job.func_name == DELIVER:
            try:
                self._absorb(job, queue)
            except Exception:  # noqa: BLE001 - the job itself still runs; the database has the rest
                log.exception("could not fold queued delivery jobs into job %s", job.id)
        super().execute_job(job, queue)

    def _absorb(self, job: Job, queue: Queue) -> None:
        """Move the delivery ids of the next queued ``deliver`` jobs into ``job`` (in memory).

        The absorbed jobs are deleted from Redis. Should this worker die before
        sending them, their deliveries are still pending in the database and the
        reconciler queues them again: nothing is lost.
        """
        ids = list(job.args[0])
        timeout = job.timeout or 0
        absorbed: list[Job] = []
        try:
            while len(ids) < self.batch_limit:
                raw = self.connection.lpop(queue.key)
                if raw is None:
                    break
                job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                other = queue.fetch_job(job_id)
                if other is None:
                    continue  # expired or deleted meanwhile
                if other.func_name != DELIVER or len(ids) + len(other.args[0]) > self.batch_limit:
                    queue.push_job_id(job_id, at_front=True)  # not ours to fold: back where it was
                    break
                ids.extend(other.args[0])
                timeout += other.timeout or 0
                absorbed.append(other)
        except Exception:
            for other in reversed(absorbed):  # hand back what was taken, in order
                queue.push_job_id(other.id, at_front=True)
            raise
        if not absorbed:
            return
        job.args = (ids,)
        job.timeout = timeout  # RQ's limit grows with the batch, never shorter than its parts
        with self.connection.pipeline() as pipe:
            for other in absorbed:
                other.delete(pipeline=pipe, remove_from_queue=False)
            pipe.execute()

    def _start_scheduler(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # Same as RQ's, with our scheduler class and interval.
        self.scheduler = _Scheduler(
            self.queues,
            connection=self.connection,
            poll_interval=self.scheduler_interval,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()


def reconcile_once(app: Flask) -> None:
    from . import jobs

    with app.app_context():
        try:
            jobs.reconcile()
        except Exception:  # noqa: BLE001 - the loop must survive a DB or Redis blip
            log.exception("reconciler pass failed")
    from . import scheduled

    # Retention (attempts, payloads, old rollups): at most once an hour across all
    # workers -- run_if_due holds its own Redis gate and never raises.
    scheduled.run_if_due(app)


def _reconciler_loop(app: Flask, stop: threading.Event, interval: float, owner: str) -> None:
    redis = get_redis(app)
    ttl_ms = max(int(interval * 3 * 1000), 3000)
    while not stop.wait(interval):
        try:
            # Only one reconciler across all workers and hosts: whoever holds the lock.
            if not redis.set(RECONCILER_LOCK, owner, nx=True, px=ttl_ms):
                if redis.get(RECONCILER_LOCK) != owner.encode():
                    continue
                redis.pexpire(RECONCILER_LOCK, ttl_ms)
        except Exception:  # noqa: BLE001
            log.warning("reconciler: Redis unreachable, will retry")
            continue
        reconcile_once(app)


def _dispatcher_loop(app: Flask, stop: threading.Event) -> None:
    """Turn the API's ready list into RQ jobs as entries arrive (see ``dispatch.ring``).

    With jobs already waiting in the queue the workers are busy: the next pass
    waits ``DISPATCH_GATHER`` so that what arrives meanwhile makes one job, not
    many (RQ's bookkeeping costs as much per job of one delivery as of fifty).
    With idle workers, a delivery is queued the moment it is committed.
    """
    from . import dispatch

    while not stop.is_set():
        with app.app_context():
            try:
                drained = dispatch.drain_ready(block=1.0)
            except Exception:  # noqa: BLE001 - Redis or DB blip: the reconciler covers what was taken
                log.exception("dispatcher pass failed")
                stop.wait(1.0)
                continue
        if drained.backlog:
            stop.wait(DISPATCH_GATHER)


def drain_all_ready(app: Flask) -> None:
    """Queue everything on the ready list now (burst workers, before they look at the queue)."""
    from . import dispatch

    dispatch.flush_rings(app)
    with app.app_context():
        while dispatch.drain_ready().queued:
            pass


def _lease_loop(app: Flask, stop: threading.Event, interval: float) -> None:
    """Extend the claims of the deliveries this process is sending, so they outlive a slow receiver."""
    from .services import delivery

    while not stop.wait(interval):
        with app.app_context():
            try:
                delivery.renew_leases()
            except Exception:  # noqa: BLE001 - a missed renewal only risks a duplicate send
                log.exception("lease renewal failed")


def run(app: Flask, *, burst: bool = False, name: str | None = None) -> None:
    """Run one worker until stopped (or, with ``burst``, until the queue is empty)."""
    from . import jobs
    from .services import delivery

    owner = name or f"cbdash-{socket.gethostname()}-{os.getpid()}"
    queue = get_queue(app)
    stop = threading.Event()
    lease = float(app.config.get("CLAIM_LEASE", 30))
    delivery.LEASES.seconds = lease
    threads = [
        threading.Thread(target=_lease_loop, args=(app, stop, lease / 3), daemon=True, name="cbdash-leases")
    ]
    reconcile_once(app)
    if burst:
        drain_all_ready(app)
    else:
        threads.append(
            threading.Thread(target=_dispatcher_loop, args=(app, stop), daemon=True, name="cbdash-dispatcher")
        )
        interval = float(app.config.get("RECONCILE_INTERVAL", 2.0))
        threads.append(
            threading.Thread(
                target=_reconciler_loop,
                args=(app, stop, interval, owner),
                daemon=True,
                name="cbdash-reconciler",
            )
        )
    for thread in threads:
        thread.start()

    # No long-lived app context: each job pushes its own, so its session is fresh.
    jobs.use_app(app)
    maintenance = int(app.config.get("MAINTENANCE_INTERVAL", 15))
    worker = CbdashWorker(
        [queue],
        connection=queue.connection,
        name=owner,
        maintenance_interval=maintenance,
        # RQ only checks for a missing scheduler between jobs or when a dequeue
        # times out (worker_ttl - 15 s); keep that close to the maintenance interval.
        worker_ttl=maintenance + 20,
    )
    worker.scheduler_interval = float(app.config.get("SCHEDULER_INTERVAL", 0.25))
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    finally:
        stop.set()
        delivery.LEASES.seconds = None
