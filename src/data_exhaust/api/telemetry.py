"""``POST /v1/telemetry`` (alias ``/data/v1/telemetry``): the chatbot's telemetry (api.md §6).

The body is read here and parsed by ``Ingestor.parse``, not by FastAPI/pydantic: a 1,000-event
batch must not be turned into models (orjson on the raw bytes is an order of magnitude
cheaper), and the size limit must be enforced before parsing. Parsing and the ingest (which
blocks on ``fsync``) run in the thread pool, keeping the event loop free for other requests.

A process stores at most ``EXHAUST_INGEST_BATCHES`` batches at once (default 2); the others
wait their turn, in order. Storing a batch is Python on the CPU with an ``fsync`` and two
SQLite statements, each of which gives up the GIL and must win it back: with four batches at
once (the API's four threads) they fought over it, and under load the ``msgid`` lookup took
8.8 ms at the median (20 at p90) and the append with its ``fsync`` 22 ms (51), for well
under 2 ms of work. Two at a time still let one batch's ``fsync`` run beside the other's
parsing. Alternated with four, 9 runs each of 80 batches of 1,000 from 8 clients: one
process 37.0 -> 39.6 k events/s, p99 284 -> 228 ms (medians); two processes 58.0 -> 57.7 k,
p99 232 -> 208 ms, every run under 250 ms (bench/HISTORY.md, *Eleventh sitting*).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import anyio
import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from data_exhaust.api.deps import per_app, require_scope, services_of
from data_exhaust.api.errors import ApiError
from data_exhaust.ingest import IngestResult
from data_exhaust.keys import Caller

router = APIRouter(tags=["telemetry"])
IngestCaller = Annotated[Caller, Depends(require_scope("ingest"))]

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Sunbird telemetry v3 event (datasets.md §1); extra fields are kept.",
    "required": ["eid", "ets", "ver", "mid", "actor", "context", "edata"],
    "properties": {
        "eid": {"type": "string", "example": "ASSESS"},
        "ets": {"type": "integer", "description": "epoch milliseconds", "example": 1655822756892},
        "ver": {"type": "string", "enum": ["3.0", "3.1"]},
        "mid": {"type": "string"},
        "actor": {"type": "object", "required": ["id", "type"]},
        "context": {"type": "object", "required": ["channel", "env", "pdata"]},
        "edata": {"type": "object"},
        "object": {"type": "object"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": True,
}
BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["events"],
                    "properties": {
                        "id": {"type": "string", "example": "api.sunbird.telemetry"},
                        "ver": {"type": "string", "example": "3.0"},
                        "params": {
                            "type": "object",
                            "properties": {"msgid": {"type": "string"}},
                            "description": "A batch whose msgid was accepted is not stored twice",
                        },
                        "ets": {"type": "integer", "description": "epoch milliseconds"},
                        "events": {"type": "array", "items": _EVENT_SCHEMA},
                    },
                }
            }
        },
    }
}


async def _read_raw(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = f"the telemetry batch exceeds {limit:,} bytes; send fewer events per request"
    if declared.isdigit() and int(declared) > limit:
        raise ApiError("PAYLOAD_TOO_LARGE", too_large)
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError("PAYLOAD_TOO_LARGE", too_large)
    return raw


def _answer(body: dict[str, Any], result: IngestResult) -> Response:
    params = body.get("params")
    msgid = params.get("msgid") if isinstance(params, dict) else None
    answer = {
        "id": "api.telemetry",
        "ver": "1.0",
        "ets": int(time.time() * 1000),
        "params": {"resmsgid": str(uuid.uuid4()), "msgid": msgid, "status": "successful"},
        "responseCode": "SUCCESS",
        "result": {"accepted": result.accepted, "rejected": result.rejected},
    }
    return Response(orjson.dumps(answer), media_type="application/json")


@router.post("/v1/telemetry", name="api.telemetry", openapi_extra=BODY_SCHEMA)
@router.post(
    "/data/v1/telemetry", name="api.telemetry.alias", openapi_extra=BODY_SCHEMA,
    operation_id="post_telemetry_alias",
)  # fmt: skip
async def post_telemetry(request: Request, caller: IngestCaller) -> Response:
    """Store a batch of telemetry v3 events: valid ones durably, invalid ones in quarantine.

    The answer lists each rejected event (``index``, ``mid``, ``errors``); the rest of the
    batch is accepted. A batch whose ``params.msgid`` was already accepted is acknowledged
    again without being stored twice. Up to 5 MB per request.
    """
    services = services_of(request)
    raw = await _read_raw(request, services.settings.max_body_bytes)
    channels = None if caller.is_admin else caller.channels

    def store() -> Response:
        # Parsing a 1,000-event batch takes tens of milliseconds: here, in the thread pool
        # with the ingest, not in the event loop where it would hold up every other request.
        body = services.ingestor.parse(raw)
        params = body.get("params")
        if isinstance(params, dict) and isinstance(params.get("msgid"), str):
            request.state.msgid = params["msgid"]  # echoed by error envelopes too
        return _answer(body, services.ingestor.ingest(body, channels, consume=True))

    return await anyio.to_thread.run_sync(store, limiter=ingest_limiter(request))


def ingest_limiter(request: Request) -> anyio.CapacityLimiter:
    """The process's turn for batches: one limiter per app, made by its first batch."""
    batches = services_of(request).settings.ingest_batches
    return per_app(request, "ingest_limiter", lambda: anyio.CapacityLimiter(batches))
