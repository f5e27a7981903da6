"""FastAPI dependencies: the process's services, the authenticated caller and its channel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from data_exhaust.api.errors import ApiError
from data_exhaust.keys import Caller
from data_exhaust.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    # async: a plain function would cost a thread-pool hop per request for nothing
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> Caller:
    if not authorization:
        raise ApiError("UNAUTHORIZED", "Authorization header is missing; send 'Bearer <API key>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("UNAUTHORIZED", "Authorization header must be 'Bearer <API key>'")
    caller = await verify_key(services, token.strip())
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


def require_scope(scope: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency that answers 403 unless the caller's key has ``scope`` (or ``admin``)."""

    async def check(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if scope not in caller.scopes and not caller.is_admin:
            raise ApiError("FORBIDDEN", f"this API key lacks the '{scope}' scope")
        return caller

    return check


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


ChannelHeader = Annotated[
    str | None, Header(alias="X-Channel-ID", description="The tenant (state, org) of the request")
]
