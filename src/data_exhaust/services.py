"""The parts of one running process, built from :class:`Settings` in one place."""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine

from data_exhaust.audit import AuditLog
from data_exhaust.datasets import Dataset, load_datasets
from data_exhaust.db import make_engine
from data_exhaust.executor import EmbeddedExecutor, Executor
from data_exhaust.heap import use_system_allocator
from data_exhaust.ingest import Ingestor
from data_exhaust.jobs import Job
from data_exhaust.keys import KeyStore
from data_exhaust.lake import Lake
from data_exhaust.manager import JobManager
from data_exhaust.query_db import QueryDatabase
from data_exhaust.registry import Registry
from data_exhaust.settings import Settings
from data_exhaust.storage import BlobStore, open_blob_store
from data_exhaust.store import SqlJobStore
from data_exhaust.worker import Worker, job_prefix


@dataclass
class Services:
    settings: Settings
    engine: Engine
    jobs: JobManager
    blobs: BlobStore
    lake: Lake
    keys: KeyStore
    ingestor: Ingestor
    registry: Registry
    audit: AuditLog
    datasets: dict[str, Dataset] = field(default_factory=dict)

    executor: Executor | None = None
    _last_compaction: float = 0.0
    _queries: QueryDatabase | None = None

    @property
    def queries(self) -> QueryDatabase:
        """The process's DuckDB database for jobs, opened at its first query."""
        if self._queries is None:
            spill = self.settings.data_dir / "spill"
            self._queries = QueryDatabase(self.settings.duckdb_memory_limit, spill)
        return self._queries

    def today(self) -> date:
        return datetime.now(self.settings.tz).date()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
        if self._queries is not None:
            self._queries.close()
        self.engine.dispose()

    def notify(self) -> None:
        """A job was submitted or released: wake the executor, if this process has one."""
        if self.executor is not None:
            self.executor.notify()

    def stop_job(self, request_id: str, tag: str | None = None) -> Job:
        """Stop a job (:meth:`JobManager.stop`: the durable flag every worker reads), and at
        once if this process's executor is running it: without the heartbeat's delay, a stop
        also wins against a worker whose heartbeat waits for SQLite's write lock."""
        job = self.jobs.stop(request_id, tag)
        if job.stop_requested and self.executor is not None:
            self.executor.stop_running(job.request_id)
        return job

    def worker(self, name: str | None = None) -> Worker:
        return Worker(
            self.jobs,
            self.blobs,
            self.lake,
            self.datasets,
            self.settings,
            name,
            registry=self.registry,
            queries=self.queries,
        )

    def make_executor(self, threads: int | None = None) -> Executor:
        """The executor ``EXHAUST_EXECUTOR`` names (the one place that choice is made).

        ``embedded``: worker threads in this process; ``celery``: publishes jobs to the broker
        and sweeps for lost messages here, while ``exhaust worker`` processes run them. Every
        process that runs jobs comes here, so this is where pyarrow is put on ``malloc``
        (:func:`use_system_allocator`: the worker returns an export's memory after each job).
        """
        use_system_allocator()
        if self.settings.executor == "celery":
            from data_exhaust.celery_executor import CeleryExecutor

            return CeleryExecutor(self, concurrency=threads)
        return self.embedded_executor(threads)

    def embedded_executor(self, threads: int | None = None) -> EmbeddedExecutor:
        count = self.settings.workers if threads is None else threads
        return EmbeddedExecutor(
            self.worker(),
            self.jobs,
            count,
            self.settings.poll_seconds,
            maintenance=self.maintenance,
        )

    def maintenance(self) -> None:
        """Periodic upkeep: recover dead workers' jobs, purge old files, compact the lake."""
        self.jobs.recover_expired()
        self.jobs.purge_expired(self.delete_files)
        interval = self.settings.compact_interval_seconds
        if interval and time.monotonic() - self._last_compaction >= interval:
            self._last_compaction = time.monotonic()
            self.compact_lake()

    def delete_files(self, job: Job) -> None:
        self.blobs.delete_prefix(job_prefix(job) + "/")

    def rollback(self, job: Job) -> dict[str, Any] | None:
        """Undo the rows of a killed run of ``job`` (an import); its new progress, or None."""
        dataset = self.datasets.get(job.dataset)
        undone = dataset.rollback(job, self.registry) if dataset is not None else None
        return None if undone is None else {**job.progress, "rolledBack": undone}

    def compact_lake(self) -> int | None:
        """Compact the lake unless another process is doing it (an exclusive file lock)."""
        lock_path = self.settings.data_dir / "compaction.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return self.lake.compact()


def build_services(settings: Settings) -> Services:
    """Connect every part named by ``settings`` (the database must be migrated)."""
    engine = make_engine(settings.resolved_database_url)
    blobs = open_blob_store(settings.resolved_storage_url, settings.secret)
    lake = Lake.from_url(settings.resolved_lake_url, merge_files=settings.lake_merge_files)
    jobs = JobManager(SqlJobStore(engine), settings)
    return Services(
        settings=settings,
        engine=engine,
        jobs=jobs,
        blobs=blobs,
        lake=lake,
        keys=KeyStore(engine, settings.key_cache_seconds),
        ingestor=Ingestor(lake, engine),
        registry=Registry(engine, settings.secret_box),
        audit=AuditLog(engine),
        datasets=load_datasets(settings.plugins),
    )
