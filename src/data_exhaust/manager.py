"""The job manager: every read and write of the job table goes through here.

It owns the lifecycle of api.md §3 (submit with dedup/resubmit, claim, heartbeat, finish,
retry with back-off, stop, recovery of dead workers' jobs, retention). Routes, CLI commands
and workers call it; it calls a :class:`~data_exhaust.store.JobStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from croniter import croniter

from data_exhaust.jobs import DEDUPLICATED, Job, OutputFile, Status, request_id_for, stored_tag
from data_exhaust.settings import Settings
from data_exhaust.store import JobFilter, JobStore

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobNotFound(LookupError):
    def __init__(self) -> None:
        super().__init__("no job available with the given request_id and tag")


class JobConflict(Exception):
    """The job is in a state that does not allow the operation."""


@dataclass(frozen=True)
class Submission:
    """A validated request, ready to become a job."""

    dataset: str
    tag: str  # as the client sent it
    channel: str
    requested_by: str | None
    config: dict[str, Any]
    output_format: str = "csv"
    kind: str = "dataset"
    secret_data: str | None = None

    @property
    def request_id(self) -> str:
        return request_id_for(
            dataset=self.dataset,
            tag=self.tag,
            channel=self.channel,
            requested_by=self.requested_by,
            dataset_config=self.config,
            output_format=self.output_format,
        )


class JobManager:
    """The lifecycle of jobs, over a job store."""

    def __init__(self, store: JobStore, settings: Settings, clock: Clock = utcnow) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    # -- client side ---------------------------------------------------------------------

    def submit(self, submission: Submission) -> tuple[Job, bool]:
        """The job for ``submission`` and whether it already existed unchanged (deduplicated)."""
        request_id = submission.request_id
        for _ in range(3):  # a concurrent identical submit can win a race: then look again
            existing = self.store.get(request_id)
            if existing is None:
                job = self._new_job(submission, request_id)
                if self.store.insert(job):
                    log.info("job.submitted", request_id=request_id, dataset=job.dataset)
                    return job, False
                continue
            if existing.status in DEDUPLICATED and not existing.files_purged:
                return existing, True
            requeued = self._requeue(existing, submission)
            if requeued is not None:
                return requeued, False
        raise JobConflict("the request is being changed by another client; try again")

    def get(self, request_id: str, tag: str | None = None) -> Job:
        """The job with ``request_id`` (and stored tag ``tag`` when given), else JobNotFound."""
        job = self.store.get(request_id)
        if job is None or (tag is not None and job.tag != tag):
            raise JobNotFound
        return job

    async def get_async(self, request_id: str, tag: str | None = None) -> Job:
        """:meth:`get` from an event loop (the API's read route: no thread hop)."""
        job = await self.store.get_async(request_id)
        if job is None or (tag is not None and job.tag != tag):
            raise JobNotFound
        return job

    async def list_tag_async(self, tag: str, limit: int) -> list[Job]:
        """:meth:`list_tag` from an event loop (the API's list route)."""
        return await self.store.tag_page_async(tag, limit)

    def poll_version(self) -> Hashable | None:
        """From the event loop: equal to an earlier value only if no job changed in between
        (what the polled routes check before reusing what they answered; None: reuse nothing).
        Read it before the jobs it goes with."""
        return self.store.loop_version()

    async def open_loop_reads(self) -> None:
        """Let the running event loop read jobs without a thread hop (see job_reads.py)."""
        await self.store.open_loop_reads()

    async def close_loop_reads(self) -> None:
        await self.store.close_loop_reads()

    def find(self, request_id: str) -> Job | None:
        """The job with ``request_id``, whatever its tag (for internal bookkeeping)."""
        return self.store.get(request_id)

    def list_tag(self, tag: str, limit: int) -> list[Job]:
        return self.store.page(JobFilter(tags=[tag]), limit)

    def search(self, where: JobFilter, limit: int, offset: int = 0) -> tuple[int, list[Job]]:
        return self.store.search(where, limit, offset)

    def stop(self, request_id: str, tag: str | None = None) -> Job:
        """Stop a job: at once if waiting, at the worker's next checkpoint if running."""
        for _ in range(5):
            job = self.get(request_id, tag)
            now = self.clock()
            if job.status == Status.STOPPED:
                return job
            if job.status in (Status.SUCCESS, Status.FAILED):
                raise JobConflict(f"job already finished with status {job.status}")
            if job.status == Status.SUBMITTED:
                changes = self._finished(job, Status.STOPPED, "stopped on request", now)
                stopped = self.store.update(request_id, changes, if_status=[Status.SUBMITTED])
            else:
                changes = {"stop_requested": True, "last_updated": now}
                stopped = self.store.update(request_id, changes, if_status=[Status.PROCESSING])
            if stopped is not None:
                log.info("job.stop_requested", request_id=request_id, status=stopped.status)
                return stopped
        raise JobConflict("the job changed state while stopping it; try again")

    def release(self, dataset: str | None = None) -> int:
        """Make waiting jobs (of ``dataset``) run now instead of at the scheduled window."""
        return self.store.release(dataset, self.clock())

    # -- worker side -----------------------------------------------------------------------

    def claim(self, owner: str, request_id: str | None = None) -> Job | None:
        """Lease the oldest due job (or job ``request_id``, if it is waiting and due)."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)
        return self.store.claim(owner, now, lease_until, request_id)

    def heartbeat(self, job: Job, progress: dict[str, Any] | None = None) -> Job | None:
        """Extend the lease (and record progress); None when the lease was lost."""
        now = self.clock()
        changes: dict[str, Any] = {
            "lease_expires_at": now + timedelta(seconds=self.settings.lease_seconds)
        }
        if progress is not None:
            changes["progress"] = progress
        return self._owned_update(job, changes)

    def succeed(
        self,
        job: Job,
        files: list[OutputFile],
        execution_ms: int,
        progress: dict[str, Any] | None = None,
    ) -> Job | None:
        changes = self._finished(job, Status.SUCCESS, "", self.clock())
        changes.update(files=files, execution_ms=execution_ms, files_purged=False)
        rows = sum(f.rows for f in files)
        base = job.progress if progress is None else progress
        changes["progress"] = {**base, "rowsWritten": rows, "percent": 100.0}
        return self._owned_update(job, changes)

    def stopped(
        self, job: Job, execution_ms: int, progress: dict[str, Any] | None = None
    ) -> Job | None:
        changes = self._finished(job, Status.STOPPED, "stopped on request", self.clock())
        changes["execution_ms"] = execution_ms
        if progress is not None:
            changes["progress"] = progress
        return self._owned_update(job, changes)

    def fail(
        self,
        job: Job,
        message: str,
        *,
        transient: bool,
        execution_ms: int | None = None,
        progress: dict[str, Any] | None = None,
    ) -> Job | None:
        """Record a failed execution: retried after a back-off if transient and allowed."""
        changes = self._failure(job, message, transient=transient)
        changes["execution_ms"] = execution_ms
        if progress is not None:
            changes["progress"] = progress
        return self._owned_update(job, changes)

    # -- maintenance -----------------------------------------------------------------------

    def recover_expired(self) -> int:
        """Jobs whose worker stopped heartbeating go back to SUBMITTED (or end)."""
        recovered = 0
        for job in self.store.expired_leases(self.clock()):
            if job.stop_requested:
                changes = self._finished(job, Status.STOPPED, "stopped on request", self.clock())
            else:
                changes = self._failure(job, "the worker running this job was lost", transient=True)
            if (
                self.store.update(
                    job.request_id, changes, if_status=[Status.PROCESSING], if_owner=job.lease_owner
                )
                is not None
            ):
                log.warning("job.lease_expired", request_id=job.request_id, owner=job.lease_owner)
                recovered += 1
        return recovered

    def purge_expired(self, delete_files: Callable[[Job], None]) -> int:
        """Delete the files of jobs older than the retention period; how many jobs."""
        cutoff = self.clock() - timedelta(days=self.settings.retention_days)
        purged = 0
        for job in self.store.purgeable(cutoff):
            delete_files(job)
            message = f"files purged after {self.settings.retention_days} days; submit again"
            if (
                self.store.update(
                    job.request_id,
                    {"files_purged": True, "message": message},
                    if_status=[Status.SUCCESS],
                )
                is not None
            ):
                purged += 1
        return purged

    # -- helpers ---------------------------------------------------------------------------

    def _new_job(self, submission: Submission, request_id: str) -> Job:
        now = self.clock()
        return Job(
            tag=stored_tag(submission.tag, submission.channel),
            request_id=request_id,
            dataset=submission.dataset,
            status=Status.SUBMITTED,
            config=submission.config,
            channel=submission.channel,
            requested_by=submission.requested_by,
            submitted_at=now,
            last_updated=now,
            run_after=self.next_run(now),
            output_format=submission.output_format,
            kind=submission.kind,
            secret_data=submission.secret_data,
        )

    def _requeue(self, job: Job, submission: Submission) -> Job | None:
        now = self.clock()
        changes: dict[str, Any] = {
            "status": Status.SUBMITTED,
            "submitted_at": now,
            "last_updated": now,
            "run_after": self.next_run(now),
            "completed_at": None,
            "execution_ms": None,
            "message": None,
            "progress": {},
            "stop_requested": False,
            "files": [],
            "files_purged": False,
            "lease_owner": None,
            "lease_expires_at": None,
            "secret_data": submission.secret_data,
        }
        allowed = [Status.FAILED, Status.STOPPED] + ([Status.SUCCESS] if job.files_purged else [])
        requeued = self.store.update(job.request_id, changes, if_status=allowed)
        if requeued is not None:
            log.info("job.resubmitted", request_id=job.request_id, previous=job.status)
        return requeued

    def next_run(self, now: datetime) -> datetime:
        """When a job submitted ``now`` may start: now, or the next cron window."""
        if self.settings.run_schedule == "on-demand":
            return now
        local = now.astimezone(self.settings.tz)
        nxt: datetime = croniter(self.settings.run_schedule, local).get_next(datetime)
        return nxt.astimezone(UTC)

    def _finished(self, job: Job, status: Status, message: str, now: datetime) -> dict[str, Any]:
        return {
            "status": status,
            "message": message,
            "completed_at": now,
            "last_updated": now,
            "lease_owner": None,
            "lease_expires_at": None,
            "stop_requested": job.stop_requested or status == Status.STOPPED,
        }

    def _failure(self, job: Job, message: str, *, transient: bool) -> dict[str, Any]:
        now = self.clock()
        attempts = job.attempts + 1
        if transient and attempts < self.settings.max_attempts:
            delay = self.settings.retry_backoff_seconds * 2 ** (attempts - 1)
            retry_at = now + timedelta(seconds=delay)
            return {
                "status": Status.SUBMITTED,
                "attempts": attempts,
                "last_updated": now,
                "run_after": retry_at,
                "lease_owner": None,
                "lease_expires_at": None,
                "message": f"attempt {attempts} failed ({message}); retrying at "
                f"{retry_at.isoformat(timespec='seconds')}",
            }
        changes = self._finished(job, Status.FAILED, message, now)
        changes["attempts"] = attempts
        return changes

    def _owned_update(self, job: Job, changes: dict[str, Any]) -> Job | None:
        """Apply ``changes`` only while this execution still holds the job's lease."""
        return self.store.update(
            job.request_id, changes, if_status=[Status.PROCESSING], if_owner=job.lease_owner
        )
