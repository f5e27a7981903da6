"""The polled routes (read, list) over real databases: what they keep between polls never
hides a change, whoever made it, and links are still signed for each caller on each poll."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from data_exhaust.api.app import create_app
from data_exhaust.executor import InlineExecutor
from data_exhaust.services import Services

#: Another process changing a job in the database, as a worker process would.
CHANGE_ELSEWHERE = """
import sys
from data_exhaust.db import make_engine
from data_exhaust.store import SqlJobStore
store = SqlJobStore(make_engine(sys.argv[1]))
assert store.update(sys.argv[2], {"message": "changed by another process"})
"""


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services, run_executor=False)) as test_client:
        yield test_client


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Channel-ID": "c1"}


def submit(client: TestClient, key: str, rows: int) -> str:
    body = {"request": {"tag": "t1", "dataset": "test-counting", "datasetConfig": {"rows": rows}}}
    response = client.post("/dataset/v1/request/submit", json=body, headers=headers(key))
    request_id: str = response.json()["result"]["requestId"]
    return request_id


def read(client: TestClient, key: str, request_id: str) -> dict[str, Any]:
    url = f"/dataset/v1/request/read/t1?requestId={request_id}"
    found: dict[str, Any] = client.get(url, headers=headers(key)).json()["result"]
    return found


def listed(client: TestClient, key: str) -> dict[str, dict[str, Any]]:
    jobs = client.get("/dataset/v1/request/list/t1", headers=headers(key)).json()["result"]["jobs"]
    return {job["requestId"]: job for job in jobs}


def test_a_poll_sees_every_change_since_the_last_one(
    client: TestClient, services: Services
) -> None:
    key = services.keys.create("poller", ["c1"], ["exhaust"])[1]
    first, second = submit(client, key, 1), submit(client, key, 2)
    for _ in range(2):  # the second round may answer from what the first kept
        assert read(client, key, first)["statusMessage"] == ""
        assert {job["status"] for job in listed(client, key).values()} == {"SUBMITTED"}
    database = services.settings.resolved_database_url
    if database.startswith("sqlite"):
        assert client.app.state.polls.jobs == 3  # type: ignore[attr-defined]  # kept: 2 + 1
    command = [sys.executable, "-c", CHANGE_ELSEWHERE, database, first]
    subprocess.run(command, check=True, timeout=60)
    assert read(client, key, first)["statusMessage"] == "changed by another process"
    assert listed(client, key)[first]["statusMessage"] == "changed by another process"
    services.stop_job(second, "t1:c1")  # and a change made by this process
    assert read(client, key, second)["status"] == "STOPPED"
    assert listed(client, key)[second]["status"] == "STOPPED"
    third = submit(client, key, 3)
    assert set(listed(client, key)) == {first, second, third}


def test_each_caller_gets_links_signed_for_it_on_every_poll(
    client: TestClient, services: Services
) -> None:
    services.executor = InlineExecutor(services.worker())
    callers = [services.keys.create(name, ["c1"], ["exhaust"]) for name in ("one", "two")]
    request_id = submit(client, callers[0][1], 3)
    for _ in range(2):
        for info, key in callers:
            for job in (read(client, key, request_id), listed(client, key)[request_id]):
                assert job["status"] == "SUCCESS" and len(job["downloadUrls"]) == 1
                query = parse_qs(urlsplit(job["downloadUrls"][0]).query)
                assert query["by"] == [info.key_id]
                assert job["expiresAt"] == int(query["expires"][0]) * 1000
                download = client.get(job["downloadUrls"][0])
                assert download.status_code == 200 and download.text.count("\n") == 4


def test_the_routes_in_an_app_of_ones_own_keep_their_answers_too(services: Services) -> None:
    """An app that adds the dataset routes itself (not through ``create_app``) still polls."""
    from fastapi import FastAPI

    from data_exhaust.api import datasets

    app = FastAPI()
    app.state.services = services
    app.router.routes.extend(datasets.router.routes)
    key = services.keys.create("embedder", ["c1"], ["exhaust"])[1]
    with TestClient(app) as client:
        request_id = submit(client, key, 1)
        for _ in range(2):
            assert read(client, key, request_id)["status"] == "SUBMITTED"
            assert set(listed(client, key)) == {request_id}
