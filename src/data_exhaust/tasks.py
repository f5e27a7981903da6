"""Tasks (tasks.md): imports and exports as jobs, and the task object the routes show.

A task IS a job of the ``job_request`` table run by the configured executor; its ``taskId``
is the job's requestId. :func:`start_import` checks an upload's shape at once (``.csv``,
UTF-8 header of the kind), stores it as a blob and submits an ``import-<kind>`` job;
:func:`start_export` submits a ``form-responses`` export. Tasks live under the tag and
channel ``tasks``, so ``POST /dataset/v1/request/stop/tasks`` stops them too.
"""

from __future__ import annotations

import uuid
from typing import IO, Any

from data_exhaust.api.render import epoch_ms
from data_exhaust.datasets import ConfigError, SubmitContext
from data_exhaust.datasets.imports import UPLOADS
from data_exhaust.jobs import Job
from data_exhaust.manager import Submission
from data_exhaust.registry_import import CONVERSATIONS, DEVICES, UCI_DEVICES
from data_exhaust.services import Services
from data_exhaust.store import JobFilter
from data_exhaust.table_import import FORM_RESPONSES, TEAMS

TASKS = "tasks"  # the tag and channel of every task
EXPORT = "form-responses"
IMPORT_HEADERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "teams": (TEAMS,),
    "form-responses": (FORM_RESPONSES,),
    "devices": (DEVICES, UCI_DEVICES),
    "conversations": (CONVERSATIONS,),
}
HEADER_BYTES = 64 * 1024
CHUNK = 1 << 20


class UploadError(ValueError):
    """The upload cannot be imported at all; the message says what to send instead."""


def check_header(kind: str, first: bytes) -> None:
    """The first line of ``first`` must be UTF-8 and the header of ``kind``."""
    line = first.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError("the file is not UTF-8 text; save it as CSV UTF-8") from None
    found = tuple(v.strip().strip('"').lower() for v in text.split(","))
    allowed = IMPORT_HEADERS[kind]
    if found not in allowed:
        expected = " or ".join(",".join(h) for h in allowed)
        raise UploadError(f"line 1 must be the header {expected}")


def start_import(
    services: Services, kind: str, file: IO[bytes], file_name: str, *, strict: bool,
    requested_by: str,
) -> Job:  # fmt: skip
    """Check and store the upload, then submit its import task."""
    if kind not in IMPORT_HEADERS:
        raise UploadError(f"unknown import kind '{kind}'; use one of {', '.join(IMPORT_HEADERS)}")
    if not file_name.lower().endswith(".csv"):
        raise UploadError("the file must be a .csv file")
    first = file.read(HEADER_BYTES)
    if not first.strip():
        raise UploadError("the file is empty; it needs a header line")
    check_header(kind, first)
    key = f"{UPLOADS}{uuid.uuid4().hex}.csv"
    with services.blobs.writer(key) as out:
        out.write(first)
        while chunk := file.read(CHUNK):
            out.write(chunk)
    config = {"blobKey": key, "strict": strict, "fileName": file_name[-300:]}
    return _submit(services, f"import-{kind}", config, requested_by, "import")


def start_export(services: Services, config: dict[str, Any], requested_by: str) -> Job:
    """Submit a ``form-responses`` export (``from``, ``to``, ``email``, ``baseUrl``)."""
    return _submit(services, EXPORT, config, requested_by, "export")


def _submit(
    services: Services, dataset_id: str, config: dict[str, Any], requested_by: str, kind: str
) -> Job:
    dataset = services.datasets[dataset_id]
    context = SubmitContext(TASKS, services.today(), services.settings, services.registry)
    try:
        normalised = dataset.validate(config, context)
    except ConfigError as exc:
        raise UploadError(str(exc)) from None
    if kind == "export":  # every export request is a new task, even with the same filters
        normalised = {**normalised, "nonce": uuid.uuid4().hex}
    submission = Submission(dataset_id, TASKS, TASKS, requested_by, normalised, kind=kind)
    job, _ = services.jobs.submit(submission)
    services.notify()
    return job


def recent(services: Services, limit: int, kind: str | None = None) -> list[Job]:
    """The newest tasks (of ``kind``: ``import`` or ``export``), newest first."""
    jobs = services.jobs.search(JobFilter(channels=[TASKS]), 1000 if kind else limit)[1]
    return [job for job in jobs if kind is None or job.kind == kind][:limit]


def task_json(job: Job, download_urls: list[str]) -> dict[str, Any]:
    """The task object of tasks.md."""
    p = job.progress
    done = p.get("done", p.get("rowsWritten", 0)) or 0
    total = p.get("total", p.get("rowsTotal"))
    percent = p.get("percent")
    if total and job.kind == "import":
        percent = round(min(100.0, 100.0 * done / total), 1)
    if job.status.value == "SUCCESS":
        percent = 100.0
    task: dict[str, Any] = {
        "taskId": job.request_id,
        "kind": "import" if job.kind == "import" else "export",
        "name": job.dataset.removeprefix("import-") if job.kind == "import" else job.dataset,
        "status": job.status.value,
        "message": job.message or "",
        "progress": {"done": done, "total": total, "percent": percent},
        "counts": {
            "inserted": p.get("inserted", 0),
            "rejected": p.get("rejected", 0),
            "rolledBack": p.get("rolledBack", 0),
        },
        "errors": p.get("errors", []),
        "downloadUrls": download_urls,
        "createdAt": epoch_ms(job.submitted_at),
        "finishedAt": epoch_ms(job.completed_at),
    }
    if "email" in p:
        task["email"] = p["email"]
    elif job.config.get("email"):
        task["email"] = {"to": job.config["email"], "sent": False, "reason": "not finished yet"}
    return task
