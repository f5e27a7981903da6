"""Import tasks over HTTP against a real server: upload, watch progress, stop, rolled back."""

from __future__ import annotations

from typing import Any

import httpx

from tests.acceptance.conftest import Deployment, wait_until


def big_teams_csv(rows: int) -> bytes:
    lines = ["name,description,manager,members\n"]
    lines += [f"Team {i},a team,mgr{i % 100},x;y\n" for i in range(rows)]
    return "".join(lines).encode()


def task(base: str, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{base}/tasks/{task_id}", headers=headers).json()["result"]
    return result


def test_upload_watch_progress_stop_and_rollback(deployment: Deployment) -> None:
    base = deployment.serve(EXHAUST_IMPORT_BATCH_ROWS="20")
    headers = {"Authorization": f"Bearer {deployment.create_key('ops', 'admin')}"}
    files = {"file": ("teams.csv", big_teams_csv(60_000), "text/csv")}
    answer = httpx.post(f"{base}/v1/imports/teams", files=files, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["result"]["taskId"]
    wait_until(lambda: task(base, headers, task_id)["progress"]["done"] > 0)
    moving = task(base, headers, task_id)
    assert moving["status"] == "PROCESSING" and moving["progress"]["total"] == 60_000
    stop = httpx.get(f"{base}/stop_task/{task_id}", headers=headers).json()["result"]
    assert stop["outcome"] in ("stopping", "stopped")
    wait_until(lambda: task(base, headers, task_id)["status"] == "STOPPED", timeout=30)
    final = task(base, headers, task_id)
    assert 0 < final["counts"]["rolledBack"] == final["counts"]["inserted"] < 60_000
    assert final["finishedAt"] is not None
