"""The older report routes of api.md §5 (seed 001), on the same engine and job table."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from data_exhaust.api.datasets import (
    LIMIT,
    TAG,
    ExhaustTenant,
    UserHeader,
    handle_list,
    handle_read,
    handle_submit,
    urls_for,
)
from data_exhaust.api.deps import CHANNEL_HEADER, parameter, polled_get
from data_exhaust.api.render import report_job
from data_exhaust.api.schemas import ReportSubmitBody, body
from data_exhaust.api.submission import REPORT_API
from data_exhaust.jobs import Job
from data_exhaust.services import Services

router = APIRouter(tags=["report jobs (seed 001)"])
API = "ekstep.analytics.job.request"


def render(request: Request, services: Services, job: Job) -> dict[str, Any]:
    return report_job(job, *urls_for(request, services, job))


@router.post(
    "/job/request/submit", name=f"{API}.submit",
    openapi_extra={**body(ReportSubmitBody), **CHANNEL_HEADER},
)  # fmt: skip
async def submit_report(
    request: Request, tenant: ExhaustTenant, user: UserHeader = None
) -> Response:
    """Submit a report job (``jobId`` is a dataset id, ``jobConfig`` its config)."""
    return await handle_submit(request, tenant, user, REPORT_API, render)


@polled_get(
    router, "/job/request/read/{tag}/{request_id}", f"{API}.info",
    TAG, parameter("request_id", "path", "The job's request id"),
)  # fmt: skip
async def read_report(request: Request) -> Response:
    """A report job by tag and request id."""
    return await handle_read(request, lambda r: str(r.path_params["request_id"]), report_job)


@polled_get(router, "/job/request/list/{tag}", f"{API}.list", TAG, LIMIT)
async def list_reports(request: Request) -> Response:
    """The report jobs of a tag, newest first."""
    return await handle_list(request, report_job)
