"""The HTML pages of the data-collection users (seed 003): log in, and ``/import_teams/``.

Server-rendered with Jinja2 (autoescaped); the progress bars poll ``/tasks/<id>`` with a few
lines of plain JavaScript. The key comes from the login form into an HttpOnly,
SameSite=Strict cookie (see :mod:`data_exhaust.api.session`), never from the URL.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from data_exhaust.api.deps import ServicesDep
from data_exhaust.api.envelope import envelope
from data_exhaust.api.errors import ApiError
from data_exhaust.api.session import COOKIE, caller_of, caller_of_async
from data_exhaust.api.tasks import FileField, render_task, upload
from data_exhaust.jobs import FINISHED
from data_exhaust.tasks import recent

router = APIRouter(tags=["pages"], include_in_schema=False)
templates = Environment(
    loader=PackageLoader("data_exhaust", "templates"), autoescape=select_autoescape()
)
PAGE = "/import_teams/"


def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=status)


def safe_next(target: str) -> str:
    """Only a path of this site (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else PAGE


@router.get("/login", name="page.login")
def login_page(next: str = PAGE) -> HTMLResponse:
    return page("login.html", next=safe_next(next), error=None)


@router.post("/login", name="page.login.post")
def login(
    request: Request, services: ServicesDep,
    key: Annotated[str, Form()], next: Annotated[str, Form()] = PAGE,
) -> Response:  # fmt: skip
    caller = services.keys.authenticate(key.strip())
    if caller is None or not caller.is_admin:
        return page("login.html", 401, next=safe_next(next), error="unknown or non-admin key")
    answer = RedirectResponse(safe_next(next), status_code=303)
    answer.set_cookie(
        COOKIE, key.strip(), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return answer


@router.post("/logout", name="page.logout")
def logout() -> Response:
    answer = RedirectResponse("/login", status_code=303)
    answer.delete_cookie(COOKIE, path="/")
    return answer


@router.get(PAGE, name="page.import_teams")
def import_teams_page(
    request: Request, services: ServicesDep, started: str | None = None
) -> Response:
    caller = caller_of(request, services, None)
    if caller is None or not caller.is_admin:
        return RedirectResponse(f"/login?next={PAGE}", status_code=303)
    tasks = [render_task(request, services, j) for j in recent(services, 20, "import")]
    return page("import_teams.html", tasks=tasks, started=started, error=None, finished=FINISHED)


@router.post(PAGE, name="api.tasks.import_teams")
async def import_teams(
    request: Request, file: FileField, services: ServicesDep,
    strict: Annotated[bool, Form()] = False,
    accept: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:  # fmt: skip
    """Start a teams import; JSON with ``Accept: application/json``, else back to the page."""
    caller = await caller_of_async(request, services, authorization)
    if caller is None or not caller.is_admin:
        raise ApiError("UNAUTHORIZED", "log in at /login or send 'Authorization: Bearer <key>'")
    wants_json = "application/json" in (accept or "")
    try:
        job = await upload(services, "teams", file, strict, caller)
    except ApiError as exc:
        if wants_json:
            raise
        tasks = [render_task(request, services, j) for j in recent(services, 20, "import")]
        return page("import_teams.html", 400, tasks=tasks, started=None, error=exc.message,
                    finished=FINISHED)  # fmt: skip
    if wants_json:
        task = render_task(request, services, job)
        return envelope(request, {"task_id": job.request_id, **task})
    return RedirectResponse(f"{PAGE}?started={job.request_id}", status_code=303)
