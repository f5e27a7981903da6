"""What only the Celery executor has to get right: duplicate and lost messages, recovery,
task ids reused by resubmitted jobs. A real RabbitMQ and a worker thread in this process."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from data_exhaust.celery_executor import TASK_NAME, CeleryExecutor, CeleryOptions, JobRunner
from data_exhaust.jobs import Job, Status
from data_exhaust.services import Services
from tests.celery_support import (
    AMQP_URL,
    celery_executor,
    delete_queue,
    need_broker,
    unique_queue,
)
from tests.conftest import wait_for
from tests.integration.test_engine import status_of, submission

pytestmark = [
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
    pytest.mark.xdist_group("broker"),  # beside test_celery.py's RabbitMQ restart
]


@pytest.fixture
def celery(services: Services) -> Iterator[CeleryExecutor]:
    with celery_executor(services) as executor:
        services.executor = executor
        yield executor
    services.executor = None


@pytest.fixture
def run_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs.log"
    monkeypatch.setenv("COUNTING_RUN_LOG", str(path))
    return path


def make_stale(services: Services, job: Job) -> None:
    """As if the job had waited a minute: its message would be due for re-publishing."""
    past = job.last_updated - timedelta(minutes=1)
    services.jobs.store.update(job.request_id, {"last_updated": past, "run_after": past})


def test_duplicate_messages_run_the_job_once(
    services: Services, celery: CeleryExecutor, run_log: Path
) -> None:
    job, _ = services.jobs.submit(submission(rows=300, delay=0.05))
    for _ in range(4):  # the same task id published again and again
        celery.app.send_task(TASK_NAME, args=[job.request_id], task_id=job.request_id)
    services.notify()
    wait_for(lambda: status_of(services, job) == Status.SUCCESS)
    assert JobRunner(services)(job.request_id) == "skipped"  # a late duplicate: no-op
    assert run_log.read_text().split() == [job.request_id, str(os.getpid())]


def test_a_lost_message_is_published_again_by_the_sweeper(
    services: Services, celery: CeleryExecutor
) -> None:
    job, _ = services.jobs.submit(submission(rows=20))  # no notify: its message is "lost"
    celery.sweep()
    assert status_of(services, job) == Status.SUBMITTED  # too recent to be called lost
    make_stale(services, job)
    celery.sweep()
    wait_for(lambda: status_of(services, job) == Status.SUCCESS)


def test_the_sweeper_does_not_flood_a_queue_that_holds_the_messages(
    services: Services,
) -> None:
    url = need_broker(AMQP_URL)
    options = CeleryOptions(queue=unique_queue(), redispatch_seconds=1.0)
    publisher = CeleryExecutor(services, options, broker_url=url)  # no worker consumes

    def queued() -> int | None:
        time.sleep(0.3)  # a publish and a count travel on different channels
        return publisher.queued_messages()

    try:
        job, _ = services.jobs.submit(submission(rows=5))
        publisher.notify()
        assert queued() == 1
        make_stale(services, job)
        publisher._sent.clear()  # as if another process had published it
        publisher.sweep()
        assert queued() == 1  # one message per waiting job: nothing published
        with publisher.app.pool.acquire(block=True) as connection:
            connection.default_channel.queue_purge(options.queue)  # the message is lost
        publisher.sweep()
        assert queued() == 1  # published again, once
        publisher.sweep()
        assert queued() == 1  # and not again within redispatch_seconds
    finally:
        publisher.shutdown()
        delete_queue(url, options.queue)


def test_a_dead_workers_job_is_recovered_and_published_again(
    services: Services, celery: CeleryExecutor
) -> None:
    job, _ = services.jobs.submit(submission(rows=40))
    claimed = services.jobs.claim("dead-host:1:x", job.request_id)
    assert claimed is not None
    services.jobs.store.update(job.request_id, {"lease_expires_at": claimed.submitted_at})
    celery.sweep()
    wait_for(lambda: status_of(services, job) == Status.SUCCESS)
    assert services.jobs.get(job.request_id).attempts == 1


def test_a_stopped_job_submitted_again_runs_under_the_same_task_id(
    services: Services, celery: CeleryExecutor
) -> None:
    job, _ = services.jobs.submit(submission(rows=100_000, delay=0.05, batch=50))
    services.notify()
    wait_for(lambda: services.jobs.get(job.request_id).progress.get("rowsWritten", 0) > 0)
    services.jobs.stop(job.request_id)
    wait_for(lambda: status_of(services, job) == Status.STOPPED)
    # resubmitting keeps the stored config: shorten this job so the test need not wait
    services.jobs.store.update(job.request_id, {"config": {**job.config, "rows": 30}})
    again, _ = services.jobs.submit(submission(rows=100_000, delay=0.05, batch=50))
    assert again.request_id == job.request_id
    services.notify()
    wait_for(lambda: status_of(services, job) == Status.SUCCESS)
