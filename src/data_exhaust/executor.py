"""Executors decide where and when claimed jobs run.

:class:`Executor` is the small interface the service needs: ``start``, ``notify`` (a job was
submitted or released) and ``shutdown``. :class:`EmbeddedExecutor` runs a pool of worker
threads in the current process (the server's, or ``exhaust worker``'s) plus a maintenance
thread; :class:`InlineExecutor` runs due jobs synchronously inside ``notify`` and ships as a
testing tool. :class:`~data_exhaust.celery_executor.CeleryExecutor` implements the same
interface over a Celery broker. ``serve`` is what ``exhaust worker`` runs.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

import structlog

from data_exhaust.manager import JobManager
from data_exhaust.worker import Worker

log = structlog.get_logger(__name__)


class Executor(ABC):
    """Runs submitted jobs somewhere."""

    name: str = "executor"

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def notify(self) -> None:
        """A job became due: run it soon."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None: ...

    def status(self) -> dict[str, object]:
        return {"executor": self.name}

    def stop_running(self, request_id: str) -> bool:
        """Stop job ``request_id`` at once if this process runs it; False otherwise (the
        durable stop flag reaches it through its heartbeat)."""
        return False

    def serve(self) -> None:
        """Run jobs in this process until SIGINT / SIGTERM, then let running ones finish."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.shutdown()


class InlineExecutor(Executor):
    """Runs every due job in the caller's thread when notified (tests, scripts)."""

    name = "inline"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def start(self) -> None:
        return None

    def notify(self) -> None:
        while self.worker.run_one():
            pass

    def stop_running(self, request_id: str) -> bool:
        return self.worker.stop_running(request_id)

    def shutdown(self, wait: bool = True) -> None:
        return None


class EmbeddedExecutor(Executor):
    """A pool of worker threads polling the job table, woken early by ``notify``."""

    name = "embedded"

    def __init__(
        self,
        worker: Worker,
        jobs: JobManager,
        threads: int,
        poll_seconds: float,
        maintenance: Callable[[], None] | None = None,
        maintenance_seconds: float = 10.0,
    ) -> None:
        self.worker, self.jobs = worker, jobs
        self.threads, self.poll_seconds = threads, poll_seconds
        self.maintenance, self.maintenance_seconds = maintenance, maintenance_seconds
        self._wake = threading.Condition()
        self._pending = 0
        self._stopping = threading.Event()
        self._pool: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.threads):
            self._spawn(self._work, f"exhaust-worker-{index}")
        if self.maintenance is not None:
            self._spawn(self._maintain, "exhaust-maintenance")
        log.info("executor.started", threads=self.threads)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._pool.append(thread)

    def notify(self) -> None:
        with self._wake:
            self._pending += 1
            self._wake.notify()

    def stop_running(self, request_id: str) -> bool:
        return self.worker.stop_running(request_id)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; running ones finish (their leases keep them safe otherwise)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if wait:
            for thread in self._pool:
                thread.join()
        log.info("executor.stopped")

    def status(self) -> dict[str, object]:
        alive = sum(t.is_alive() for t in self._pool)
        return {
            "executor": self.name,
            "threads": self.threads,
            "alive": alive,
            "healthy": alive == len(self._pool),
        }

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                ran = self.worker.run_one()
            except Exception:  # the database is down: wait and try again, never die
                log.exception("executor.claim_failed")
                ran = False
            if not ran:
                self._sleep()

    def _sleep(self) -> None:
        with self._wake:
            if self._pending == 0 and not self._stopping.is_set():
                self._wake.wait(self.poll_seconds)
            self._pending = max(0, self._pending - 1)

    def _maintain(self) -> None:
        assert self.maintenance is not None
        while not self._stopping.wait(self.maintenance_seconds):
            try:
                self.maintenance()
            except Exception:
                log.exception("executor.maintenance_failed")
