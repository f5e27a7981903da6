"""The framework's own ceilings, served by uvicorn with the settings ``exhaust serve`` uses
(one process, ``log_level="warning"``):

* ``/constant``: a bare FastAPI route returning a constant;
* ``/shaped/{tag}`` and ``/shaped-sync/{tag}``: the same constant behind the *shape* of the
  service's read route (a path parameter, a query parameter, an ``X-Channel-ID`` header and
  the chain of async dependencies ``get_services`` → ``authenticate`` → ``check`` with its
  ``Authorization`` header), without any key lookup or database; the ``-sync`` one is a plain
  ``def`` endpoint, which FastAPI runs in its thread pool as it does the service's read.
  They show what FastAPI's parameter and dependency handling, and the thread hop, cost.

``python -m bench.bare_app PORT [PROCESSES]``: with PROCESSES > 1, that many processes on the
port, each with a socket of its own, as ``exhaust serve --processes`` runs them
(:func:`data_exhaust.serving.serve_processes`).
"""

from __future__ import annotations

import sys
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request

app = FastAPI()
CONSTANT: dict[str, object] = {
    "id": "api.bench",
    "ver": "1.0",
    "responseCode": "OK",
    "result": {"ok": True},
}
SERVICES = object()


@app.get("/constant")
async def constant() -> dict[str, object]:
    return CONSTANT


async def get_services(request: Request) -> object:
    return SERVICES


async def authenticate(
    request: Request,
    services: Annotated[object, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    return (authorization or "").partition(" ")[2]


async def check(caller: Annotated[str, Depends(authenticate)]) -> str:
    return caller


Shaped = Annotated[str, Depends(check)]


@app.get("/shaped/{tag}")
async def shaped(
    tag: str,
    caller: Shaped,
    request_id: Annotated[str | None, Query(alias="requestId")] = None,
    x_channel_id: Annotated[str | None, Header()] = None,
) -> dict[str, object]:
    return CONSTANT


@app.get("/shaped-sync/{tag}")
def shaped_sync(
    tag: str,
    caller: Shaped,
    request_id: Annotated[str | None, Query(alias="requestId")] = None,
    x_channel_id: Annotated[str | None, Header()] = None,
) -> dict[str, object]:
    return CONSTANT


if __name__ == "__main__":
    import uvicorn

    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if workers > 1:  # as `exhaust serve --processes N` runs them
        from data_exhaust.serving import serve_processes

        serve_processes(workers, "127.0.0.1", port, "bench.bare_app:app", factory=False)
    else:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
