"""What the polled routes (read, list) answered, used again while no job has changed.

Clients poll ``read`` and ``list`` until their jobs are done, and most polls find nothing
changed. Reading the rows again, building a :class:`~data_exhaust.jobs.Job` of each and
rendering it cost 15-17 µs of CPU per listed job, more than half of what the whole
framework costs a request (bench/README.md, API). So each app keeps the jobs it rendered for
a read or a page of a list, with the job store's version read before them
(:meth:`~data_exhaust.manager.JobManager.poll_version`: SQLite's ``data_version``, which any
commit by another connection or process changes). A poll that finds the same version uses
them again; any other version, or a store that has none (Postgres), reads afresh.

Only what must be new on every poll is made per poll: a finished job's download links
(signed for the caller, expiring from now) and every job's ``expiresAt``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from data_exhaust.api.render import has_links
from data_exhaust.jobs import Job
from data_exhaust.manager import JobManager

#: A job's API object from the job, its download links and their expiry (epoch ms):
#: :func:`~data_exhaust.api.render.dataset_job` or :func:`~data_exhaust.api.render.report_job`.
Formatter = Callable[[Job, list[str], int], dict[str, Any]]
#: A job's fresh download links and their expiry (epoch ms), for the caller of this poll.
Links = Callable[[Job], tuple[list[str], int]]
#: Jobs kept at most, over every read and page: ~2.3 KB each with their rendering (measured
#: with tracemalloc: the job 1.25 KB, its rendering 1.07 KB), so at most ~12 MB.
KEEP_JOBS = 5_000


@dataclass(frozen=True, slots=True)
class PolledJob:
    """A job as a polled route read it, and its rendering where it has no links to sign."""

    job: Job
    formatter: Formatter
    without_links: dict[str, Any] | None

    @classmethod
    def of(cls, job: Job, formatter: Formatter) -> PolledJob:
        rendered = None if has_links(job) else formatter(job, [], 0)
        return cls(job, formatter, rendered)

    def render(self, links: Links, expires_at: int) -> dict[str, Any]:
        """The job's API object for this poll (``expires_at``: its links' expiry, epoch ms)."""
        if self.without_links is None:
            return self.formatter(self.job, *links(self.job))
        return {**self.without_links, "expiresAt": expires_at}


class PollCache:
    """The polled jobs of one version of the store, by what was asked (least recently used
    dropped past :data:`KEEP_JOBS`). Used from the event loop only."""

    def __init__(self, keep_jobs: int = KEEP_JOBS) -> None:
        self.keep_jobs = keep_jobs
        self.version: Hashable | None = None
        self.answers: OrderedDict[Hashable, Sequence[PolledJob]] = OrderedDict()
        self.jobs = 0

    def get(self, version: Hashable | None, key: Hashable) -> Sequence[PolledJob] | None:
        if version is None or version != self.version:
            return None
        found = self.answers.get(key)
        if found is not None:
            self.answers.move_to_end(key)
        return found

    def put(self, version: Hashable | None, key: Hashable, jobs: Sequence[PolledJob]) -> None:
        if version is None or len(jobs) > self.keep_jobs:
            return
        if version != self.version:
            self.version, self.jobs = version, 0
            self.answers.clear()
        previous = self.answers.pop(key, ())
        self.answers[key] = jobs
        self.jobs += len(jobs) - len(previous)
        while self.jobs > self.keep_jobs:
            _, dropped = self.answers.popitem(last=False)
            self.jobs -= len(dropped)


async def polled(
    cache: PollCache,
    jobs: JobManager,
    key: Hashable,
    formatter: Formatter,
    read: Callable[[], Awaitable[list[Job]]],
) -> Sequence[PolledJob]:
    """The jobs answering ``key``: those kept for the store's present version, else ``read``
    (the version is read first: a job written during ``read`` changes it for the next poll)."""
    version = jobs.poll_version()
    found = cache.get(version, (formatter, key))
    if found is None:
        found = [PolledJob.of(job, formatter) for job in await read()]
        cache.put(version, (formatter, key), found)
    return found


def expiry_ms(ttl: int) -> int:
    """When links signed now for ``ttl`` seconds expire, in epoch ms (the ``expiresAt``)."""
    return (int(time.time()) + ttl) * 1000
