"""The polled routes' reuse of what they answered (``api/polls.py``), over the in-memory job
store, whose version counts its writes as SQLite's ``data_version`` counts commits."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from pathlib import Path

from data_exhaust.api.polls import PollCache, PolledJob, polled
from data_exhaust.api.render import dataset_job, report_job
from data_exhaust.jobs import Job, OutputFile, Status
from data_exhaust.manager import JobManager, Submission
from data_exhaust.testing import MemoryJobStore
from tests.conftest import make_settings


class UnversionedStore(MemoryJobStore):
    """A store that cannot tell whether anything changed (as Postgres's)."""

    def loop_version(self) -> Hashable | None:
        return None


def manager(tmp_path: Path, store: MemoryJobStore | None = None) -> JobManager:
    return JobManager(store or MemoryJobStore(), make_settings(tmp_path, "sqlite://"))


def submitted(jobs: JobManager, n: int) -> Job:
    return jobs.submit(Submission("test-counting", "t", "c1", "u", {"rows": n}))[0]


class Poller:
    """Polls one job's read as the route does, counting the reads of the store."""

    def __init__(self, jobs: JobManager, request_id: str) -> None:
        self.jobs, self.request_id, self.cache, self.reads = jobs, request_id, PollCache(), 0

    async def read(self) -> list[Job]:
        self.reads += 1
        return [self.jobs.get(self.request_id)]

    def poll(self) -> Sequence[PolledJob]:
        key = ("read", self.request_id)
        return asyncio.run(polled(self.cache, self.jobs, key, dataset_job, self.read))


def test_a_poll_reads_the_store_again_only_after_a_write(tmp_path: Path) -> None:
    jobs = manager(tmp_path)
    poller = Poller(jobs, submitted(jobs, 1).request_id)
    first = poller.poll()
    assert poller.poll() is first and poller.reads == 1
    submitted(jobs, 2)  # any write, to any job, makes the next poll read again
    assert poller.poll()[0].job == first[0].job and poller.reads == 2
    jobs.stop(poller.request_id)
    assert poller.poll()[0].job.status == Status.STOPPED and poller.reads == 3
    assert poller.poll()[0].without_links == dataset_job(jobs.get(poller.request_id), [], 0)


def test_a_store_without_a_version_is_read_on_every_poll(tmp_path: Path) -> None:
    jobs = manager(tmp_path, UnversionedStore())
    poller = Poller(jobs, submitted(jobs, 1).request_id)
    for _ in range(3):
        poller.poll()
    assert poller.reads == 3 and poller.cache.answers == {}


def finished(jobs: JobManager, *, purged: bool = False) -> Job:
    job = submitted(jobs, 1)
    files = [OutputFile("f.csv", "k/f.csv", 10, "ab" * 32, 3)]
    changes = {"status": Status.SUCCESS, "files": files, "files_purged": purged}
    done = jobs.store.update(job.request_id, changes)
    assert done is not None
    return done


def test_links_are_made_on_every_poll_for_a_job_that_has_them(tmp_path: Path) -> None:
    jobs = manager(tmp_path)
    done = PolledJob.of(finished(jobs), dataset_job)
    assert done.without_links is None
    for caller in ("key-1", "key-2"):
        link = f"https://x/f.csv?by={caller}"
        rendered = done.render(lambda job, link=link: ([link], 7000), 5000)  # type: ignore[misc]
        assert rendered["downloadUrls"] == [link]
        assert rendered["expiresAt"] == 7000 and rendered["files"][0]["rows"] == 3


def test_a_job_without_links_is_rendered_once_with_each_polls_expiry(tmp_path: Path) -> None:
    jobs = manager(tmp_path)
    for job in (submitted(jobs, 1), finished(jobs, purged=True)):
        for formatter in (dataset_job, report_job):
            polled_job = PolledJob.of(job, formatter)

            def no_links(job: Job) -> tuple[list[str], int]:
                raise AssertionError("a job without links signs none")

            for expires_at in (1000, 2000):
                expected = {**formatter(job, [], 0), "expiresAt": expires_at}
                assert polled_job.render(no_links, expires_at) == expected


def test_the_cache_keeps_one_version_and_drops_the_least_recently_used(tmp_path: Path) -> None:
    jobs = manager(tmp_path)
    one = [PolledJob.of(submitted(jobs, 1), dataset_job)]
    cache = PollCache(keep_jobs=4)
    cache.put("v1", "a", one * 2)
    cache.put("v1", "b", one)
    assert cache.get("v1", "a") == one * 2  # now the most recently used
    cache.put("v1", "c", one * 2)  # 5 jobs: b goes
    assert cache.get("v1", "b") is None and cache.get("v1", "a") and cache.get("v1", "c")
    assert cache.jobs == 4
    cache.put("v1", "big", one * 5)  # more than it keeps at all: not kept, nothing dropped
    assert cache.get("v1", "big") is None and cache.jobs == 4
    assert cache.get("v2", "a") is None  # another version: nothing of v1 is answered
    cache.put("v2", "b", one)
    assert cache.get("v1", "a") is None and cache.jobs == 1 and list(cache.answers) == ["b"]
    cache.put(None, "c", one)  # no version: never kept
    assert cache.get(None, "c") is None and cache.jobs == 1
