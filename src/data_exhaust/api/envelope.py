"""The response envelope of api.md §1, for answers and for errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from data_exhaust.api.errors import HTTP_STATUS


def now_ts() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def api_id(request: Request) -> str:
    """The API id of the route being answered (the route's name), for the envelope."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    return name if isinstance(name, str) and "." in name else "api.data-exhaust"


def envelope(
    request: Request,
    result: dict[str, Any],
    *,
    code: str = "OK",
    message: str | None = None,
    msgid: str | None = None,
) -> Response:
    failed = code != "OK"
    body = {
        "id": api_id(request),
        "ver": "1.0",
        "ts": now_ts(),
        "params": {
            "resmsgid": str(uuid.uuid4()),
            "msgid": msgid if msgid is not None else getattr(request.state, "msgid", None),
            "status": "failed" if failed else "successful",
            "err": code if failed else None,
            "errmsg": message if failed else None,
            "client_key": None,
        },
        "responseCode": code,
        "result": {} if failed else result,
    }
    return json_response(body, HTTP_STATUS[code])


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
