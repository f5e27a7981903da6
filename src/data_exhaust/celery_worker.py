"""``exhaust worker`` with the Celery executor: a Celery worker, and the terminate fallback of stop.

The worker consumes the executor's queue with a prefork pool (``--concurrency`` processes, one
job each, ``worker_prefetch_multiplier=1``, late acks). Its main process also runs the executor's
maintenance thread, with a :class:`StopWatchdog`: a job whose stop was requested but which is
still running ``stop_grace_seconds`` later (a plugin stuck in a long call that never reaches a
checkpoint) has its pool process killed by this worker, its files deleted and STOPPED recorded.

Killing with SIGKILL is deliberate: the process must not write anything after its files were
deleted. Celery's own ``revoke(terminate=True)`` is not used: it remembers the task id as revoked
for hours, and since task id = requestId a resubmitted job would then be discarded unrun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog
from celery.signals import worker_ready
from celery.worker import state as worker_state

from data_exhaust.jobs import Job, Status
from data_exhaust.manager import JobNotFound
from data_exhaust.services import Services

if TYPE_CHECKING:
    from data_exhaust.celery_executor import CeleryExecutor

log = structlog.get_logger(__name__)


def run_worker(executor: CeleryExecutor) -> None:
    """Run a Celery worker on the executor's queue until a warm shutdown (SIGTERM, Ctrl-C)."""
    from data_exhaust.celery_executor import owner_prefix

    watchdog = StopWatchdog(executor.services, executor.options.stop_grace_seconds, owner_prefix)
    executor.watchdog = watchdog.check
    worker = executor.app.Worker(
        concurrency=executor.concurrency,
        pool="prefork",
        queues=[executor.options.queue],
        hostname=f"exhaust-{os.getpid()}@{socket.gethostname()}",
        optimization="fair",
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        quiet=True,
        loglevel="WARNING",
    )
    worker_ready.connect(
        lambda **_: log.info("worker.ready", queue=executor.options.queue), weak=False
    )
    executor.start()
    log.info("worker.started", queue=executor.options.queue, concurrency=executor.concurrency)
    try:
        worker.start()
    finally:
        executor.shutdown()


class StopWatchdog:
    """Terminates pool processes whose job ignores its stop request past the grace period."""

    def __init__(self, services: Services, grace_seconds: float, owner_prefix: Any) -> None:
        self.services, self.grace = services, grace_seconds
        self._owner_prefix = owner_prefix
        self._running_since: dict[str, float] = {}
        self._stop_seen: dict[str, float] = {}

    def check(self) -> None:
        now = time.monotonic()
        running = _running_requests()
        self._running_since = {rid: self._running_since.get(rid, now) for rid in running}
        self._stop_seen = {k: v for k, v in self._stop_seen.items() if k in running}
        for request_id, pid in running.items():
            job = self._job(request_id)
            if job is None or not self._owned_by(job, pid):
                continue
            seen = self._stop_seen.setdefault(request_id, now)
            if now - seen >= self.grace:
                self._terminate(job, pid, int((now - self._running_since[request_id]) * 1000))

    def _job(self, request_id: str) -> Job | None:
        """The job if it is running with a stop request, else None."""
        try:
            job = self.services.jobs.get(request_id)
        except JobNotFound:
            return None
        return job if job.status == Status.PROCESSING and job.stop_requested else None

    def _owned_by(self, job: Job, pid: int) -> bool:
        """Whether ``pid`` holds the lease (not a duplicate delivery while it runs elsewhere)."""
        return (job.lease_owner or "").startswith(self._owner_prefix(pid))

    def _terminate(self, job: Job, pid: int, elapsed_ms: int) -> None:
        log.warning("job.terminating", request_id=job.request_id, pid=pid, grace=self.grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_until_dead(pid)
        self.services.delete_files(job)
        progress = self.services.rollback(job)
        if self.services.jobs.stopped(job, elapsed_ms, progress) is not None:
            log.info("job.stopped", request_id=job.request_id, terminated=True)
        self._stop_seen.pop(job.request_id, None)


def _running_requests() -> dict[str, int]:
    """Task id -> pool process id of the tasks this worker is executing now."""
    for _ in range(3):  # the set belongs to the consumer thread: copy, retry if it changed
        try:
            requests = list(worker_state.active_requests)
        except RuntimeError:
            continue
        return {r.id: r.worker_pid for r in requests if r.worker_pid and r.time_start}
    return {}


def _wait_until_dead(pid: int, timeout: float = 5.0) -> None:
    """Wait until ``pid`` has exited (a zombie counts): no write of it can follow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        except OSError:  # no /proc here: give the kernel a moment
            time.sleep(0.5)
            return
        time.sleep(0.05)
