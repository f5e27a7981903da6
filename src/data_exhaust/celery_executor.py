"""The Celery executor: jobs travel as Celery tasks over RabbitMQ or Redis; the job table decides.

A message only says "job <requestId> may be due" (its task id *is* the requestId, so duplicate
publishes are recognisable). The task claims that job in the job table like any worker does
(``JobManager.claim(owner, request_id)``), so a duplicate delivery, or the redelivery of a job
that already runs or ended elsewhere, claims nothing and is acknowledged as a no-op. Late acks
and ``task_reject_on_worker_lost`` make a killed pool process's message come back; a whole
worker host that dies is noticed through its expired lease (``recover_expired``) and the job is
published again by the sweeper. The broker is therefore a wake-up channel, never the truth:
a lost message costs a delay, a duplicated one costs one no-op claim.

Every process with a :class:`CeleryExecutor` (API servers and ``exhaust worker``) runs a
maintenance thread: the usual upkeep (lease recovery, retention, compaction) plus the sweeper,
which re-publishes waiting jobs whose message seems lost. Worker processes also run the
:class:`~data_exhaust.celery_worker.StopWatchdog`, the terminate fallback of a stop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import Celery
from kombu.entity import Queue

from data_exhaust.executor import Executor
from data_exhaust.jobs import Job, Status
from data_exhaust.manager import utcnow
from data_exhaust.services import Services, build_services
from data_exhaust.settings import Settings
from data_exhaust.store import JobFilter

log = structlog.get_logger(__name__)

TASK_NAME = "data_exhaust.run_job"
SCAN_LIMIT = 10_000  # waiting jobs looked at per notify / sweep


@dataclass(frozen=True)
class CeleryOptions:
    """The Celery executor's part of the settings (``EXHAUST_CELERY_*``)."""

    queue: str = "exhaust"
    stop_grace_seconds: float = 3.0
    redispatch_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryOptions:
        return cls(
            settings.celery_queue,
            settings.celery_stop_grace_seconds,
            settings.celery_redispatch_seconds,
        )


def make_celery_app(broker_url: str, queue: str, run_job: Callable[[str], str]) -> Any:
    """A Celery app whose only task runs ``run_job(request_id)``."""
    app = Celery("data_exhaust", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(queue, routing_key=queue)],  # type: ignore[no-untyped-call]  # durable
        task_default_queue=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives broker restarts
        broker_transport_options={"visibility_timeout": 3600},  # Redis: unacked come back
    )

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME, shared=False, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def run(request_id: str) -> str:
        return run_job(request_id)

    return app


class JobRunner:
    """What a delivered message does: claim that job, run it; no-op if it is not claimable.

    Prefork pool processes are forked from the worker's main process: each builds its own
    services (database connections must not cross a fork).
    """

    def __init__(self, services: Services) -> None:
        self._services, self._pid = services, os.getpid()

    def services(self) -> Services:
        if os.getpid() != self._pid:
            inherited = self._services
            inherited.engine.dispose(close=False)  # the parent's connections stay the parent's
            self._services, self._pid = build_services(inherited.settings), os.getpid()
        return self._services

    def __call__(self, request_id: str) -> str:
        services = self.services()
        owner = f"{owner_prefix(os.getpid())}{uuid.uuid4().hex[:8]}"
        job = services.jobs.claim(owner, request_id)
        if job is None:
            log.info("job.delivery_skipped", request_id=request_id, reason="not waiting or due")
            return "skipped"
        services.worker(f"{socket.gethostname()}:{os.getpid()}").execute(job)
        return "ran"


def owner_prefix(pid: int) -> str:
    """Leases taken by the pool process ``pid`` of this host start with this."""
    return f"{socket.gethostname()}:{pid}:"


def generation(job: Job) -> str:
    """One execution opportunity of a job: a retry or a resubmit is a new one."""
    return f"{job.request_id}/{job.attempts}/{job.submitted_at.isoformat()}"


class CeleryExecutor(Executor):
    """Publishes due jobs to the broker and sweeps for lost messages; ``serve`` runs a worker."""

    name = "celery"

    def __init__(
        self,
        services: Services,
        options: CeleryOptions | None = None,
        *,
        broker_url: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        broker = broker_url or services.settings.broker_url
        if not broker:
            raise ValueError(
                "EXHAUST_EXECUTOR=celery needs EXHAUST_BROKER_URL (amqp:// or redis://)"
            )
        self.services = services
        self.options = options or CeleryOptions.from_settings(services.settings)
        self.concurrency = max(1, concurrency or services.settings.workers)
        self.app = make_celery_app(broker, self.options.queue, JobRunner(services))
        self.watchdog: Callable[[], None] | None = None  # set by serve()
        self._sent: dict[str, tuple[str, float]] = {}  # request id -> (generation, when)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- Executor -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._maintain, name="exhaust-sweeper", daemon=True)
        self._thread.start()
        log.info("executor.started", executor=self.name, queue=self.options.queue)

    def notify(self) -> None:
        """Publish every due job that changed recently and was not published by this process."""
        now = utcnow()
        recent = now - timedelta(seconds=self.options.redispatch_seconds)
        fresh = [job for job in self._due(now) if _changed_at(job) >= recent]
        self._publish(job for job in fresh if not self._sent_recently(job, None))

    def shutdown(self, wait: bool = True) -> None:
        self._stopping.set()
        if wait and self._thread is not None:
            self._thread.join()
        self.app.close()  # the connection pool is kombu's, shared by apps on this broker URL
        log.info("executor.stopped", executor=self.name)

    def status(self) -> dict[str, object]:
        alive = self._thread is not None and self._thread.is_alive()
        return {
            "executor": self.name,
            "queue": self.options.queue,
            "broker": self.app.connection_for_write().as_uri(),  # password masked
            "healthy": alive,
        }

    def serve(self) -> None:
        """Run a Celery worker in this process until SIGTERM / SIGINT (warm shutdown)."""
        from data_exhaust.celery_worker import run_worker

        run_worker(self)

    # -- sweeping -------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Recover dead workers' jobs; publish due jobs whose message seems lost.

        Candidates: waiting jobs unchanged for ``redispatch_seconds`` (their message may be
        lost) and jobs that became due by the clock (a retry back-off or a cron window ended;
        nobody published them). At most as many as the queue lacks (waiting jobs minus queued
        messages; jobs whose message a worker holds but has not claimed yet count as lacking,
        so a few duplicates happen), oldest first: several sweepers never flood the broker.
        """
        if self.services.jobs.recover_expired():
            self.notify()  # recovered jobs are a new generation: publish them now
        now = utcnow()
        due = self._due(now)
        with self._lock:  # forget jobs that are no longer waiting
            waiting = {job.request_id for job in due}
            self._sent = {k: v for k, v in self._sent.items() if k in waiting}
        stale = now - timedelta(seconds=self.options.redispatch_seconds)
        candidates = [
            job
            for job in due
            if (job.last_updated < stale or job.run_after > job.last_updated)
            and not self._sent_recently(job, self.options.redispatch_seconds)
        ]
        if not candidates:
            return
        queued = self.queued_messages()
        if queued is None or queued >= len(due):
            return  # the broker is down, or holds at least one message per waiting job
        missing = sorted(candidates, key=_changed_at)[: len(due) - queued]
        log.warning("celery.redispatch", jobs=len(missing), queued=queued, waiting=len(due))
        self._publish(missing)

    def queued_messages(self) -> int | None:
        """Messages waiting in the queue (None when the broker cannot be asked)."""
        try:
            with self.app.pool.acquire(block=True, timeout=5) as connection:
                queue = self.app.amqp.queues[self.options.queue]
                declared = queue(connection.default_channel).queue_declare()
                return int(declared.message_count)
        except Exception:
            log.warning("celery.broker_unreachable", exc_info=True)
            return None

    def _due(self, now: datetime) -> list[Job]:
        waiting = self.services.jobs.search(JobFilter(status=Status.SUBMITTED), SCAN_LIMIT)[1]
        return [job for job in waiting if job.run_after <= now]

    def _sent_recently(self, job: Job, within: float | None) -> bool:
        """Published by this process for this generation (within ``within`` seconds)."""
        with self._lock:
            sent = self._sent.get(job.request_id)
        if sent is None or sent[0] != generation(job):
            return False
        return within is None or time.monotonic() - sent[1] < within

    def _publish(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            try:
                self.app.send_task(TASK_NAME, args=[job.request_id], task_id=job.request_id)
            except Exception:  # the broker is down: the sweeper publishes it later
                log.warning("celery.publish_failed", request_id=job.request_id, exc_info=True)
                return
            with self._lock:
                self._sent[job.request_id] = (generation(job), time.monotonic())
            log.info("job.published", request_id=job.request_id, queue=self.options.queue)

    def _maintain(self) -> None:
        seconds = self.services.settings.maintenance_seconds
        while not self._stopping.wait(seconds):
            for step in (self.watchdog, self.services.maintenance, self.sweep):
                if step is None:
                    continue
                try:
                    step()
                except Exception:  # the database or broker is down: try again next round
                    log.exception("executor.maintenance_failed", step=getattr(step, "__name__", ""))


def _changed_at(job: Job) -> datetime:
    """When a waiting job last became due: submitted, retried, recovered or released."""
    return max(job.last_updated, job.run_after)
