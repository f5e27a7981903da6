"""Import tasks over HTTP against a real server: upload, watch progress, stop, rolled back."""

from __future__ import annotations

import signal
from typing import Any

import httpx
from sqlalchemy import text

from data_exhaust.db import make_engine
from tests.acceptance.conftest import Deployment, wait_until


def big_teams_csv(rows: int) -> bytes:
    lines = ["name,description,manager,members\n"]
    lines += [f"Team {i},a team,mgr{i % 100},x;y\n" for i in range(rows)]
    return "".join(lines).encode()


def task(base: str, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{base}/tasks/{task_id}", headers=headers).json()["result"]
    return result


def test_upload_watch_progress_stop_and_rollback(deployment: Deployment) -> None:
    # one row a transaction: 60,000 commits keep the import running for seconds, far longer
    # than a poll (with 20 rows a batch, a fast machine finished it between two polls)
    base = deployment.serve(EXHAUST_IMPORT_BATCH_ROWS="1")
    headers = {"Authorization": f"Bearer {deployment.create_key('ops', 'admin')}"}
    files = {"file": ("teams.csv", big_teams_csv(60_000), "text/csv")}
    answer = httpx.post(f"{base}/v1/imports/teams", files=files, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["result"]["taskId"]
    seen: list[dict[str, Any]] = []

    def progressed() -> bool:
        seen.append(task(base, headers, task_id))
        return bool(seen[-1]["progress"]["done"])

    wait_until(progressed)
    moving = seen[-1]  # the answer that showed progress, not a later one
    assert moving["status"] == "PROCESSING" and moving["progress"]["total"] == 60_000
    stop = httpx.get(f"{base}/stop_task/{task_id}", headers=headers).json()["result"]
    assert stop["outcome"] in ("stopping", "stopped")
    wait_until(lambda: task(base, headers, task_id)["status"] == "STOPPED", timeout=30)
    final = task(base, headers, task_id)
    assert 0 < final["counts"]["rolledBack"] == final["counts"]["inserted"] < 60_000
    assert final["finishedAt"] is not None


def team_rows(deployment: Deployment, task_id: str) -> int:
    engine = make_engine(deployment.database_url)
    try:
        with engine.connect() as connection:
            query = text("SELECT count(*) FROM team WHERE task_id = :t")
            return int(connection.execute(query, {"t": task_id}).scalar_one())
    finally:
        engine.dispose()


def test_an_import_whose_worker_was_killed_imports_every_row_once(
    deployment: Deployment,
) -> None:
    """SIGKILL mid-import leaves committed batches behind; the next worker to take the task
    (after the dead one's lease expires) starts by removing them, so no row is there twice."""
    base = deployment.serve(EXHAUST_WORKERS="0")
    headers = {"Authorization": f"Bearer {deployment.create_key('ops', 'admin')}"}
    files = {"file": ("teams.csv", big_teams_csv(100_000), "text/csv")}
    answer = httpx.post(f"{base}/v1/imports/teams", files=files, headers=headers, timeout=60)
    task_id = answer.json()["result"]["taskId"]
    worker = deployment.start("worker", EXHAUST_IMPORT_BATCH_ROWS="20")
    wait_until(lambda: task(base, headers, task_id)["progress"]["done"] >= 2_000)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert task(base, headers, task_id)["status"] == "PROCESSING"
    assert 0 < team_rows(deployment, task_id) < 100_000  # the dead worker's batches

    deployment.start("worker")
    wait_until(lambda: task(base, headers, task_id)["status"] == "SUCCESS", timeout=120)
    final = task(base, headers, task_id)
    assert final["counts"]["inserted"] == 100_000
    assert team_rows(deployment, task_id) == 100_000
