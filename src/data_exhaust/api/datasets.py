"""The dataset request routes of api.md §4 (Sunbird's data-exhaust API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from data_exhaust.api.deps import (
    CHANNEL_HEADER,
    ChannelKey,
    Tenant,
    parameter,
    per_app,
    polled_get,
    services_of,
)
from data_exhaust.api.envelope import envelope
from data_exhaust.api.errors import ApiError, client_error
from data_exhaust.api.polls import Formatter, PollCache, PolledJob, expiry_ms, polled
from data_exhaust.api.render import dataset_job, signed_urls
from data_exhaust.api.schemas import SearchBody, SubmitBody, body
from data_exhaust.api.submission import DATASET_API, Names, build_submission, parse_body
from data_exhaust.datasets import SubmitContext
from data_exhaust.jobs import Job, Status, stored_tag
from data_exhaust.keys import Caller
from data_exhaust.manager import JobConflict, JobNotFound
from data_exhaust.services import Services
from data_exhaust.store import JobFilter

router = APIRouter(tags=["dataset requests"])
API = "ekstep.analytics.dataset.request"
#: The caller and its channel. The routes clients poll (read, list) await ``EXHAUST_KEY``
#: themselves and read their parameters from the request (:class:`~deps.PolledRoute`).
EXHAUST_KEY = ChannelKey("exhaust")
ExhaustTenant = Annotated[Tenant, Depends(EXHAUST_KEY)]
UserHeader = Annotated[str | None, Header(alias="X-Authenticated-Userid")]
RequestIdQuery = Annotated[str | None, Query(alias="requestId")]
TAG = parameter("tag", "path", "The tag the jobs were submitted with")
LIMIT = parameter("limit", "query", "How many jobs, newest first: 1–1000 (default 100)")
Renderer = Callable[[Request, "Services", Job], dict[str, Any]]


def base_url(request: Request, services: Services) -> str:
    return services.settings.public_url or str(request.base_url)


def render(request: Request, services: Services, job: Job) -> dict[str, Any]:
    return dataset_job(job, *urls_for(request, services, job))


def urls_for(request: Request, services: Services, job: Job) -> tuple[list[str], int]:
    """Fresh signed links for ``job``, issued to the calling key (named in the audit log)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return signed_urls(
        job,
        services.blobs,
        lambda: base_url(request, services),
        services.settings.url_ttl_seconds,
        by=caller.key_id if caller else "",
    )


def require_request_id(request_id: str | None) -> str:
    if not request_id or not request_id.strip():
        raise client_error(
            "requestId is required, e.g. ?requestId=1E2A13DA30671FDBA10C418C9EF14A70"
        )
    return request_id.strip()


def parse_limit(raw: str | None, default: int = 100) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise client_error(f"limit must be a number from 1 to 1000, not '{raw}'") from None
    if not 1 <= limit <= 1000:
        raise client_error(f"limit must be a number from 1 to 1000, not {limit}")
    return limit


async def handle_list(request: Request, formatter: Formatter) -> Response:
    """A tag's jobs in the caller's channel, newest first: shared by both list routes (read
    from the event loop, without a thread hop: ``job_reads.py``; kept between polls while no
    job changes: ``polls.py``)."""
    tenant, services = await EXHAUST_KEY(request), services_of(request)
    tag = stored_tag(request.path_params["tag"], tenant.channel)
    limit = parse_limit(request.query_params.get("limit"))

    async def read() -> list[Job]:
        return await services.jobs.list_tag_async(tag, limit)

    jobs = await polled(poll_cache(request), services.jobs, ("list", tag, limit), formatter, read)
    rendered = this_poll(request, services, jobs)
    return envelope(request, {"count": len(rendered), "jobs": rendered})


def this_poll(request: Request, services: Services, jobs: Sequence[PolledJob]) -> list[Any]:
    """The polled jobs' API objects, with the links and expiry of this poll."""
    expires_at = expiry_ms(services.settings.url_ttl_seconds)
    links = partial(urls_for, request, services)
    return [job.render(links, expires_at) for job in jobs]


def poll_cache(request: Request) -> PollCache:
    """The app's kept answers, made at its first poll."""
    return per_app(request, "polls", PollCache)


async def handle_submit(
    request: Request, tenant: Tenant, user: str | None, names: Names, renderer: Renderer
) -> Response:
    """Validate, submit (or deduplicate) and answer: shared by both submit routes."""
    services, caller, channel = services_of(request), tenant.caller, tenant.channel
    payload, msgid = parse_body(await request.body())
    request.state.msgid = msgid

    def submit() -> dict[str, Any]:
        submission = build_submission(
            payload,
            names=names,
            caller=caller,
            channel=channel,
            user_id=user,
            datasets=services.datasets,
            submit=SubmitContext(channel, services.today(), services.settings, services.registry),
            box=services.settings.secret_box,
        )
        job, deduplicated = services.jobs.submit(submission)
        if not deduplicated:
            services.notify()
        return {**renderer(request, services, job), "deduplicated": deduplicated}

    return envelope(request, await run_in_threadpool(submit))


@router.post(
    "/dataset/v1/request/submit", name=f"{API}.submit",
    openapi_extra={**body(SubmitBody), **CHANNEL_HEADER},
)  # fmt: skip
async def submit_request(
    request: Request, tenant: ExhaustTenant, user: UserHeader = None
) -> Response:
    """Submit an export request; an identical request returns the existing job (deduplicated)."""
    return await handle_submit(request, tenant, user, DATASET_API, render)


@polled_get(
    router, "/dataset/v1/request/read/{tag}", f"{API}.info",
    TAG, parameter("requestId", "query", "The job's requestId"),
)  # fmt: skip
async def read_request(request: Request) -> Response:
    """A job of this channel by tag and requestId, with freshly signed download URLs."""
    return await handle_read(request, query_request_id, dataset_job)


def query_request_id(request: Request) -> str:
    return require_request_id(request.query_params.get("requestId"))


async def handle_read(
    request: Request, request_id_of: Callable[[Request], str], formatter: Formatter
) -> Response:
    """One job of the caller's channel by its tag and request id (``request_id_of``, read
    after the key is checked): shared by both read routes (from the event loop, kept between
    polls as the list's pages are)."""
    tenant, services = await EXHAUST_KEY(request), services_of(request)
    request_id = request_id_of(request)
    tag = stored_tag(request.path_params["tag"], tenant.channel)

    async def read() -> list[Job]:
        return [await get_job(services, request_id, tag)]

    key = ("read", request_id, tag)
    jobs = await polled(poll_cache(request), services.jobs, key, formatter, read)
    return envelope(request, this_poll(request, services, jobs)[0])


@polled_get(router, "/dataset/v1/request/list/{tag}", f"{API}.list", TAG, LIMIT)
async def list_requests(request: Request) -> Response:
    """The jobs of a tag in this channel, newest first (limit 1–1000, default 100)."""
    return await handle_list(request, dataset_job)


@router.post(
    "/dataset/v1/request/search", name=f"{API}.search",
    openapi_extra={**body(SearchBody), **CHANNEL_HEADER},
)  # fmt: skip
async def search_requests(request: Request, tenant: ExhaustTenant) -> Response:
    """Jobs of this channel matching filters (dataset, status, requestedDate, tag)."""
    services, channel = services_of(request), tenant.channel
    payload, msgid = parse_body(await request.body())
    request.state.msgid = msgid
    where, limit, offset = search_filter(payload, channel, services)

    def search() -> dict[str, Any]:
        total, jobs = services.jobs.search(where, limit, offset)
        return {"count": total, "jobs": [render(request, services, job) for job in jobs]}

    return envelope(request, await run_in_threadpool(search))


@router.post("/dataset/v1/request/stop/{tag}", name=f"{API}.stop", openapi_extra=CHANNEL_HEADER)
def stop_request(
    request: Request, tag: str, tenant: ExhaustTenant, request_id: RequestIdQuery = None
) -> Response:
    """Stop a job: a waiting one at once, a running one at its next checkpoint (≤ 5 s)."""
    services = services_of(request)
    try:
        job = services.stop_job(require_request_id(request_id), stored_tag(tag, tenant.channel))
    except JobNotFound as exc:
        raise ApiError("RESOURCE_NOT_FOUND", str(exc)) from None
    except JobConflict as exc:
        raise ApiError("CONFLICT", str(exc)) from None
    return envelope(request, render(request, services, job))


async def get_job(services: Services, request_id: str, tag: str) -> Job:
    """The job, read from the event loop (no thread hop: ``job_reads.py``), else 404."""
    try:
        return await services.jobs.get_async(request_id, tag)
    except JobNotFound as exc:
        raise ApiError("RESOURCE_NOT_FOUND", str(exc)) from None


def search_filter(
    payload: dict[str, Any], channel: str, services: Services
) -> tuple[JobFilter, int, int]:
    filters = payload.get("filters")
    if not filters:
        raise client_error("Filters are empty")
    if not isinstance(filters, dict):
        raise client_error('filters must be an object like {"status": "SUCCESS"}')
    status = filters.get("status")
    if status is not None and status not in Status.__members__:
        raise client_error(f"status must be one of {', '.join(Status)}")
    tag = filters.get("tag")
    dataset = filters.get("dataset")
    for name, value in (("tag", tag), ("dataset", dataset)):
        if value is not None and not isinstance(value, str):
            raise client_error(f"filters.{name} must be a string")
    start, end = _day_bounds(filters.get("requestedDate"), services)
    where = JobFilter(
        channels=[channel],
        tags=[stored_tag(tag, channel)] if tag else None,
        dataset=dataset,
        status=Status(status) if status else None,
        submitted_from=start,
        submitted_before=end,
    )
    return where, _number(payload, "limit", 100, 1, 1000), _number(payload, "offset", 0, 0, 10**9)


def _day_bounds(value: Any, services: Services) -> tuple[datetime | None, datetime | None]:
    if value is None:
        return None, None
    try:
        day = date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise client_error("requestedDate must be YYYY-MM-DD")
    start = datetime.combine(day, time(), services.settings.tz)
    return start, datetime.combine(day + timedelta(days=1), time(), services.settings.tz)


def _number(payload: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = payload.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise client_error(f"{name} must be a whole number from {low} to {high}")
    return value
