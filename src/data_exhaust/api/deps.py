"""FastAPI dependencies: the process's services, the authenticated caller and its channel."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from starlette.concurrency import run_in_threadpool
from starlette.routing import request_response

from data_exhaust.api.errors import ApiError
from data_exhaust.keys import Caller
from data_exhaust.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


T = TypeVar("T")


def per_app(request: Request, name: str, make: Callable[[], T]) -> T:
    """The app's own ``name`` (in its state), made by ``make`` at its first request: in the
    event loop's thread, so two first requests cannot both make one, and where an AnyIO
    primitive must be made; an app that adds the routes itself gets it too."""
    state = request.app.state
    found = getattr(state, name, None)
    if found is None:
        found = make()
        setattr(state, name, found)
    return found


async def get_services(request: Request) -> Services:
    # async: a plain function would cost a thread-pool hop per request for nothing
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


#: How the API key is documented in OpenAPI (the "Authorize" button of ``/docs``).
BEARER = HTTPBearerModel(
    bearerFormat="API key",
    description="An API key made with `exhaust keys create`, sent as "
    "`Authorization: Bearer <key>`.",
)


class ApiKey(SecurityBase):
    """The dependency of every keyed route: the caller whose ``Authorization: Bearer`` key
    is valid (and has ``scope``, or ``admin``), else 401/403 in the envelope.

    One dependency that reads its header itself, rather than a chain of three with a declared
    ``Header`` parameter: FastAPI validates every declared parameter of every dependency on
    every request, which cost ~12 % of a poll of ``read`` (bench/README.md, API). Being a
    :class:`SecurityBase`, it is documented in OpenAPI as a bearer scheme."""

    def __init__(self, scope: str | None = None) -> None:
        self.model = BEARER
        self.scheme_name = "ApiKey"
        self.scope = scope

    async def __call__(self, request: Request) -> Caller:
        caller = await authenticate(request, request.headers.get("authorization"))
        scope = self.scope
        if scope is not None and scope not in caller.scopes and not caller.is_admin:
            raise ApiError("FORBIDDEN", f"this API key lacks the '{scope}' scope")
        return caller


async def authenticate(request: Request, authorization: str | None) -> Caller:
    """The caller of an ``Authorization: Bearer <key>`` header, else 401 in the envelope."""
    if not authorization:
        raise ApiError("UNAUTHORIZED", "Authorization header is missing; send 'Bearer <API key>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("UNAUTHORIZED", "Authorization header must be 'Bearer <API key>'")
    caller = await verify_key(services_of(request), token.strip())
    if caller is None:
        raise ApiError(
            "UNAUTHORIZED", "unknown or revoked API key; create one with `exhaust keys create`"
        )
    request.state.caller = caller  # download links name the key they were issued to
    return caller


async def verify_key(services: Services, token: str) -> Caller | None:
    """The caller behind ``token``: from the key cache in the event loop, else looked up in the
    database in the thread pool (async: a cache hit costs no thread hop and no query)."""
    caller = services.keys.cached(token)
    if caller is None:
        caller = await run_in_threadpool(services.keys.authenticate, token)
    return caller


def require_scope(scope: str) -> ApiKey:
    """A dependency that answers 401 without a valid key, 403 unless it has ``scope``."""
    return ApiKey(scope)


@dataclass(frozen=True)
class Tenant:
    """Who calls a dataset or report route, and for which channel (api.md §2)."""

    caller: Caller
    channel: str


class ChannelKey(SecurityBase):
    """:class:`ApiKey` plus the tenant named by ``X-Channel-ID``, checked against the key:
    the dependency of the dataset and report routes (401, then 403 for the scope, then 403
    for the channel). It reads the header itself (see :class:`ApiKey`); the routes document
    it with :data:`CHANNEL_HEADER`."""

    def __init__(self, scope: str) -> None:
        self.key = ApiKey(scope)
        self.model, self.scheme_name = self.key.model, self.key.scheme_name

    async def __call__(self, request: Request) -> Tenant:
        caller = await self.key(request)
        return Tenant(caller, channel_of(caller, request.headers.get("x-channel-id")))


#: ``openapi_extra`` of a route depending on :class:`ChannelKey`: its ``X-Channel-ID`` header.
CHANNEL_HEADER: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Channel-ID",
            "in": "header",
            "required": True,
            "description": "The tenant (state, org) of the request; the API key must allow it",
            "schema": {"type": "string"},
        }
    ]
}


def parameter(name: str, where: str, description: str, *, required: bool = False) -> dict[str, Any]:
    """One string parameter of an OpenAPI operation (for :func:`polled`)."""
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": {"type": "string"},
    }


def polled(*parameters: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route clients poll (read, list), whose endpoint takes only the
    request and reads its parameters, key and channel itself (``await ChannelKey(...)(request)``).

    FastAPI solves and validates every declared parameter and dependency on every request: in
    process, a constant behind a path parameter, a query parameter, a header and a dependency
    cost 133 µs of CPU per request against 54 µs for the same endpoint reading them from the
    request (bench/README.md, API). These routes are documented as the declared ones were:
    their ``parameters``, the ``X-Channel-ID`` header and the bearer key."""
    return {
        "security": [{ApiKey().scheme_name: []}],
        "parameters": [*parameters, *CHANNEL_HEADER["parameters"]],
    }


PolledEndpoint = Callable[[Request], Awaitable[Response]]


class PolledRoute(APIRoute):
    """A route clients poll, served as a plain Starlette endpoint: ``endpoint(request)``.

    Matched, named and documented in OpenAPI as any route (``openapi_extra`` from
    :func:`polled`), but called without FastAPI's request handler, which on every request
    solves the (empty) dependencies, opens two exit stacks and checks the response: in
    process, 17-23 µs of the 88 µs of CPU a ``read`` cost (bench/README.md, API). Errors go
    through the app's exception handlers as from any route."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if list(inspect.signature(endpoint).parameters) != ["request"]:
            raise TypeError(f"{endpoint.__name__}: a polled route's endpoint takes only request")
        super().__init__(path, endpoint, **kwargs)
        self.app = request_response(endpoint)


def polled_get(
    router: APIRouter, path: str, name: str, *parameters: dict[str, Any]
) -> Callable[[PolledEndpoint], PolledEndpoint]:
    """Register ``GET path`` on ``router`` as a :class:`PolledRoute` with ``parameters``."""

    def register(endpoint: PolledEndpoint) -> PolledEndpoint:
        router.add_api_route(
            path, endpoint, methods=["GET"], name=name, openapi_extra=polled(*parameters),
            route_class_override=PolledRoute,
        )  # fmt: skip
        return endpoint

    return register


def channel_of(
    caller: Caller,
    x_channel_id: str | None,
) -> str:
    """The tenant named by ``X-Channel-ID``, checked against the caller's key (api.md §2)."""
    if not x_channel_id or not x_channel_id.strip():
        raise ApiError("FORBIDDEN", "X-Channel-ID is missing in request header")
    channel = x_channel_id.strip()
    if not caller.may_use(channel):
        raise ApiError("FORBIDDEN", f"X-Channel-ID '{channel}' is not allowed for this API key")
    return channel
