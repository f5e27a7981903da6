"""``GET /v1/audit``: the download audit log, for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from data_exhaust.api.datasets import parse_limit
from data_exhaust.api.deps import ServicesDep, require_scope
from data_exhaust.api.envelope import envelope
from data_exhaust.audit import Download
from data_exhaust.keys import Caller

router = APIRouter(tags=["operations"])


def download_json(download: Download) -> dict[str, Any]:
    return {
        "requestId": download.request_id,
        "file": download.blob_key.rpartition("/")[2],
        "keyId": download.key_id,
        "channel": download.channel,
        "address": download.client_address,
        "userAgent": download.user_agent,
        "status": download.status,
        "downloadedAt": download.downloaded_at.isoformat(timespec="milliseconds"),
    }


@router.get("/v1/audit", name="api.audit.list")
def list_downloads(
    request: Request,
    services: ServicesDep,
    _caller: Annotated[Caller, Depends(require_scope("admin"))],
    request_id: Annotated[str | None, Query(alias="requestId")] = None,
    limit: Annotated[str | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    """Downloads of result files, newest first: which key, request and file, when, from where.
    ``count`` is the total number of matches. Admin keys only."""
    total, found = services.audit.query(request_id or None, parse_limit(limit), offset)
    return envelope(request, {"count": total, "downloads": [download_json(d) for d in found]})
