"""The ingest's HTTP ceiling: bare FastAPI ``POST /v1/telemetry`` routes, served by uvicorn with
the settings ``exhaust serve`` uses (one process, ``log_level="warning"``).

* ``/v1/telemetry`` reads the body and parses it with ``orjson.loads`` (in the event loop: no
  thread hop, the cheapest place on one process), then answers ``{"result": {"accepted": n}}``
  with ``n`` = the number of events, as the service does, so ``bench.ingest.load`` works as is.
* ``/noparse/{count}/v1/telemetry`` only reads the body; ``count`` (the batch size, taken from
  the URL because the body is not parsed) is echoed as ``accepted``.

No authentication, validation, storage or ``fsync``: what is left is the framework, the HTTP
transfer of the body and JSON parsing. The heap is frozen once started, with the service's
collector threshold (``data_exhaust.heap.freeze_heap``): without it, parsing each batch of
1,000 ran the young generation's collection ~70 times, and the parse-only route cost more CPU
per event (24-29 µs) than the least checking ingest (``bench/least_ingest_app.py``, 23-31 µs).
"""

from __future__ import annotations

import sys

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


def _accepted(count: int) -> Response:
    body = orjson.dumps({"id": "api.telemetry", "result": {"accepted": count, "rejected": []}})
    return Response(body, media_type="application/json")


@app.get("/health")
async def health() -> Response:
    return _accepted(0)


@app.post("/v1/telemetry")
async def parse(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return _accepted(len(body["events"]))


@app.post("/noparse/{count}/v1/telemetry")
async def read_only(count: int, request: Request) -> Response:
    await request.body()
    return _accepted(count)


if __name__ == "__main__":
    import uvicorn

    from data_exhaust.heap import freeze_heap

    freeze_heap()
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
