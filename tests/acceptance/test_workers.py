"""Worker processes as operators run them: killed with SIGKILL mid-job, two of them on one
Postgres database, and stops of running jobs over HTTP."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Deployment, wait_until

CHANNEL = "state-a"


def submit(base: str, auth: dict[str, str], tag: str, **config: Any) -> str:
    request = {"tag": tag, "dataset": "test-counting", "datasetConfig": config}
    answer = httpx.post(
        f"{base}/dataset/v1/request/submit", json={"request": request}, headers=auth, timeout=30
    ).json()
    return str(answer["result"]["requestId"])


def read(base: str, auth: dict[str, str], tag: str, request_id: str) -> dict[str, Any]:
    url = f"{base}/dataset/v1/request/read/{tag}?requestId={request_id}"
    return dict(httpx.get(url, headers=auth, timeout=30).json()["result"])


def published(deployment: Deployment) -> list[Path]:
    """Result files visible in the blob store (temp files of running writers excluded)."""
    blobs = deployment.data_dir / "blobs"
    return [p for p in blobs.rglob("*.csv") if ".tmp" not in p.relative_to(blobs).parts]


def api_only(deployment: Deployment) -> tuple[str, dict[str, str]]:
    base = deployment.serve(EXHAUST_WORKERS="0")
    key = deployment.create_key(CHANNEL, "exhaust")
    return base, {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}


def test_a_job_of_a_killed_worker_finishes_after_restart(deployment: Deployment) -> None:
    base, auth = api_only(deployment)
    worker = deployment.start("worker")
    request_id = submit(base, auth, "crash", rows=3000, delay=0.05, batch=50)
    wait_until(lambda: read(base, auth, "crash", request_id)["progress"]["rowsWritten"] > 200)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    job = read(base, auth, "crash", request_id)
    assert job["status"] == "PROCESSING" and job["downloadUrls"] == []
    assert published(deployment) == []  # the half-written file is not visible

    deployment.start("worker")
    wait_until(lambda: read(base, auth, "crash", request_id)["status"] == "SUCCESS", 120)
    done = read(base, auth, "crash", request_id)
    assert done["attempts"] == 1  # the lost execution counted, then a clean one
    body = httpx.get(done["downloadUrls"][0]).text.splitlines()
    assert body[0] == "n,label" and body[1:] == [f'{n},"row {n}"' for n in range(1, 3001)]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_workers_never_run_one_job_twice(deployment: Deployment, tmp_path: Path) -> None:
    run_log = tmp_path / "runs.log"
    deployment.extra_env["COUNTING_RUN_LOG"] = str(run_log)
    base, auth = api_only(deployment)
    for _ in range(2):
        deployment.start("worker", "--threads", "3")
    # ~0.1-0.4 s a job, ~3 s of work for one worker's 3 threads: several of the other worker's
    # 1 s polls fall inside it (with 0.01 s per batch one worker could drain the queue first)
    ids = [submit(base, auth, "many", rows=n * 10, delay=0.1) for n in range(1, 41)]
    wait_until(lambda: all(read(base, auth, "many", i)["status"] == "SUCCESS" for i in ids), 180)
    runs = [line.split() for line in run_log.read_text().splitlines()]
    assert Counter(request_id for request_id, _ in runs) == Counter(ids)  # each exactly once
    assert len({pid for _, pid in runs}) == 2  # both worker processes did work


def test_stopping_a_running_job_over_http(deployment: Deployment) -> None:
    base = deployment.serve()
    key = deployment.create_key(CHANNEL, "exhaust")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
    request_id = submit(base, auth, "long", rows=1_000_000, delay=0.05, batch=50)
    wait_until(lambda: read(base, auth, "long", request_id)["progress"]["rowsWritten"] > 0)
    stop_url = f"{base}/dataset/v1/request/stop/long?requestId={request_id}"
    answer = httpx.post(stop_url, headers=auth).json()["result"]
    assert answer["status"] in ("PROCESSING", "STOPPED")
    wait_until(lambda: read(base, auth, "long", request_id)["status"] == "STOPPED", 30)
    assert published(deployment) == []
    again = httpx.post(stop_url, headers=auth).json()
    assert again["result"]["status"] == "STOPPED"
