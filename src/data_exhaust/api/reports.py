"""The older report routes of api.md §5 (seed 001), on the same engine and job table."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from data_exhaust.api.datasets import UserHeader, get_job, handle_list, handle_submit, urls_for
from data_exhaust.api.deps import ChannelHeader, ServicesDep, channel_of, require_scope
from data_exhaust.api.envelope import envelope
from data_exhaust.api.render import report_job
from data_exhaust.api.schemas import ReportSubmitBody, body
from data_exhaust.api.submission import REPORT_API
from data_exhaust.jobs import Job, stored_tag
from data_exhaust.keys import Caller
from data_exhaust.services import Services

router = APIRouter(tags=["report jobs (seed 001)"])
API = "ekstep.analytics.job.request"
ExhaustCaller = Annotated[Caller, Depends(require_scope("exhaust"))]


def render(request: Request, services: Services, job: Job) -> dict[str, Any]:
    return report_job(job, *urls_for(request, services, job))


@router.post("/job/request/submit", name=f"{API}.submit", openapi_extra=body(ReportSubmitBody))
async def submit_report(
    request: Request,
    services: ServicesDep,
    caller: ExhaustCaller,
    x_channel_id: ChannelHeader = None,
    user: UserHeader = None,
) -> Response:
    """Submit a report job (``jobId`` is a dataset id, ``jobConfig`` its config)."""
    return await handle_submit(request, services, caller, x_channel_id, user, REPORT_API, render)


@router.get("/job/request/read/{tag}/{request_id}", name=f"{API}.info")
def read_report(
    request: Request,
    tag: str,
    request_id: str,
    services: ServicesDep,
    caller: ExhaustCaller,
    x_channel_id: ChannelHeader = None,
) -> Response:
    """A report job by tag and request id."""
    channel = channel_of(caller, x_channel_id)
    job = get_job(services, request_id, stored_tag(tag, channel))
    return envelope(request, render(request, services, job))


@router.get("/job/request/list/{tag}", name=f"{API}.list")
def list_reports(
    request: Request,
    tag: str,
    services: ServicesDep,
    caller: ExhaustCaller,
    x_channel_id: ChannelHeader = None,
    limit: Annotated[str | None, Query()] = None,
) -> Response:
    """The report jobs of a tag, newest first."""
    return handle_list(request, services, caller, x_channel_id, tag, limit, render)
