"""Who calls the task routes and pages: an admin key, sent as ``Authorization: Bearer`` (API
clients) or held in the login cookie (the HTML pages; never in a URL).

The cookie holds the API key itself: HttpOnly (no script reads it), SameSite=Strict (no other
site's page sends it, which is the CSRF defence: every state change is a POST or a
same-site navigation), Secure when served over HTTPS, and a session lifetime. The trade-off:
a stolen cookie is the key, until the key is revoked (``exhaust keys revoke``); there is no
server-side session to expire separately. docs/howto/tasks.md explains it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from data_exhaust.api.deps import ServicesDep, verify_key
from data_exhaust.api.errors import ApiError
from data_exhaust.keys import Caller
from data_exhaust.services import Services

COOKIE = "exhaust_key"


def _token_of(request: Request, authorization: str | None) -> str | None:
    """The key of the Bearer header or else of the login cookie."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.cookies.get(COOKIE)


def _remember(request: Request, caller: Caller | None) -> Caller | None:
    if caller is not None:
        request.state.caller = caller
    return caller


def caller_of(request: Request, services: Services, authorization: str | None) -> Caller | None:
    """The caller of the header or cookie, for routes that run in the thread pool."""
    token = _token_of(request, authorization)
    return _remember(request, services.keys.authenticate(token) if token else None)


async def caller_of_async(
    request: Request, services: Services, authorization: str | None
) -> Caller | None:
    """The same for async routes: a cache miss is looked up in the thread pool, never in the
    event loop."""
    token = _token_of(request, authorization)
    return _remember(request, await verify_key(services, token) if token else None)


async def admin_caller(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> Caller:
    """An admin key from the header or the login cookie, else 401/403 in the envelope."""
    caller = await caller_of_async(request, services, authorization)
    if caller is None:
        raise ApiError("UNAUTHORIZED", "log in at /login or send 'Authorization: Bearer <key>'")
    if not caller.is_admin:
        raise ApiError("FORBIDDEN", "this API key lacks the 'admin' scope")
    return caller


AdminCaller = Annotated[Caller, Depends(admin_caller)]
