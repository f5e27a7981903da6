"""The Celery executor as operators run it: ``exhaust serve`` publishing, ``exhaust worker``
processes consuming from the machine's RabbitMQ (and Redis), one Postgres job table.

Starting an ``exhaust`` process costs seconds, so the RabbitMQ tests share one cluster (an API
and two workers) in the order written; each uses its own tag and its own jobs.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from data_exhaust.db import make_engine
from data_exhaust.keys import KeyStore
from tests.acceptance.conftest import Deployment, wait_until
from tests.acceptance.test_tasks_http import big_teams_csv, task
from tests.acceptance.test_workers import CHANNEL, published, read, submit
from tests.celery_support import (
    AMQP_URL,
    REDIS_URL,
    delete_queue,
    need_broker,
    reachable,
    unique_queue,
)
from tests.conftest import PG_HOST, sa_url

#: RabbitMQ and Redis tests run one at a time, on one xdist worker: one of them restarts
#: RabbitMQ, which would break another running beside it.
pytestmark = pytest.mark.xdist_group("broker")

LONG = {"rows": 1_000_000, "delay": 0.05, "batch": 50}  # runs until stopped


class Cluster:
    """A deployment on Celery: its API, its workers, and CountingDataset's run log."""

    def __init__(self, deployment: Deployment, broker: str, run_log: Path) -> None:
        self.deployment, self.broker, self.run_log = deployment, broker, run_log
        self.queue = unique_queue()
        deployment.extra_env.update(
            {
                "EXHAUST_EXECUTOR": "celery",
                "EXHAUST_BROKER_URL": need_broker(broker),
                "EXHAUST_CELERY_QUEUE": self.queue,
                "EXHAUST_CELERY_REDISPATCH_SECONDS": "2",
                "EXHAUST_CELERY_STOP_GRACE_SECONDS": "2",
                "EXHAUST_IMPORT_BATCH_ROWS": "20",  # imports long enough to stop half-way
                "COUNTING_RUN_LOG": str(run_log),
            }
        )
        engine = make_engine(deployment.database_url)
        _, key = KeyStore(engine).create("celery", [CHANNEL], ["exhaust"])
        engine.dispose()
        self.auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
        self.base = ""
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int, concurrency: int = 2) -> None:
        """The API and ``workers`` workers, started side by side."""
        logs = [self.start_worker(concurrency) for _ in range(workers)]
        self.base = self.deployment.serve()
        for log, process in logs:
            self.wait_ready(log, process)

    def start_worker(self, concurrency: int = 2) -> tuple[Path, subprocess.Popen[bytes]]:
        log = self.deployment.data_dir.parent / f"worker-{len(self.deployment.processes)}.log"
        process = self.deployment.start("worker", "--concurrency", str(concurrency))
        self.workers.append(process)
        return log, process

    def wait_ready(self, log: Path, process: subprocess.Popen[bytes]) -> None:
        wait_until(lambda: "worker.ready" in log.read_text() or process.poll() is not None)
        assert process.poll() is None, log.read_text()

    def close(self) -> None:
        self.deployment.stop_all()
        delete_queue(self.broker, self.queue)

    def submit(self, tag: str, **config: Any) -> str:
        return submit(self.base, self.auth, tag, **config)

    def job(self, tag: str, request_id: str) -> dict[str, Any]:
        return read(self.base, self.auth, tag, request_id)

    def status(self, tag: str, request_id: str) -> str:
        return str(self.job(tag, request_id)["status"])

    def wait_status(self, tag: str, ids: list[str], status: str, timeout: float = 60) -> None:
        wait_until(lambda: all(self.status(tag, i) == status for i in ids), timeout)

    def wait_running(self, tag: str, request_id: str) -> None:
        wait_until(lambda: self.job(tag, request_id)["progress"].get("rowsWritten", 0) > 0)

    def stop(self, tag: str, request_id: str) -> dict[str, Any]:
        url = f"{self.base}/dataset/v1/request/stop/{tag}?requestId={request_id}"
        return dict(httpx.post(url, headers=self.auth, timeout=30).json()["result"])

    def runs(self, ids: list[str]) -> list[tuple[str, int]]:
        """(request id, pool process id) of every execution of ``ids`` so far."""
        lines = self.run_log.read_text().splitlines() if self.run_log.exists() else []
        pairs = [line.split() for line in lines]
        return [(rid, int(pid)) for rid, pid in pairs if rid in ids]


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent for {pid}")


@pytest.fixture(scope="module")
def rabbit(pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One API and two Celery workers (2 processes each) on RabbitMQ and Postgres."""
    need_broker(AMQP_URL)
    name = f"exhaust_celery_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{PG_HOST}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    root = tmp_path_factory.mktemp("celery")
    cluster = Cluster(Deployment(root / "var", sa_url(name)), AMQP_URL, root / "runs.log")
    try:
        cluster.start(workers=2)
        yield cluster
    finally:
        cluster.close()
        with psycopg.connect(f"{PG_HOST}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_run_many_jobs_concurrently_none_twice(rabbit: Cluster) -> None:
    ids = [rabbit.submit("many", rows=n * 10, delay=0.02) for n in range(1, 41)]
    rabbit.wait_status("many", ids, "SUCCESS", 120)
    executions = rabbit.runs(ids)
    assert Counter(rid for rid, _ in executions) == Counter(ids)  # each exactly once
    assert {parent_of(pid) for _, pid in executions} == {w.pid for w in rabbit.workers}
    health = httpx.get(f"{rabbit.base}/health", timeout=10).json()
    assert health["params"]["status"] == "successful"


def test_stop_of_a_running_job_ends_it_within_seconds_with_no_file(rabbit: Cluster) -> None:
    request_id = rabbit.submit("long", **LONG)
    rabbit.wait_running("long", request_id)
    asked = time.monotonic()
    assert rabbit.stop("long", request_id)["status"] in ("PROCESSING", "STOPPED")
    rabbit.wait_status("long", [request_id], "STOPPED", 30)
    print(f"running job STOPPED {time.monotonic() - asked:.2f}s after the request")
    assert all(request_id not in str(p) for p in published(rabbit.deployment))
    assert rabbit.stop("long", request_id)["status"] == "STOPPED"  # twice is harmless


STOPPED_ROWS = 600_000


def test_stop_during_a_running_import_rolls_every_row_back(rabbit: Cluster) -> None:
    engine = make_engine(rabbit.deployment.database_url)
    admin = {"Authorization": f"Bearer {KeyStore(engine).create('ops', [], ['admin'])[1]}"}
    # 600 k rows: long enough not to end before the stop on a fast machine (a 60 k-row import
    # of the same test on SQLite did, in tests/integration/test_tasks.py)
    files = {"file": ("teams.csv", big_teams_csv(STOPPED_ROWS), "text/csv")}
    answer = httpx.post(f"{rabbit.base}/v1/imports/teams", files=files, headers=admin, timeout=60)
    task_id = answer.json()["result"]["taskId"]
    wait_until(lambda: task(rabbit.base, admin, task_id)["progress"]["done"] > 0)
    asked = time.monotonic()
    httpx.post(f"{rabbit.base}/stop_task/{task_id}", headers=admin, timeout=30)
    wait_until(lambda: task(rabbit.base, admin, task_id)["status"] == "STOPPED", 30)
    print(f"running import STOPPED {time.monotonic() - asked:.2f}s after the request")
    final = task(rabbit.base, admin, task_id)
    assert 0 < final["counts"]["rolledBack"] == final["counts"]["inserted"] < STOPPED_ROWS
    with engine.connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM team WHERE task_id = :t"), {"t": task_id}
        ).scalar_one()
    engine.dispose()
    assert left == 0


def test_a_job_deaf_to_its_stop_is_terminated_by_its_worker(rabbit: Cluster) -> None:
    stuck = rabbit.submit("deaf", rows=1000, batch=10, delay=120)  # sleeps 2 min per batch
    rabbit.wait_running("deaf", stuck)
    asked = time.monotonic()
    rabbit.stop("deaf", stuck)
    rabbit.wait_status("deaf", [stuck], "STOPPED", 30)
    print(f"deaf job STOPPED {time.monotonic() - asked:.2f}s after the request")
    assert all(stuck not in str(p) for p in published(rabbit.deployment))
    after = [rabbit.submit("deaf", rows=n) for n in range(1, 6)]  # the pool replaced it
    rabbit.wait_status("deaf", after, "SUCCESS")
    assert rabbit.status("deaf", stuck) == "STOPPED"  # its requeued message was a no-op


def test_stop_of_a_waiting_job(rabbit: Cluster) -> None:
    busy = [rabbit.submit("busy", **{**LONG, "rows": 10**6 + n}) for n in range(4)]  # every slot
    for request_id in busy:
        rabbit.wait_running("busy", request_id)
    waiting = rabbit.submit("waiting", rows=10)
    assert rabbit.status("waiting", waiting) == "SUBMITTED"
    assert rabbit.stop("waiting", waiting)["status"] == "STOPPED"
    for request_id in busy:
        rabbit.stop("busy", request_id)
    rabbit.wait_status("busy", busy, "STOPPED")
    later = rabbit.submit("waiting", rows=11)
    rabbit.wait_status("waiting", [later], "SUCCESS")
    assert rabbit.status("waiting", waiting) == "STOPPED"
    assert rabbit.runs([waiting]) == []  # its message was delivered, and was a no-op


def test_sigkill_of_a_worker_mid_job_another_finishes_it(rabbit: Cluster) -> None:
    request_id = rabbit.submit("crash", rows=3000, delay=0.05, batch=50)
    wait_until(lambda: rabbit.job("crash", request_id)["progress"].get("rowsWritten", 0) > 200)
    ((_, pid),) = rabbit.runs([request_id])
    (victim,) = [w for w in rabbit.workers if w.pid == parent_of(pid)]
    victim.send_signal(signal.SIGKILL)  # its pool processes die with it (pdeathsig)
    victim.wait()
    rabbit.workers.remove(victim)
    rabbit.wait_status("crash", [request_id], "SUCCESS", 120)
    done = rabbit.job("crash", request_id)
    assert done["attempts"] == 1  # the lost execution counted, then a clean one
    body = httpx.get(done["downloadUrls"][0], timeout=30).text.splitlines()
    assert body[0] == "n,label" and body[1:] == [f'{n},"row {n}"' for n in range(1, 3001)]
    (_, lost), (_, finished) = rabbit.runs([request_id])
    assert lost != finished and parent_of(finished) == rabbit.workers[0].pid


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_a_rabbitmq_restart_while_jobs_wait_loses_nothing(rabbit: Cluster) -> None:
    try:
        rabbitmqctl("status")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"rabbitmqctl cannot restart the broker here: {exc}")
    busy = [rabbit.submit("hold", **{**LONG, "rows": 2 * 10**6 + n}) for n in range(2)]
    for request_id in busy:
        rabbit.wait_running("hold", request_id)
    before = [rabbit.submit("restart", rows=n) for n in range(1, 6)]  # messages wait
    try:
        rabbitmqctl("stop_app")
        during = [rabbit.submit("restart", rows=n) for n in range(6, 8)]  # publishing fails
    finally:
        rabbitmqctl("start_app")  # always leave the broker running,
        assert reachable(AMQP_URL, 60)  # and accepting connections before the next test
    for request_id in busy:
        rabbit.stop("hold", request_id)
    every = before + during
    rabbit.wait_status("restart", every, "SUCCESS", 120)
    assert Counter(rid for rid, _ in rabbit.runs(every)) == Counter(every)


@pytest.fixture
def redis_transport() -> None:
    pytest.importorskip("redis", reason="the Redis transport needs the redis package")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_redis_broker(redis_transport: None, deployment: Deployment, tmp_path: Path) -> None:
    cluster = Cluster(deployment, REDIS_URL, tmp_path / "runs.log")
    try:
        cluster.start(workers=1)
        done = cluster.submit("redis", rows=100)
        long = cluster.submit("redis", **LONG)
        cluster.wait_status("redis", [done], "SUCCESS")
        cluster.wait_running("redis", long)
        cluster.stop("redis", long)
        cluster.wait_status("redis", [long], "STOPPED", 30)
        assert len(published(deployment)) == 1
    finally:
        cluster.close()
