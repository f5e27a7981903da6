"""Task routes (tasks.md): imports, the form-responses export, status, list and stop.

Admin scope; JSON answers in the api.md envelope. A task is a job (taskId = requestId), so
``/stop_task/<id>`` is the same operation as ``POST /dataset/v1/request/stop/...``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from data_exhaust.api.datasets import base_url, parse_limit, urls_for
from data_exhaust.api.deps import ServicesDep
from data_exhaust.api.envelope import envelope
from data_exhaust.api.errors import ApiError, client_error
from data_exhaust.api.session import AdminCaller
from data_exhaust.jobs import FINISHED, Job, Status
from data_exhaust.keys import Caller
from data_exhaust.manager import JobConflict
from data_exhaust.services import Services
from data_exhaust.tasks import UploadError, recent, start_export, start_import, task_json

router = APIRouter(tags=["tasks"])
API = "api.tasks"
FileField = Annotated[UploadFile, File(description="The CSV file (UTF-8, header line)")]


def render_task(request: Request, services: Services, job: Job) -> dict[str, Any]:
    return task_json(job, urls_for(request, services, job)[0])


def find_task(services: Services, task_id: str) -> Job:
    job = services.jobs.find(task_id.strip())
    if job is None:
        raise ApiError("RESOURCE_NOT_FOUND", f"no task with id '{task_id}'")
    return job


async def upload(
    services: Services, kind: str, file: UploadFile, strict: bool, caller: Caller
) -> Job:
    """Check and store an upload and start its import task (shared with the HTML page)."""
    try:
        return await run_in_threadpool(
            start_import, services, kind, file.file, file.filename or "", strict=strict,
            requested_by=caller.name,
        )  # fmt: skip
    except UploadError as exc:
        raise client_error(str(exc)) from None


@router.post("/v1/imports/{kind}", name=f"{API}.import")
async def post_import(
    request: Request, kind: str, file: FileField, services: ServicesDep, caller: AdminCaller,
    strict: Annotated[bool, Query(description="The first bad row fails the task")] = False,
) -> Response:  # fmt: skip
    """Start an import task of ``kind`` (teams, form-responses, devices, conversations)."""
    job = await upload(services, kind, file, strict, caller)
    return envelope(request, render_task(request, services, job))


@router.get("/tasks/{task_id}", name=f"{API}.read")
def read_task(
    request: Request, task_id: str, services: ServicesDep, caller: AdminCaller
) -> Response:
    """A task: status, progress, counts, errors (first 100) and download links when done."""
    return envelope(request, render_task(request, services, find_task(services, task_id)))


@router.get("/tasks", name=f"{API}.list")
def list_tasks(
    request: Request, services: ServicesDep, caller: AdminCaller,
    limit: Annotated[str | None, Query()] = None,
) -> Response:  # fmt: skip
    """Recent tasks, newest first (limit 1–1000, default 100)."""
    tasks = [render_task(request, services, j) for j in recent(services, parse_limit(limit))]
    return envelope(request, {"count": len(tasks), "tasks": tasks})


def stop(services: Services, task_id: str) -> tuple[str, Job]:
    """Stop a task; what happened (stopped, stopping, already finished) and the task."""
    job = find_task(services, task_id)
    try:
        job = services.stop_job(job.request_id)
    except JobConflict:
        job = find_task(services, task_id)
        if job.status in FINISHED:
            return "already finished", job
        raise
    return ("stopped" if job.status == Status.STOPPED else "stopping"), job


@router.post("/stop_task/{task_id}", name=f"{API}.stop")
@router.get("/stop_task/{task_id}", name=f"{API}.stop.get")
def stop_task(
    request: Request, task_id: str, services: ServicesDep, caller: AdminCaller
) -> Response:
    """Stop a task, waiting or running (a running import rolls back its rows): 404 if
    unknown; ``outcome`` says stopped, stopping (running: ends STOPPED within 5 s) or
    already finished."""
    try:
        outcome, job = stop(services, task_id)
    except JobConflict as exc:
        raise ApiError("CONFLICT", str(exc)) from None
    return envelope(request, {"outcome": outcome, "task": render_task(request, services, job)})


@router.get("/export_data/", name=f"{API}.export")
def export_data(
    request: Request, services: ServicesDep, caller: AdminCaller,
    email: Annotated[str | None, Query()] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: Annotated[str | None, Query()] = None,
) -> Response:  # fmt: skip
    """Start a form-responses export (``from``/``to`` inclusive ISO-8601); the link is
    e-mailed to ``email`` when SMTP is configured, else recorded as not sent."""
    config = {"from": from_, "to": to, "email": email, "baseUrl": base_url(request, services)}
    try:
        job = start_export(services, config, caller.name)
    except UploadError as exc:
        raise client_error(str(exc)) from None
    status_url = f"{base_url(request, services).rstrip('/')}/tasks/{job.request_id}"
    return envelope(
        request,
        {"taskId": job.request_id, "statusUrl": status_url, **render_task(request, services, job)},
    )
