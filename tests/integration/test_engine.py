"""The job engine end to end below HTTP: manager, worker, executors, on SQLite and Postgres."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from data_exhaust.executor import EmbeddedExecutor, Executor, InlineExecutor
from data_exhaust.jobs import Job, Status
from data_exhaust.manager import JobConflict, JobNotFound, Submission
from data_exhaust.services import Services
from tests.celery_support import celery_executor
from tests.conftest import wait_for

#: RabbitMQ and Redis tests run one at a time, on one xdist worker: one of them restarts
#: RabbitMQ, which would break another running beside it.
pytestmark = pytest.mark.xdist_group("broker")


def submission(rows: int = 250, **config: object) -> Submission:
    return Submission(
        dataset="test-counting",
        tag="t",
        channel="c1",
        requested_by="u",
        config={"rows": rows, "delay": 0.0, "fail": None, "batch": 100, **config},
    )


def status_of(services: Services, job: Job) -> Status:
    return services.jobs.get(job.request_id).status


def read_csv(services: Services, job: Job) -> str:
    done = services.jobs.get(job.request_id)
    (file,) = done.files
    return b"".join(services.blobs.read(file.key)).decode()


@contextmanager
def started(kind: str, services: Services) -> Iterator[Executor]:
    """An executor of ``kind`` running jobs of ``services``; stopped afterwards."""
    if kind == "celery":  # a real worker (threads pool) on RabbitMQ, in this process
        with celery_executor(services) as celery:
            services.executor = celery
            yield celery
        services.executor = None
        return
    if kind == "inline":
        built: Executor = InlineExecutor(services.worker())
    else:
        built = EmbeddedExecutor(services.worker(), services.jobs, 2, 0.1)
    built.start()
    services.executor = built
    yield built


@pytest.fixture(params=["inline", "embedded", "celery"])
def executor(request: pytest.FixtureRequest, services: Services) -> Iterator[Executor]:
    """The executor contract runs against every executor."""
    with started(request.param, services) as built:
        yield built


@pytest.fixture(params=["embedded", "celery"])
def async_executor(request: pytest.FixtureRequest, services: Services) -> Iterator[Executor]:
    """Every executor that runs jobs in the background (so that a stop can reach them)."""
    with started(request.param, services) as built:
        yield built


def test_a_job_runs_to_success_with_its_file(services: Services, executor: Executor) -> None:
    job, deduplicated = services.jobs.submit(submission(250))
    assert not deduplicated and job.status == Status.SUBMITTED
    services.notify()
    wait_for(lambda: status_of(services, job) == Status.SUCCESS)
    done = services.jobs.get(job.request_id)
    assert done.files[0].rows == 250 and done.progress["rowsWritten"] == 250
    lines = read_csv(services, job).splitlines()
    assert lines[0] == "n,label" and lines[-1] == '250,"row 250"' and len(lines) == 251
    assert done.execution_ms is not None and done.completed_at is not None


def test_identical_submission_is_deduplicated(services: Services) -> None:
    first, _ = services.jobs.submit(submission())
    again, deduplicated = services.jobs.submit(submission())
    assert deduplicated and again.request_id == first.request_id
    other, deduplicated = services.jobs.submit(submission(rows=7))
    assert not deduplicated and other.request_id != first.request_id


def test_failed_and_stopped_jobs_are_queued_again_on_resubmit(services: Services) -> None:
    job, _ = services.jobs.submit(submission(fail="permanent"))
    services.worker().run_one()
    failed = services.jobs.get(job.request_id)
    assert failed.status == Status.FAILED and failed.attempts == 1
    assert failed.message == "asked to fail permanently"
    again, deduplicated = services.jobs.submit(submission(fail="permanent"))
    assert not deduplicated and again.status == Status.SUBMITTED and again.attempts == 1
    services.jobs.stop(job.request_id)
    assert services.jobs.submit(submission(fail="permanent"))[0].status == Status.SUBMITTED


def test_transient_failures_retry_until_max_attempts(services: Services) -> None:
    job, _ = services.jobs.submit(submission(fail="transient"))
    worker = services.worker()
    worker.run_one()
    retried = services.jobs.get(job.request_id)
    assert retried.status == Status.SUBMITTED and retried.attempts == 1
    assert "retrying" in (retried.message or "")
    while worker.run_one():
        pass
    failed = services.jobs.get(job.request_id)
    assert failed.status == Status.FAILED
    assert failed.attempts == services.settings.max_attempts
    assert "OSError" in (failed.message or "")
    assert list(services.blobs.keys("test-counting/")) == []


def test_stop_of_a_waiting_job(services: Services) -> None:
    job, _ = services.jobs.submit(submission())
    stopped = services.jobs.stop(job.request_id, "t:c1")
    assert stopped.status == Status.STOPPED
    assert services.jobs.stop(job.request_id).status == Status.STOPPED  # idempotent
    assert services.worker().run_one() is False


def test_stop_of_a_running_job_leaves_no_file(services: Services, async_executor: Executor) -> None:
    job, _ = services.jobs.submit(submission(rows=100_000, delay=0.05, batch=50))
    services.notify()
    wait_for(lambda: services.jobs.get(job.request_id).progress.get("rowsWritten", 0) > 0)
    services.jobs.stop(job.request_id)
    wait_for(lambda: status_of(services, job) == Status.STOPPED)
    assert list(services.blobs.keys("test-counting/")) == []
    assert services.jobs.get(job.request_id).message == "stopped on request"


def test_finished_jobs_cannot_be_stopped_and_unknown_ones_are_not_found(
    services: Services,
) -> None:
    job, _ = services.jobs.submit(submission(rows=3))
    services.worker().run_one()
    with pytest.raises(JobConflict, match="job already finished with status SUCCESS"):
        services.jobs.stop(job.request_id)
    with pytest.raises(JobNotFound):
        services.jobs.stop(job.request_id, "other-tag:c1")


def test_an_expired_lease_sends_the_job_back(services: Services) -> None:
    job, _ = services.jobs.submit(submission(rows=5))
    claimed = services.jobs.claim("dead-worker")
    assert claimed is not None
    services.jobs.store.update(job.request_id, {"lease_expires_at": claimed.submitted_at})
    assert services.jobs.recover_expired() == 1
    back = services.jobs.get(job.request_id)
    assert back.status == Status.SUBMITTED and back.attempts == 1
    assert services.jobs.succeed(claimed, [], 1) is None  # the dead worker's late answer is ignored
    services.worker().run_one()
    assert status_of(services, job) == Status.SUCCESS


def test_two_workers_never_run_one_job_twice(services: Services) -> None:
    jobs = [services.jobs.submit(submission(rows=n))[0] for n in range(1, 41)]
    runs: list[str] = []
    lock = threading.Lock()
    original = services.jobs.claim

    def counting_claim(owner: str, request_id: str | None = None) -> Job | None:
        claimed = original(owner, request_id)
        if claimed is not None:
            with lock:
                runs.append(claimed.request_id)
        return claimed

    services.jobs.claim = counting_claim  # type: ignore[method-assign]
    executors = [
        EmbeddedExecutor(services.worker(f"w{i}"), services.jobs, 2, 0.05) for i in range(2)
    ]
    for e in executors:
        e.start()
    wait_for(lambda: all(status_of(services, j) == Status.SUCCESS for j in jobs), 120)
    for e in executors:
        e.shutdown()
    assert sorted(runs) == sorted(j.request_id for j in jobs)


def test_retention_purges_files_and_resubmit_runs_again(services: Services) -> None:
    job, _ = services.jobs.submit(submission(rows=3))
    services.worker().run_one()
    old = services.jobs.get(job.request_id).completed_at
    assert old is not None
    services.jobs.store.update(job.request_id, {"completed_at": old - timedelta(days=30)})
    assert services.jobs.purge_expired(services.delete_files) == 1
    assert list(services.blobs.keys("test-counting/")) == []
    again, deduplicated = services.jobs.submit(submission(rows=3))
    assert not deduplicated and again.status == Status.SUBMITTED


def test_cron_schedule_holds_jobs_until_replay(services: Services) -> None:
    services.jobs.settings = services.settings.model_copy(update={"run_schedule": "0 2 * * *"})
    job, _ = services.jobs.submit(submission(rows=3))
    assert job.run_after > job.submitted_at
    assert services.worker().run_one() is False
    assert services.jobs.release("test-counting") == 1
    assert services.worker().run_one() is True
    assert status_of(services, job) == Status.SUCCESS


def test_a_stop_reaches_a_job_of_this_process_without_its_heartbeat(services: Services) -> None:
    """The embedded worker is told at once: ``jobs.stop`` (the durable flag its heartbeat reads)
    is never called here, so the job (100,000 slow rows, ~100 s) can only end STOPPED through
    the in-process path."""
    with started("embedded", services) as executor:
        job, _ = services.jobs.submit(submission(rows=100_000, delay=0.05, batch=50))
        services.notify()
        wait_for(lambda: services.jobs.get(job.request_id).progress.get("rowsWritten", 0) > 0)
        assert executor.stop_running(job.request_id) is True
        wait_for(lambda: status_of(services, job) == Status.STOPPED)
        assert services.jobs.get(job.request_id).message == "stopped on request"
        # no longer running here, once the worker has let go of it (it records STOPPED first)
        wait_for(lambda: executor.stop_running(job.request_id) is False)
    assert list(services.blobs.keys("test-counting/")) == []
