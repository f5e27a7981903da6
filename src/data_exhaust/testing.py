"""In-memory implementations of the pluggable parts: testing tools that ship with the package.

Each keeps the contract of its base class in a dict guarded by a lock, and runs the same
contract test suite as the real implementation (``tests/integration/test_job_store.py``,
``tests/integration/test_storage.py``). The third, :class:`~data_exhaust.executor.InlineExecutor`,
lives beside the executors it stands in for.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import threading
from collections.abc import Collection, Hashable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from data_exhaust.jobs import Job, Status
from data_exhaust.storage import (
    CHUNK_SIZE,
    BlobInfo,
    BlobStore,
    check_range,
    validate_key,
    validate_prefix,
)
from data_exhaust.store import JobFilter, JobStore

_STORES = itertools.count()


class MemoryJobStore(JobStore):
    """Jobs in a dict guarded by a lock: the same contract, for tests and experiments."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._number = next(_STORES)
        self._writes = 0  # counts every change: the loop_version

    def loop_version(self) -> Hashable | None:
        with self._lock:
            return self._number, self._writes

    def insert(self, job: Job) -> bool:
        with self._lock:
            if job.request_id in self._jobs:
                return False
            self._jobs[job.request_id] = copy.deepcopy(job)
            self._writes += 1
            return True

    def get(self, request_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(request_id)
            return copy.deepcopy(job) if job else None

    async def get_async(self, request_id: str) -> Job | None:
        return self.get(request_id)  # a dict lookup: no reason for a thread

    async def tag_page_async(self, tag: str, limit: int) -> list[Job]:
        return self.page(JobFilter(tags=[tag]), limit)

    def search(self, where: JobFilter, limit: int, offset: int = 0) -> tuple[int, list[Job]]:
        with self._lock:
            found = [j for j in self._jobs.values() if where.matches(j)]
        found.sort(key=lambda j: (-j.submitted_at.timestamp(), j.request_id))
        return len(found), copy.deepcopy(found[offset : offset + limit])

    def update(
        self,
        request_id: str,
        changes: dict[str, Any],
        *,
        if_status: Collection[Status] | None = None,
        if_owner: str | None = None,
    ) -> Job | None:
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None or (if_status is not None and job.status not in if_status):
                return None
            if if_owner is not None and job.lease_owner != if_owner:
                return None
            self._jobs[request_id] = replace(job, **copy.deepcopy(changes))
            self._writes += 1
            return copy.deepcopy(self._jobs[request_id])

    def claim(
        self, owner: str, now: datetime, lease_until: datetime, request_id: str | None = None
    ) -> Job | None:
        with self._lock:
            due = [
                j
                for j in self._jobs.values()
                if j.status == Status.SUBMITTED
                and j.run_after <= now
                and request_id in (None, j.request_id)
            ]
            if not due:
                return None
            job = min(due, key=lambda j: (j.run_after, j.submitted_at))
            job.status, job.lease_owner, job.lease_expires_at = (
                Status.PROCESSING,
                owner,
                lease_until,
            )
            job.last_updated = now
            self._writes += 1
            return copy.deepcopy(job)

    def expired_leases(self, now: datetime) -> list[Job]:
        return self._where(
            lambda j: (
                j.status == Status.PROCESSING
                and j.lease_expires_at is not None
                and j.lease_expires_at < now
            )
        )

    def purgeable(self, completed_before: datetime) -> list[Job]:
        return self._where(
            lambda j: (
                j.status == Status.SUCCESS
                and not j.files_purged
                and j.completed_at is not None
                and j.completed_at < completed_before
            )
        )

    def release(self, dataset: str | None, now: datetime) -> int:
        with self._lock:
            waiting = [
                j
                for j in self._jobs.values()
                if j.status == Status.SUBMITTED
                and j.run_after > now
                and (dataset is None or j.dataset == dataset)
            ]
            for job in waiting:
                job.run_after = now
            self._writes += bool(waiting)
            return len(waiting)

    def _where(self, predicate: Any) -> list[Job]:
        with self._lock:
            return copy.deepcopy([j for j in self._jobs.values() if predicate(j)])


class MemoryBlobStore(BlobStore):
    """The same contract in a dict, guarded by a lock (a testing tool).

    Blobs are immutable ``bytes``; a reader works on the version it found, so a concurrent
    replace never tears a read. The ETag is the SHA-256 of the content.
    """

    def __init__(self, secret: bytes = b"memory-store-secret") -> None:
        super().__init__(secret)
        self._blobs: dict[str, tuple[bytes, BlobInfo]] = {}
        self._lock = threading.Lock()

    def _store(self, key: str, data: bytes) -> None:
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        info = BlobInfo(key=key, size=len(data), etag=etag, modified=datetime.now(UTC))
        with self._lock:
            self._blobs[key] = (data, info)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        validate_key(key)
        with io.BytesIO() as buffer:
            yield buffer
            self._store(key, buffer.getvalue())

    def put_file(self, key: str, path: Path) -> None:
        validate_key(key)
        source = Path(path)
        self._store(key, source.read_bytes())
        source.unlink()

    def stat(self, key: str) -> BlobInfo | None:
        validate_key(key)
        with self._lock:
            entry = self._blobs.get(key)
        return None if entry is None else entry[1]

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        check_range(start, end)
        return self._chunks(validate_key(key), start, end)

    def _chunks(self, key: str, start: int, end: int | None) -> Iterator[bytes]:
        with self._lock:
            entry = self._blobs.get(key)
        if entry is None:
            raise FileNotFoundError(f"no blob {key!r}")
        view = memoryview(entry[0])[start:end]
        for offset in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[offset : offset + CHUNK_SIZE])

    def keys(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        with self._lock:
            return iter(sorted(key for key in self._blobs if key.startswith(prefix)))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete every blob: the prefix is empty")
        validate_prefix(prefix)
        with self._lock:
            doomed = [key for key in self._blobs if key.startswith(prefix)]
            for key in doomed:
                del self._blobs[key]
        return len(doomed)
