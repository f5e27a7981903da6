"""The FastAPI application: routers, the error envelope, metrics and the embedded executor."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from data_exhaust import __version__
from data_exhaust.api import (
    audit,
    datasets,
    download,
    ops,
    pages,
    registry,
    reports,
    tasks,
    telemetry,
)
from data_exhaust.api.envelope import envelope
from data_exhaust.api.errors import ApiError
from data_exhaust.metrics import Metrics
from data_exhaust.services import Services

log = structlog.get_logger(__name__)

STATUS_CODES = {
    400: "CLIENT_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "RESOURCE_NOT_FOUND",
    405: "CLIENT_ERROR",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "CLIENT_ERROR",
    422: "CLIENT_ERROR",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}

DESCRIPTION = """On-demand data exhaust: post chatbot telemetry, submit export requests, poll
them, and download the files through signed, expiring URLs. Compatible with Sunbird's
data-exhaust API (`/dataset/v1/request/*`) and its older report API (`/job/request/*`).

Every route but `/health` and `/download/…` needs `Authorization: Bearer <API key>`
(create one with `exhaust keys create`); dataset routes also need `X-Channel-ID`."""


def limit_threads(count: int) -> None:
    """Run the API's blocking work (sync endpoints, key lookups, ingest) on ``count`` threads.

    AnyIO's default is 40. Each of them gives up the GIL in every SQLite step or socket read
    and must win it back from the others: at 64 clients, list (ten rows, ten such waits) ran
    at 229 req/s with 40 threads and 467 with 4 on SQLite (258 and 278-367 on Postgres); read
    did not get slower (bench/README.md, API)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = count


def app_from_settings() -> FastAPI:
    """The app of one process of ``exhaust serve --processes N`` (uvicorn's factory, called in
    each process it starts): its own services from the ``EXHAUST_*`` settings, as one
    ``exhaust serve`` builds them; the parent has already migrated the database."""
    from data_exhaust.heap import freeze_heap
    from data_exhaust.logs import configure
    from data_exhaust.services import build_services
    from data_exhaust.settings import Settings

    configure(os.environ.get("EXHAUST_LOG_LEVEL", "INFO").upper())  # not the CLI's process
    app = create_app(build_services(Settings()))
    freeze_heap()
    return app


def create_app(services: Services, *, run_executor: bool = True) -> FastAPI:
    """The API over ``services``; with ``run_executor`` it also runs the configured executor
    (embedded worker threads, or the Celery publisher and sweeper)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_threads(services.settings.api_threads)
        await services.jobs.open_loop_reads()  # read and list without a thread hop
        if run_executor and services.executor is None:
            services.executor = services.make_executor()
            services.executor.start()
        yield
        if run_executor and services.executor is not None:
            services.executor.shutdown()
            services.executor = None
        await services.jobs.close_loop_reads()

    app = FastAPI(
        title="Data Exhaust", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.services = services
    app.state.metrics = Metrics(lambda where: services.jobs.search(where, 0)[0])
    for module in (datasets, reports, telemetry, registry, download, audit, ops, tasks, pages):
        add_routes(app, module.router)
    _install_handlers(app)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The routes of ``router`` added to the app's own router, as ``include_router`` did
    before FastAPI 0.165. Each route already carries what its router gave it when it was
    declared (prefix, tags, dependencies, ``include_in_schema``); only ``include_router``'s
    own arguments would be lost, and none are needed here.

    ``include_router`` now keeps the router as a branch that every request walks through:
    in process, a constant route inside an included router cost 74 µs of CPU per request
    against 48 µs on the app's own router (bench/README.md, API)."""
    app.router.routes.extend(router.routes)


class RequestMetrics:
    """Counts answers by route and status and times them, as plain ASGI middleware.

    (``@app.middleware("http")`` would wrap every request and its body in extra tasks and
    memory streams: a measurable share of a short request's cost.)
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the answer starts: an exception escaping the app

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return envelope(request, {}, code=exc.code, message=exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return envelope(
            request,
            {},
            code="CLIENT_ERROR",
            message=f"{where or 'request'}: {first.get('msg', 'invalid request')}",
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = STATUS_CODES.get(exc.status_code, "SERVER_ERROR")
        message = "no such route; see /docs" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "another method")
            message = f"{request.method} is not allowed here; use {allowed} (see /docs)"
        response = envelope(request, {}, code=code, message=message)
        if 400 <= exc.status_code < 500:  # keep the HTTP status (405, 415...) and its Allow
            response.status_code = exc.status_code
            response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("api.error", path=request.url.path)
        return envelope(
            request, {}, code="SERVER_ERROR", message="internal error; it has been logged"
        )
