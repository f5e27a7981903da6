"""Job stores: where ``job_request`` rows live.

:class:`JobStore` is the small set of primitives the :class:`~data_exhaust.manager.JobManager`
needs; :class:`SqlJobStore` keeps rows in SQLite or Postgres, and
:class:`~data_exhaust.testing.MemoryJobStore` in a dict (a testing tool). Every compare-and-set
is atomic, so two workers never claim one job.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import anyio.to_thread
from sqlalchemy import Connection, Engine, Row, Update, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from data_exhaust.job_reads import JobBuilder, LoopReads, ReadInThread, open_loop_reads
from data_exhaust.jobs import Job, OutputFile, Status
from data_exhaust.models import JOBS, JobRequest

# Job field -> job_request column.
COLUMNS = {
    "tag": "tag",
    "request_id": "request_id",
    "dataset": "job_id",
    "status": "status",
    "config": "request_data",
    "channel": "requested_channel",
    "requested_by": "requested_by",
    "submitted_at": "dt_job_submitted",
    "completed_at": "dt_job_completed",
    "execution_ms": "execution_time",
    "message": "err_message",
}
#: (Job field, job_request column) pairs, computed once: ``_to_job`` runs for every job read.
JOB_COLUMNS = tuple((f.name, COLUMNS.get(f.name, f.name)) for f in fields(Job))


@dataclass(frozen=True)
class JobFilter:
    """What :meth:`JobStore.search` selects; every given criterion must hold."""

    channels: Collection[str] | None = None
    tags: Collection[str] | None = None
    dataset: str | None = None
    status: Status | None = None
    kind: str | None = None
    submitted_from: datetime | None = None
    submitted_before: datetime | None = None

    def matches(self, job: Job) -> bool:
        return (
            (self.channels is None or job.channel in self.channels)
            and (self.tags is None or job.tag in self.tags)
            and (self.dataset is None or job.dataset == self.dataset)
            and (self.status is None or job.status == self.status)
            and (self.kind is None or job.kind == self.kind)
            and (self.submitted_from is None or job.submitted_at >= self.submitted_from)
            and (self.submitted_before is None or job.submitted_at < self.submitted_before)
        )


class JobStore(ABC):
    """Primitives over the job table. Only the job manager calls these."""

    @abstractmethod
    def insert(self, job: Job) -> bool:
        """Add ``job``; False when its request id exists already."""

    @abstractmethod
    def get(self, request_id: str) -> Job | None: ...

    @abstractmethod
    def search(self, where: JobFilter, limit: int, offset: int = 0) -> tuple[int, list[Job]]:
        """Total number of matches and one page of them, newest submission first."""

    def page(self, where: JobFilter, limit: int, offset: int = 0) -> list[Job]:
        """One page of :meth:`search` without the total (which may cost a query of its own)."""
        return self.search(where, limit, offset)[1]

    @abstractmethod
    def update(
        self,
        request_id: str,
        changes: dict[str, Any],
        *,
        if_status: Collection[Status] | None = None,
        if_owner: str | None = None,
    ) -> Job | None:
        """Apply ``changes`` atomically if the conditions hold; the new job, else None."""

    @abstractmethod
    def claim(
        self, owner: str, now: datetime, lease_until: datetime, request_id: str | None = None
    ) -> Job | None:
        """Atomically move the oldest due SUBMITTED job (or job ``request_id`` if it is one)
        to PROCESSING, leased by ``owner``."""

    @abstractmethod
    def expired_leases(self, now: datetime) -> list[Job]: ...

    @abstractmethod
    def purgeable(self, completed_before: datetime) -> list[Job]:
        """SUCCESS jobs with files still present, finished before the given time."""

    @abstractmethod
    def release(self, dataset: str | None, now: datetime) -> int:
        """Make every waiting SUBMITTED job (of ``dataset``) due now; how many."""

    # -- reads from an event loop: the API's read and list routes -------------------------

    async def open_loop_reads(self) -> None:
        """Prepare :meth:`get_async` and :meth:`tag_page_async` for the running event loop
        (the API calls this at start-up and :meth:`close_loop_reads` at shutdown)."""
        return None  # nothing to prepare for the default, which reads in a worker thread

    async def close_loop_reads(self) -> None:
        """Release what :meth:`open_loop_reads` opened."""
        return None

    async def get_async(self, request_id: str) -> Job | None:
        """:meth:`get` for a caller in an event loop; by default in a worker thread."""
        return await anyio.to_thread.run_sync(self.get, request_id)

    async def tag_page_async(self, tag: str, limit: int) -> list[Job]:
        """A tag's newest ``limit`` jobs (:meth:`page` of ``tags=[tag]``) from an event loop."""
        return await anyio.to_thread.run_sync(self.page, JobFilter(tags=[tag]), limit)

    def loop_version(self) -> Hashable | None:
        """From the event loop: a value equal to an earlier one only if no job was written in
        between (by anyone), so that what was read then may be used again; None where the
        store cannot tell cheaply. Must be read *before* the jobs it is kept with."""
        return None


class SqlJobStore(JobStore):
    """The job table in SQLite or Postgres through SQLAlchemy Core.

    Core statements, not ORM sessions, and an ``UPDATE … RETURNING`` that gives the job as
    it was written: the ORM's unit of work and its bulk-update bookkeeping cost more than
    the statements (with them, a job's submit, claim, and run and success of a one-row job
    took 1.7-2.0, 2.5-2.9 and 5.0-6.0 ms of CPU on a slow 2-core machine; bench/HISTORY.md,
    *Thirteenth sitting*)."""

    def __init__(self, engine: Engine, loop_connections: int = 10) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._returning = engine.dialect.update_returning
        self._loop_connections = loop_connections
        self._loop_reads: LoopReads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # The API's read and list without a thread hop (job_reads.py): from the loop that opened
    # them; from any other caller, or when SQLite would have to wait, in a worker thread.

    async def open_loop_reads(self) -> None:
        await self.close_loop_reads()
        self._loop_reads = await open_loop_reads(
            self.engine, JobBuilder(JOB_COLUMNS, job_of), self._loop_connections
        )
        self._loop = asyncio.get_running_loop()

    async def close_loop_reads(self) -> None:
        reads, self._loop_reads, self._loop = self._loop_reads, None, None
        if reads is not None:
            await reads.close()

    def _reads_here(self) -> LoopReads | None:
        running = asyncio.get_running_loop()
        return self._loop_reads if running is self._loop else None

    async def get_async(self, request_id: str) -> Job | None:
        reads = self._reads_here()
        if reads is not None:
            with contextlib.suppress(ReadInThread):
                return await reads.get(request_id)
        return await super().get_async(request_id)

    async def tag_page_async(self, tag: str, limit: int) -> list[Job]:
        reads = self._reads_here()
        if reads is not None:
            with contextlib.suppress(ReadInThread):
                return await reads.tag_page(tag, limit)
        return await super().tag_page_async(tag, limit)

    def loop_version(self) -> Hashable | None:
        """SQLite's ``data_version`` on the loop's connection; None on Postgres (a query per
        poll is what a version would save) and outside the loop that opened the reads."""
        reads = self._reads_here()
        return reads.version() if reads is not None else None

    def insert(self, job: Job) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(JOBS).values(**_to_row(job)))
        except IntegrityError:
            return False
        return True

    # Reads go through Core rows, not ORM objects: the API reads a job on every poll, and an
    # ORM session (identity map, snapshots, instance loading) costs more than the query.
    def get(self, request_id: str) -> Job | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(JOBS).where(JOBS.c.request_id == request_id)).first()
            return _to_job(row) if row else None

    def search(self, where: JobFilter, limit: int, offset: int = 0) -> tuple[int, list[Job]]:
        conditions = _sql_conditions(where)
        with self.engine.connect() as connection:
            total = connection.scalar(select(func.count()).select_from(JOBS).where(*conditions))
            return int(total or 0), self._page(connection, where, limit, offset)

    def page(self, where: JobFilter, limit: int, offset: int = 0) -> list[Job]:
        with self.engine.connect() as connection:
            return self._page(connection, where, limit, offset)

    def _page(self, connection: Connection, where: JobFilter, limit: int, offset: int) -> list[Job]:
        rows = connection.execute(
            select(JOBS)
            .where(*_sql_conditions(where))
            .order_by(JOBS.c.dt_job_submitted.desc(), JOBS.c.request_id)
            .limit(limit)
            .offset(offset)
        )
        return [_to_job(row) for row in rows]

    def update(
        self,
        request_id: str,
        changes: dict[str, Any],
        *,
        if_status: Collection[Status] | None = None,
        if_owner: str | None = None,
    ) -> Job | None:
        statement = update(JOBS).where(JOBS.c.request_id == request_id)
        if if_status is not None:
            statement = statement.where(JOBS.c.status.in_([str(s) for s in if_status]))
        if if_owner is not None:
            statement = statement.where(JOBS.c.lease_owner == if_owner)
        with self.engine.begin() as connection:
            return self._update_one(
                connection, statement.values(**_to_columns(changes)), request_id
            )

    def _update_one(self, connection: Connection, statement: Update, request_id: str) -> Job | None:
        """Run ``statement``, an update of job ``request_id`` alone: the job as it was
        written, or None when the statement's conditions did not match it."""
        if self._returning:
            row = connection.execute(statement.returning(*JOBS.c)).first()
        elif connection.execute(statement).rowcount == 1:  # SQLite before 3.35: no RETURNING
            row = connection.execute(select(JOBS).where(JOBS.c.request_id == request_id)).first()
        else:
            row = None
        return _to_job(row) if row is not None else None

    def claim(
        self, owner: str, now: datetime, lease_until: datetime, request_id: str | None = None
    ) -> Job | None:
        due = (
            select(JOBS.c.request_id)
            .where(JOBS.c.status == Status.SUBMITTED.value, JOBS.c.run_after <= now)
            .order_by(JOBS.c.run_after, JOBS.c.dt_job_submitted)
        )
        if request_id is not None:
            due = due.where(JOBS.c.request_id == request_id)
        if self._postgres:  # rows locked by another claimer are skipped, not waited for
            due = due.limit(1).with_for_update(skip_locked=True)
        else:  # SQLite serialises writers; the status check below settles any race
            due = due.limit(8)
        values = _to_columns(
            {
                "status": Status.PROCESSING,
                "lease_owner": owner,
                "lease_expires_at": lease_until,
                "last_updated": now,
            }
        )
        with self.engine.begin() as connection:
            for candidate in list(connection.scalars(due)):
                claim = update(JOBS).where(
                    JOBS.c.request_id == candidate, JOBS.c.status == Status.SUBMITTED.value
                )
                job = self._update_one(connection, claim.values(**values), candidate)
                if job is not None:
                    return job
        return None

    def expired_leases(self, now: datetime) -> list[Job]:
        return self._select(JOBS.c.status == Status.PROCESSING.value, JOBS.c.lease_expires_at < now)

    def purgeable(self, completed_before: datetime) -> list[Job]:
        return self._select(
            JOBS.c.status == Status.SUCCESS.value,
            JOBS.c.files_purged.is_(False),
            JOBS.c.dt_job_completed < completed_before,
        )

    def release(self, dataset: str | None, now: datetime) -> int:
        statement = update(JOBS).where(
            JOBS.c.status == Status.SUBMITTED.value, JOBS.c.run_after > now
        )
        if dataset is not None:
            statement = statement.where(JOBS.c.job_id == dataset)
        with self.engine.begin() as connection:
            return int(connection.execute(statement.values(run_after=now)).rowcount)

    def _select(self, *conditions: Any) -> list[Job]:
        with self.engine.connect() as connection:
            return [_to_job(row) for row in connection.execute(select(JOBS).where(*conditions))]


def _sql_conditions(where: JobFilter) -> list[Any]:
    conditions: list[Any] = []
    if where.channels is not None:
        conditions.append(JOBS.c.requested_channel.in_(list(where.channels)))
    if where.tags is not None:
        conditions.append(JOBS.c.tag.in_(list(where.tags)))
    if where.dataset is not None:
        conditions.append(JOBS.c.job_id == where.dataset)
    if where.status is not None:
        conditions.append(JOBS.c.status == where.status.value)
    if where.kind is not None:
        conditions.append(JOBS.c.kind == where.kind)
    if where.submitted_from is not None:
        conditions.append(JOBS.c.dt_job_submitted >= where.submitted_from)
    if where.submitted_before is not None:
        conditions.append(JOBS.c.dt_job_submitted < where.submitted_before)
    return conditions


def _to_columns(changes: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "files":
            files: list[OutputFile] = value
            values["files"] = [f.as_dict() for f in files]
            values["download_urls"] = [f.key for f in files]
            values["dt_file_created"] = changes.get("completed_at") if files else None
        elif name == "status":
            values["status"] = Status(value).value
        else:
            values[COLUMNS.get(name, name)] = value
    return values


def _to_row(job: Job) -> dict[str, Any]:
    return _to_columns({f.name: getattr(job, f.name) for f in fields(job)})


def _to_job(row: JobRequest | Row[Any]) -> Job:
    """The job of an ORM row or of a Core row of ``job_request`` (same attribute names)."""
    return job_of({name: getattr(row, column) for name, column in JOB_COLUMNS})


def job_of(values: dict[str, Any]) -> Job:
    """The job of the values of :data:`JOB_COLUMNS` by field name, read through the column
    types (``job_reads`` builds these from raw rows)."""
    values["status"] = Status(values["status"])
    values["files"] = [OutputFile(**f) for f in values["files"] or []]
    values["progress"] = dict(values["progress"] or {})
    return Job(**values)
