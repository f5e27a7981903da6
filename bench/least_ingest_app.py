"""The least a checking HTTP ingest does, served on two processes the way ``exhaust serve
--processes 2`` serves the service (``data_exhaust.serving.serve_processes``: uvicorn, one
``SO_REUSEPORT`` socket per process, the heap frozen after start-up).

``POST /v1/telemetry`` reads the body, parses it with ``orjson.loads`` and, for each event (let
go once its line is made, as the service does), runs the service's own ``check_event`` (the
checks and the canonical JSON), hashes the canonical JSON with SHA-256 and makes a line of the
hash and the JSON; the batch's lines are written with one ``os.write`` to a file of the
process's own and ``fsync``'d before the answer (``{"result": {"accepted": n}}``, as the
service's). All in the event loop: no thread hop. ``POST /rows/v1/telemetry`` does the same
with the lake's flattened rows as JSON lines instead, as the service stored events before
event lines (``flatten`` and ``encode_rows``): the bound of that design.

What it leaves out, and any checking ingest needs or the service does besides: authentication,
the ``msgid`` lookup and record, the keys, options and response of the service's event lines
(``data_exhaust.event_lines``), the quarantine of invalid events. A design that checks each
event in Python behind FastAPI and takes in more events per second than this app on the same
machine would have to do less per event than this (parse less of the body, say): the app is
item 2's bound for such designs, where the *ingest bound* row is this code's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from data_exhaust.heap import freeze_heap
from data_exhaust.lake import encode_rows
from data_exhaust.telemetry import check_event, flatten

APP = "bench.least_ingest_app:make_app"


def _accepted(count: int) -> Response:
    body = orjson.dumps({"id": "api.telemetry", "result": {"accepted": count, "rejected": []}})
    return Response(body, media_type="application/json")


Line = Callable[[dict[str, Any], bytes], bytes]


def least_line(event: dict[str, Any], canonical: bytes) -> bytes:
    """The hash, a tab and the canonical JSON."""
    return b"%s\t%s\n" % (sha256(canonical).hexdigest().encode(), canonical)


def row_line(event: dict[str, Any], canonical: bytes) -> bytes:
    """The lake's flattened row as a JSON line (the service's format before event lines)."""
    return encode_rows([flatten(event, canonical)])


def lines_of(events: list[Any], line: Line) -> tuple[bytes, int]:
    """The stored lines of a batch's valid events and their count; ``events`` is emptied as
    it is read."""
    lines: list[bytes] = []
    for index, event in enumerate(events):
        events[index] = None
        canonical = check_event(event)[1]
        if canonical is not None:
            lines.append(line(event, canonical))
    return b"".join(lines), len(lines)


def make_app() -> FastAPI:
    """The app of one process (uvicorn's factory): appends to ``least-<pid>.lines`` in the
    working directory."""
    app = FastAPI()
    fd = os.open(Path.cwd() / f"least-{os.getpid()}.lines", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @app.get("/health")
    async def health() -> Response:
        return _accepted(0)

    def route(path: str, line: Line) -> None:
        @app.post(path)
        async def ingest(request: Request) -> Response:
            data, count = lines_of(orjson.loads(await request.body())["events"], line)
            os.write(fd, data)
            os.fsync(fd)
            return _accepted(count)

    route("/v1/telemetry", least_line)
    route("/rows/v1/telemetry", row_line)
    freeze_heap()
    return app


if __name__ == "__main__":
    from data_exhaust.serving import serve_processes

    serve_processes(int(sys.argv[2]), "127.0.0.1", int(sys.argv[1]), APP)
