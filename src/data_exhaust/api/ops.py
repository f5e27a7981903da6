"""Operations routes: health and metrics (api.md §9)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from data_exhaust.api.deps import ServicesDep, require_scope
from data_exhaust.api.envelope import envelope
from data_exhaust.keys import Caller
from data_exhaust.services import Services

router = APIRouter(tags=["operations"])


def checks(services: Services) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        result["database"] = {"healthy": True, "dialect": services.engine.dialect.name}
    except Exception as exc:
        result["database"] = {"healthy": False, "error": type(exc).__name__}
    try:
        next(iter(services.blobs.keys("__health__/")), None)
        result["storage"] = {"healthy": True}
    except Exception as exc:
        result["storage"] = {"healthy": False, "error": type(exc).__name__}
    try:
        result["lake"] = {"healthy": True, **services.lake.stats()}
    except OSError as exc:
        result["lake"] = {"healthy": False, "error": type(exc).__name__}
    executor = services.executor.status() if services.executor else {"executor": "none"}
    result["executor"] = {"healthy": bool(executor.get("healthy", True)), **executor}
    return result


@router.get("/health", name="api.health")
def health(request: Request, services: ServicesDep) -> Response:
    """Database, storage and executor status; 503 when one is unhealthy. No key needed."""
    found = checks(services)
    healthy = all(part["healthy"] for part in found.values())
    if not healthy:
        response = envelope(
            request,
            {},
            code="SERVICE_UNAVAILABLE",
            message=f"unhealthy: {', '.join(k for k, v in found.items() if not v['healthy'])}",
        )
        return response
    return envelope(request, {"healthy": True, "checks": found})


@router.get("/metrics", name="api.metrics", response_class=Response)
def metrics(
    request: Request,
    _caller: Annotated[Caller, Depends(require_scope("admin"))],
) -> Response:
    """Prometheus text format (needs an admin key: ``Authorization: Bearer …``)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
