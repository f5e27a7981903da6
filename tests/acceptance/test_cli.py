"""The ``exhaust`` command line as a user types it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import Deployment, wait_until
from tests.factories import CHANNEL, assess_event


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The CLI does not depend on the database kind: SQLite only (Postgres is end-to-end)."""
    return sqlite_url


def test_help_teaches_every_command(deployment: Deployment) -> None:
    top = deployment.run("--help").stdout
    for command in (
        "serve",
        "worker",
        "migrate",
        "keys",
        "ingest",
        "lake",
        "replay",
        "demo",
        "submit",
        "status",
        "list",
        "stop",
        "download",
        "sync",
    ):
        assert command in top
    assert "--scope" in deployment.run("keys", "create", "--help").stdout


def test_keys_are_printed_once_listed_without_secret_and_revocable(
    deployment: Deployment,
) -> None:
    created = deployment.run(
        "keys", "create", "--channel", "s1", "--scope", "exhaust,pii", "--name", "state one"
    )
    plain = created.stdout.strip().splitlines()[-1]
    assert plain.startswith("dx_") and created.stdout.count(plain) == 1
    listing = deployment.run("keys", "list").stdout
    key_id = plain.split("_")[1]
    assert key_id in listing and "state one" in listing and plain not in listing
    bad = deployment.run("keys", "create", "--channel", "s1", "--scope", "root", check=False)
    assert bad.returncode != 0 and "unknown scope(s) root" in bad.stderr
    deployment.run("keys", "revoke", key_id)
    assert key_id in deployment.run("keys", "list").stdout
    base = deployment.serve()
    answer = httpx.get(
        f"{base}/dataset/v1/request/list/x",
        headers={"Authorization": f"Bearer {plain}", "X-Channel-ID": "s1"},
    )
    assert answer.status_code == 401


def test_ingest_compact_and_client_commands(deployment: Deployment, tmp_path: Path) -> None:
    events = [assess_event(mid=f"m{i}") for i in range(50)]
    lines = [json.dumps(e, ensure_ascii=False) for e in events] + ["{broken"]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingested = deployment.run("ingest", str(source))
    assert "accepted 50, rejected 1" in ingested.stderr
    assert "leaked" not in ingested.stderr  # no report from DuckDB's bindings at exit
    assert "compacted 50 events" in deployment.run("lake", "compact").stderr
    base = deployment.serve()
    key = deployment.create_key(CHANNEL, "exhaust")
    client = ["--server", base, "--key", key, "--channel", CHANNEL]
    config = json.dumps(
        {
            "conversationId": events[0]["context"]["cdata"][0]["id"],
            "startDate": "2022-06-21",
            "endDate": "2022-06-21",
        }
    )
    submitted = json.loads(
        deployment.run("submit", "--tag", "cli", "--config", config, "--wait", *client).stdout
    )
    assert submitted["status"] == "SUCCESS" and submitted["files"][0]["rows"] == 50
    status = json.loads(deployment.run("status", "cli", submitted["requestId"], *client).stdout)
    assert status["requestId"] == submitted["requestId"]
    assert submitted["requestId"] in deployment.run("list", "cli", *client).stdout
    refused = deployment.run("stop", "cli", submitted["requestId"], *client, check=False)
    assert refused.returncode == 1 and "job already finished with status SUCCESS" in (
        refused.stderr
    )


def test_scheduled_jobs_wait_for_replay(deployment: Deployment) -> None:
    deployment.extra_env["EXHAUST_RUN_SCHEDULE"] = "0 2 * * *"
    base = deployment.serve()
    key = deployment.create_key("c1", "exhaust")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": "c1"}
    request = {"tag": "nightly", "dataset": "test-counting", "datasetConfig": {"rows": 5}}
    job = httpx.post(
        f"{base}/dataset/v1/request/submit", json={"request": request}, headers=auth
    ).json()["result"]
    assert job["status"] == "SUBMITTED"
    assert (
        "1 waiting job(s) released" in deployment.run("replay", "--dataset", "test-counting").stderr
    )
    read = f"{base}/dataset/v1/request/read/nightly?requestId={job['requestId']}"
    wait_until(lambda: httpx.get(read, headers=auth).json()["result"]["status"] == "SUCCESS")


def test_a_server_that_is_not_there_gets_a_message_not_a_traceback(
    deployment: Deployment,
) -> None:
    answer = deployment.run(
        "list", "nightly", "--server", "http://127.0.0.1:9", "--key", "k", "--channel", "c",
        check=False,
    )  # fmt: skip
    assert answer.returncode == 1
    assert "cannot reach the server at http://127.0.0.1:9" in answer.stderr
    assert "EXHAUST_SERVER_URL" in answer.stderr and "Traceback" not in answer.stderr
