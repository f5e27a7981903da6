"""Running one job: the dataset plugin, its heartbeat, its checkpoints and its outcome.

A :class:`Worker` claims a job through the manager and runs it with a :class:`JobContext`. A
heartbeat thread renews the lease and reads the durable stop flag; when the flag is set (or
the lease is lost) the context's checkpoints raise :class:`StopRequested` and any DuckDB query
in flight is interrupted, so a stop takes effect within about a second. Files are published
atomically by the blob store; whatever a stopped or failed run had published is deleted.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import structlog

from data_exhaust.datasets import (
    ConfigError,
    Dataset,
    PermanentError,
    StopRequested,
)
from data_exhaust.heap import release_free_memory
from data_exhaust.jobs import Job, OutputFile
from data_exhaust.lake import Lake
from data_exhaust.manager import JobManager
from data_exhaust.output import write_output
from data_exhaust.query_db import QueryDatabase
from data_exhaust.registry import Registry
from data_exhaust.settings import Settings
from data_exhaust.storage import BlobStore

log = structlog.get_logger(__name__)


def job_prefix(job: Job) -> str:
    """Where a job's files live in the blob store."""
    return f"{job.dataset}/{job.request_id}"


@dataclass
class JobContext:
    """The :class:`~data_exhaust.datasets.RunContext` the engine gives a running dataset."""

    job: Job
    settings: Settings
    lake: Lake
    blobs: BlobStore
    today: date
    queries: QueryDatabase
    registry: Registry
    stop_event: threading.Event = field(default_factory=threading.Event)
    rows_done: int = 0
    rows_total: int | None = None
    lease_lost: bool = False
    #: What a dataset adds to the job's progress (an import's counts and errors).
    details: dict[str, Any] = field(default_factory=dict)
    _connections: list[duckdb.DuckDBPyConnection] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def checkpoint(self, rows_done: int, rows_total: int | None = None) -> None:
        self.rows_done = rows_done
        if rows_total is not None:
            self.rows_total = rows_total
        if self.stop_event.is_set():
            raise StopRequested

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """A connection of the process's DuckDB database (:mod:`data_exhaust.query_db`),
        closed when the job ends and interrupted if it is stopped."""
        connection: duckdb.DuckDBPyConnection = self.queries.connect()
        with self._lock:
            self._connections.append(connection)
        if self.stop_event.is_set():
            raise StopRequested
        return connection

    def write(
        self,
        stem: str,
        header: Sequence[str],
        batches: pa.RecordBatchReader,
        rows_total: int | None = None,
    ) -> OutputFile:
        start = self.rows_done
        return write_output(
            self.blobs,
            job_prefix(self.job),
            stem,
            self.job.output_format,
            header,
            batches,
            bom=self.settings.csv_bom,
            formula_guard=self.settings.csv_formula_guard,
            on_batch=lambda rows: self.checkpoint(start + rows, rows_total),
        )

    def publish_file(self, name: str, path: Path, rows: int) -> OutputFile:
        key = f"{job_prefix(self.job)}/{name}"
        size, sha256 = _size_and_sha256(path)
        self.blobs.put_file(key, path)
        return OutputFile(name=name, key=key, size=size, sha256=sha256, rows=rows)

    def progress(self) -> dict[str, Any]:
        percent = None
        if self.rows_total:
            percent = round(min(100.0, 100.0 * self.rows_done / self.rows_total), 1)
        return {
            "rowsWritten": self.rows_done,
            "rowsTotal": self.rows_total,
            "percent": percent,
            **self.details,
        }

    def request_stop(self) -> None:
        """Make the next checkpoint raise, and interrupt queries in flight."""
        self.stop_event.set()
        with self._lock:
            for connection in self._connections:
                connection.interrupt()

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Worker:
    """Claims jobs and runs them, one at a time per call of :meth:`run_one`."""

    def __init__(
        self,
        jobs: JobManager,
        blobs: BlobStore,
        lake: Lake,
        datasets: dict[str, Dataset],
        settings: Settings,
        name: str | None = None,
        *,
        registry: Registry,
        queries: QueryDatabase,
    ) -> None:
        self.jobs, self.blobs, self.lake = jobs, blobs, lake
        self.datasets, self.settings, self.registry = datasets, settings, registry
        self.queries = queries
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._running: dict[str, JobContext] = {}
        self._running_lock = threading.Lock()

    def run_one(self) -> bool:
        """Claim one due job and run it to its end; False when nothing was due."""
        owner = f"{self.name}:{uuid.uuid4().hex[:8]}"
        job = self.jobs.claim(owner)
        if job is None:
            return False
        self.execute(job)
        return True

    def execute(self, job: Job) -> None:
        today = datetime.now(self.settings.tz).date()
        ctx = JobContext(
            job, self.settings, self.lake, self.blobs, today, self.queries, self.registry
        )
        if job.stop_requested:  # asked to stop before this run looked at the flag
            ctx.request_stop()
        heartbeat = _Heartbeat(self.jobs, ctx, self.settings.lease_seconds)
        started = time.monotonic()
        with self._running_lock:
            self._running[job.request_id] = ctx
        log.info(
            "job.started", request_id=job.request_id, dataset=job.dataset, owner=job.lease_owner
        )
        heartbeat.start()
        try:
            self._run(job, ctx, started)
        finally:
            with self._running_lock:
                self._running.pop(job.request_id, None)
            heartbeat.stop()
            ctx.close()
            release_free_memory()

    def stop_running(self, request_id: str) -> bool:
        """Stop job ``request_id`` now if this worker is running it (its next checkpoint
        raises, a DuckDB query in flight is interrupted); False if it runs elsewhere, where
        its heartbeat reads the durable stop flag within a second or so."""
        with self._running_lock:
            ctx = self._running.get(request_id)
        if ctx is None:
            return False
        ctx.request_stop()
        return True

    def _run(self, job: Job, ctx: JobContext, started: float) -> None:
        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            dataset = self.datasets.get(job.dataset)
            if dataset is None:
                raise PermanentError(f"dataset '{job.dataset}' is not installed on this worker")
            files = dataset.run(ctx)
            ctx.checkpoint(ctx.rows_done)  # a stop that arrived during the last batch wins
        except (StopRequested, duckdb.InterruptException) as exc:
            if not ctx.stop_event.is_set():
                raise RuntimeError("DuckDB query interrupted without a stop request") from exc
            self._discard(job, ctx)
            self.jobs.stopped(job, elapsed(), ctx.progress())
            log.info("job.stopped", request_id=job.request_id)
        except (PermanentError, ConfigError) as exc:
            self._discard(job, ctx)
            self.jobs.fail(
                job, str(exc), transient=False, execution_ms=elapsed(), progress=ctx.progress()
            )
            log.info("job.failed", request_id=job.request_id, reason=str(exc))
        except Exception as exc:
            self._discard(job, ctx)
            message = public_message(exc)
            self.jobs.fail(
                job, message, transient=True, execution_ms=elapsed(), progress=ctx.progress()
            )
            log.exception("job.error", request_id=job.request_id)
        else:
            if self.jobs.succeed(job, files, elapsed(), ctx.progress()) is None:
                log.warning("job.lease_lost", request_id=job.request_id)
                return
            log.info(
                "job.succeeded",
                request_id=job.request_id,
                rows=sum(f.rows for f in files),
                ms=elapsed(),
            )

    def _discard(self, job: Job, ctx: JobContext) -> None:
        """Remove every file a run published before it stopped or failed, and roll back the
        rows it wrote (an import's, by task id: :meth:`Dataset.rollback`).

        Not when the lease was lost: the job may already run elsewhere, writing those keys.
        """
        if ctx.lease_lost:
            return
        self.blobs.delete_prefix(job_prefix(job) + "/")
        dataset = self.datasets.get(job.dataset)
        undone = dataset.rollback(job, self.registry) if dataset is not None else None
        if undone is not None:
            ctx.details["rolledBack"] = undone
            log.info("job.rolled_back", request_id=job.request_id, rows=undone)


def public_message(exc: Exception) -> str:
    """What a failure says to API clients: the error's type and first line only, because
    later lines (SQL parameters, database DETAIL lines) can quote stored data."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


class _Heartbeat:
    """Renews the lease and watches the stop flag while a job runs."""

    def __init__(self, jobs: JobManager, ctx: JobContext, lease_seconds: float) -> None:
        self.jobs, self.ctx = jobs, ctx
        self.interval = min(1.0, lease_seconds / 3)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                current = self.jobs.heartbeat(self.ctx.job, self.ctx.progress())
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("job.heartbeat_failed", request_id=self.ctx.job.request_id)
                continue
            if current is None:
                self.ctx.lease_lost = True
            if current is None or current.stop_requested:
                self.ctx.request_stop()
