"""Item 3, where the time of a poll goes: the CPU one request costs the ASGI application itself
(no server, no socket, no HTTP parser), for the bare route and for the service's read and
list, and the psycopg async query alone.

The load benchmark (``bench/api.py``) measures req/s through uvicorn; every request there
also pays uvicorn and its HTTP parser, which the bare route pays too. Called in-process, one
request after another, the application's own CPU per request (best of 5 × 1,000) is steadier
than the load figures (though runs on a busy machine differ), and it shows what the ratio to
the bare route is made of: the framework's share, the route's own work, and the cost of each
listed job.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bench.api import postgres_database
from bench.common import Config, Row

REQUESTS = 1_000
REPEATS = 5
Headers = list[tuple[bytes, bytes]]


async def call(app: Any, path: str, query: str, headers: Headers) -> None:
    """One GET through the ASGI app; raises unless it answers 200."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": headers, "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [200]:
        raise RuntimeError(f"{path}?{query} answered {statuses}")


async def cpu_per_call(action: Callable[[], Awaitable[Any]]) -> float:
    """Microseconds of process CPU per call: the best of REPEATS runs of REQUESTS calls."""
    for _ in range(200):
        await action()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(REQUESTS):
            await action()
        best = min(best, (time.process_time() - started) / REQUESTS * 1e6)
    return best


async def bare_costs() -> dict[str, float]:
    from bench.bare_app import app

    headers = [(b"host", b"bench"), (b"authorization", b"Bearer x"), (b"x-channel-id", b"c")]
    return {
        "constant": await cpu_per_call(lambda: call(app, "/constant", "", headers)),
        "shaped": await cpu_per_call(lambda: call(app, "/shaped/seed", "requestId=A", headers)),
    }


async def service_costs(database_url: str, data_dir: Path) -> dict[str, float]:
    """read and list (10 of 20 jobs) through the service's app on ``database_url``."""
    from data_exhaust.api.app import create_app
    from data_exhaust.db import migrate
    from data_exhaust.manager import Submission
    from data_exhaust.services import build_services
    from data_exhaust.settings import Settings

    migrate(database_url)
    services = build_services(
        Settings(
            data_dir=data_dir,
            database_url=database_url,
            secret_key=secrets.token_hex(16),
            workers=0,
        )
    )
    try:
        _, key = services.keys.create("bench", ["c"], ["exhaust"])
        for n in range(20):
            config = {"conversationId": f"c{n}", "startDate": "2024-01-01"}
            job, _ = services.jobs.submit(
                Submission("uci-response-exhaust", "seed", "c", "b", config)
            )
        app: FastAPI = create_app(services, run_executor=False)
        headers = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode()),
                   (b"x-channel-id", b"c")]  # fmt: skip
        read = ("/dataset/v1/request/read/seed", f"requestId={job.request_id}")
        listing = ("/dataset/v1/request/list/seed", "limit=10")
        async with app.router.lifespan_context(app):
            return {
                "read": await cpu_per_call(lambda: call(app, *read, headers)),
                "list": await cpu_per_call(lambda: call(app, *listing, headers)),
            }
    finally:
        services.close()


async def psycopg_query(database_url: str) -> float:
    """One ``SELECT`` of a job row through a psycopg async pool, as the loop reads do."""
    from psycopg_pool import AsyncConnectionPool

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True}) as pool:  # fmt: skip

        async def query() -> None:
            async with pool.connection() as connection:
                cursor = await connection.execute("SELECT * FROM job_request LIMIT 1")
                await cursor.fetchall()

        return await cpu_per_call(query)


def measure(config: Config) -> dict[str, Any]:
    found: dict[str, Any] = {"bare": asyncio.run(bare_costs())}
    sqlite_dir = config.work / "api-costs" / "sqlite"
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    found["sqlite"] = asyncio.run(service_costs(f"sqlite:///{sqlite_dir}/jobs.db", sqlite_dir))
    with postgres_database() as url:
        found["postgres"] = asyncio.run(service_costs(url, config.work / "api-costs" / "pg"))
        found["psycopg_query_us"] = asyncio.run(psycopg_query(url))
    return found


def rows(costs: dict[str, Any]) -> list[Row]:
    bare = costs["bare"]["constant"]
    made = [
        Row("3", "API app CPU per request (in-process, no server)", "bare route",
            f"{bare:.0f} µs", "", "1.00×"),
        Row("3", "API app CPU per request (in-process, no server)", "read route's shape, no db",
            f"{costs['bare']['shaped']:.0f} µs", f"bare {bare:.0f} µs",
            f"{costs['bare']['shaped'] / bare:.1f}× bare"),
    ]  # fmt: skip
    for db in ("sqlite", "postgres"):
        read, listing = costs[db]["read"], costs[db]["list"]
        made.append(
            Row("3", "API app CPU per request (in-process, no server)", f"{db}: read / list of 10",
                f"read {read:.0f} µs, list {listing:.0f} µs ({(listing - read) / 9:.0f} µs "
                "per further job)", f"bare {bare:.0f} µs",
                f"{read / bare:.1f}× / {listing / bare:.1f}× bare")
        )  # fmt: skip
    made.append(
        Row("3", "API app CPU per request (in-process, no server)", "psycopg async query alone",
            f"{costs['psycopg_query_us']:.0f} µs", f"bare {bare:.0f} µs",
            f"{costs['psycopg_query_us'] / bare:.1f}× bare")
    )  # fmt: skip
    return made
