"""Import and export tasks (tasks.md) on real SQLite and Postgres, run by the real worker."""

from __future__ import annotations

import csv
import email
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from data_exhaust.api.app import create_app
from data_exhaust.datasets import RunContext
from data_exhaust.datasets.imports import ImportTeams
from data_exhaust.import_core import BatchCallback, ImportResult
from data_exhaust.jobs import Job, Status
from data_exhaust.models import FormResponse, Team
from data_exhaust.services import Services, build_services
from data_exhaust.tasks import recent, start_export, start_import, task_json
from tests.conftest import free_port, make_settings, wait_for

TEAMS_HEADER = "name,description,manager,members\n"


class ExplodingTeamsImport(ImportTeams):
    """A teams import whose run breaks after 100 rows (a database outage, say)."""

    id = "import-teams"

    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        def explode(done: int, result: ImportResult) -> None:
            on_batch(done, result)
            if result.rows >= 100:
                raise RuntimeError("the database went away")

        return super().load(ctx, source, strict, explode)


def build(tmp_path: Path, database_url: str, **overrides: Any) -> Services:
    values: dict[str, Any] = {"import_batch_rows": 20, "workers": 2, **overrides}
    return build_services(make_settings(tmp_path / "data", database_url, **values))


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    built = build(tmp_path, database_url)
    yield built
    built.close()


def teams_csv(rows: int, bad_every: int = 0) -> bytes:
    lines = [TEAMS_HEADER]
    for i in range(1, rows + 1):
        bad = bad_every and i % bad_every == 0
        lines.append(f"Team {i},,{'x' * 21 if bad else 'mgr'},a;b\n")
    return "".join(lines).encode()


def form_csv(days: list[int]) -> bytes:
    header = "timestamp,user,name_of_respondent,gender_of_respondent,reading_books,"
    header += "listening_music,mobile_no,record_latitude,record_longitude\n"
    rows = [
        f"2020-05-{d:02d}T10:00:00Z,u{d},Resp {d},F,yes,no,+1555000{d:04d},12.5,77.25\n"
        for d in days
    ]
    return (header + "".join(rows)).encode()


def start(services: Services, kind: str, data: bytes, strict: bool = False) -> Job:
    return start_import(services, kind, io.BytesIO(data), f"{kind}.csv", strict=strict,
                        requested_by="test")  # fmt: skip


def run(services: Services, job: Job) -> dict[str, Any]:
    while services.worker().run_one():
        pass
    return task_json(services.jobs.get(job.request_id), [])


def rows_of(services: Services, model: type[Team] | type[FormResponse], task_id: str) -> int:
    with Session(services.engine) as session:
        query = select(func.count()).select_from(model).where(model.task_id == task_id)
        return int(session.scalar(query) or 0)


def test_teams_import_counts_bad_rows_with_line_numbers_and_stays(services: Services) -> None:
    job = start(services, "teams", teams_csv(50, bad_every=10))
    task = run(services, job)
    assert task["status"] == "SUCCESS" and task["kind"] == "import" and task["name"] == "teams"
    assert task["counts"] == {"inserted": 45, "rejected": 5, "rolledBack": 0}
    assert [e["line"] for e in task["errors"]] == [11, 21, 31, 41, 51]
    assert "manager is longer than 20" in task["errors"][0]["message"]
    assert task["progress"]["done"] == 50 and task["progress"]["percent"] == 100.0
    assert rows_of(services, Team, job.request_id) == 45


@pytest.mark.parametrize("kind", ["form-responses", "conversations", "devices"])
def test_every_import_kind_runs_as_a_task(services: Services, kind: str) -> None:
    conversations = b"conversation_id,name,channel,start_date,end_date\nc1,Bot,ch,,\n"
    data = {
        "form-responses": form_csv([1, 2, 3]),
        "conversations": conversations,
        "devices": b"device_uuid,conversation_id,phone,consent\nd1,c1,,true\nd2,c1,,no\n",
    }[kind]
    if kind == "devices":
        run(services, start(services, "conversations", conversations))
    task = run(services, start(services, kind, data))
    assert task["status"] == "SUCCESS", task
    assert task["counts"]["inserted"] == {"form-responses": 3, "conversations": 1}.get(kind, 2)


def test_strict_import_fails_with_nothing_left(services: Services) -> None:
    job = start(services, "teams", teams_csv(100, bad_every=90), strict=True)
    task = run(services, job)
    assert task["status"] == "FAILED" and "line 91" in task["message"]
    assert task["errors"][0]["line"] == 91
    assert rows_of(services, Team, job.request_id) == 0


def test_a_failed_import_is_rolled_back(tmp_path: Path, database_url: str) -> None:
    services = build(
        tmp_path, database_url, max_attempts=1,
        plugins=["tests.integration.test_tasks:ExplodingTeamsImport"],
    )  # fmt: skip
    try:
        job = start(services, "teams", teams_csv(300))
        task = run(services, job)
        assert task["status"] == "FAILED" and "database went away" in task["message"]
        # on Postgres the next batch (2 writers) was on its way and commits too: counted, gone
        inserted = 120 if services.engine.dialect.name == "postgresql" else 100
        assert task["counts"]["inserted"] == inserted == task["counts"]["rolledBack"]
        assert rows_of(services, Team, job.request_id) == 0
    finally:
        services.close()


STOPPED_ROWS = 600_000


def test_stopping_a_running_import_rolls_back_only_its_rows(services: Services) -> None:
    """Two imports run at once; one is stopped half-way: its rows go, the other's stay.
    The stopped one is long enough (600 k rows) not to end first on a fast machine: 60 k rows
    on SQLite were all in before the stop on the bench machine."""
    services.executor = services.make_executor()
    services.executor.start()
    kept = start(services, "teams", teams_csv(3000))
    stopped = start(services, "teams", teams_csv(STOPPED_ROWS))
    wait_for(lambda: rows_of(services, Team, stopped.request_id) > 0)
    assert services.jobs.get(stopped.request_id).status == Status.PROCESSING
    services.jobs.stop(stopped.request_id)
    asked = time.monotonic()
    wait_for(lambda: services.jobs.get(stopped.request_id).finished, timeout=30)
    elapsed = time.monotonic() - asked
    task = task_json(services.jobs.get(stopped.request_id), [])
    assert task["status"] == "STOPPED", task
    assert 0 < task["counts"]["rolledBack"] == task["counts"]["inserted"] < STOPPED_ROWS
    assert rows_of(services, Team, stopped.request_id) == 0
    wait_for(lambda: services.jobs.get(kept.request_id).finished)
    assert services.jobs.get(kept.request_id).status == Status.SUCCESS
    assert rows_of(services, Team, kept.request_id) == 3000
    assert elapsed < 15  # generous: tasks.md asks for 5 s; measured well under it


def read_file(services: Services, job: Job) -> str:
    done = services.jobs.get(job.request_id)
    assert done.status == Status.SUCCESS, done.message
    return b"".join(services.blobs.read(done.files[0].key)).decode()


def test_form_responses_export_filters_inclusively_in_order(services: Services) -> None:
    run(services, start(services, "form-responses", form_csv([9, 3, 5, 1, 7])))
    job = start_export(services, {"from": "2020-05-03T10:00:00Z", "to": "2020-05-07 10:00"}, "t")
    task = run(services, job)
    lines = list(csv.reader(io.StringIO(read_file(services, job))))
    assert ",".join(lines[0]) == (
        "timestamp,user,name_of_respondent,gender_of_respondent,reading_books,"
        "listening_music,mobile_no,record_latitude,record_longitude"
    )
    assert [line[1] for line in lines[1:]] == ["u3", "u5", "u7"]
    assert lines[1][:6] == ["2020-05-03T10:00:00Z", "u3", "Resp 3", "F", "yes", "no"]
    assert lines[1][7:] == ["12.5", "77.25"]
    assert task["kind"] == "export" and "email" not in task


def test_a_stopped_export_leaves_no_file(services: Services) -> None:
    run(services, start(services, "form-responses", form_csv(list(range(1, 29)))))
    job = start_export(services, {}, "t")
    owner = "test-owner"
    claimed = services.jobs.claim(owner, job.request_id)
    assert claimed is not None
    services.jobs.stop(job.request_id)  # a stop arriving while it runs
    worker = services.worker()
    worker.execute(services.jobs.get(job.request_id))
    assert services.jobs.get(job.request_id).status == Status.STOPPED
    assert list(services.blobs.keys("form-responses/")) == []


class Inbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content.decode())
        return "250 OK"


def test_the_export_link_is_emailed(tmp_path: Path, database_url: str) -> None:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    services = build(tmp_path, database_url, smtp_url=f"smtp://127.0.0.1:{port}")
    try:
        run(services, start(services, "form-responses", form_csv([1, 2])))
        job = start_export(services, {"email": "ops@example.org", "baseUrl": "http://x"}, "t")
        task = run(services, job)
        assert task["email"] == {"to": "ops@example.org", "sent": True, "reason": None}
        key = services.jobs.get(job.request_id).files[0].key
        assert len(inbox.messages) == 1
        message = email.message_from_string(inbox.messages[0])
        assert message["To"] == "ops@example.org"
        payload = message.get_payload(decode=True)
        assert isinstance(payload, bytes) and f"http://x/download/{key}?" in payload.decode()
    finally:
        services.close()
        controller.stop()


def test_without_smtp_the_email_is_recorded_as_not_sent(services: Services) -> None:
    job = start_export(services, {"email": "ops@example.org"}, "t")
    task = run(services, job)
    assert task["status"] == "SUCCESS"
    assert task["email"]["sent"] is False and "EXHAUST_SMTP_URL" in task["email"]["reason"]


def test_routes(services: Services) -> None:
    key = services.keys.create("admin", [], ["admin"])[1]
    bearer = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(services, run_executor=False)) as client:
        files = {"file": ("teams.csv", teams_csv(5), "text/csv")}
        answer = client.post("/v1/imports/teams?strict=true", files=files, headers=bearer)
        assert answer.status_code == 200, answer.text
        task_id = answer.json()["result"]["taskId"]
        bad = client.post("/v1/imports/teams", files={"file": ("t.txt", b"x", "text/plain")},
                          headers=bearer)  # fmt: skip
        assert bad.status_code == 400 and ".csv" in bad.json()["params"]["errmsg"]
        header = client.post("/v1/imports/teams", files={"file": ("t.csv", b"a,b\n", "text/csv")},
                             headers=bearer)  # fmt: skip
        assert "header name,description,manager,members" in header.json()["params"]["errmsg"]
        assert client.get(f"/tasks/{task_id}").status_code == 401
        assert client.get(f"/tasks/{task_id}", headers=bearer).json()["result"]["status"] == (
            "SUBMITTED"
        )
        assert client.get("/stop_task/nope", headers=bearer).status_code == 404
        stopped = client.post(f"/stop_task/{task_id}", headers=bearer).json()["result"]
        assert stopped["outcome"] == "stopped" and stopped["task"]["status"] == "STOPPED"
        page = client.get("/import_teams/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        login = client.post("/login", data={"key": key, "next": "/import_teams/"},
                            follow_redirects=False)  # fmt: skip
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        html = client.get("/import_teams/")  # the cookie, not the URL, carries the key
        assert html.status_code == 200 and "<progress" in html.text and task_id[:12] in html.text
        upload = client.post("/import_teams/", files={"file": ("t.csv", teams_csv(2), "text/csv")},
                             headers={"Accept": "application/json"})  # fmt: skip
        new_id = upload.json()["result"]["task_id"]
        assert client.get("/tasks?limit=5").json()["result"]["tasks"][0]["taskId"] == new_id
        export = client.get("/export_data/?email=a@b.org&from=2017-05-15%2000:00", headers=bearer)
        assert export.json()["result"]["statusUrl"].endswith(export.json()["result"]["taskId"])
        while services.worker().run_one():
            pass
        again = client.get(f"/stop_task/{new_id}", headers=bearer).json()["result"]
        assert again["outcome"] == "already finished"
    assert next(t.request_id for t in recent(services, 10, "import")) == new_id
