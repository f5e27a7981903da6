"""Item 3 — API: submit / read / list at 64 concurrent clients on SQLite and on Postgres,
beside a bare FastAPI route returning a constant (the framework's ceiling) in the same run.

The servers run with ``EXHAUST_WORKERS=0`` (API only) so that submitted jobs are not executed
during the measurement: what is measured is the request path (auth, validation, the job table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench.common import Config, Row, median
from bench.data import CHANNEL
from bench.loadgen import request_bytes, run_load
from bench.server import Server, server, submit_export

CLIENTS = 64
#: Runs last RUN_S seconds each (REQUESTS only bounds them), after one WARMUP_S run that is
#: not counted: runs of 800 requests lasted ~0.1 s on the bare route of a fast machine.
REQUESTS = 1_000_000
RUN_S = 1.0
WARMUP_S = 0.3
READ_TARGET = 0.5
PROCESSES = 2  # the extra rows: `exhaust serve --processes 2` beside the bare route on 2
PG_ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c"]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh bench database on 127.0.0.1:5432 (user postgres, trust), always dropped."""
    name = f"exhaust_bench_{os.getpid()}"
    subprocess.run([*PG_ADMIN, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        subprocess.run([*PG_ADMIN, drop], check=False, capture_output=True)


def _config(conversation: str) -> dict[str, Any]:
    return {"conversationId": conversation, "startDate": "2024-01-01", "endDate": "2024-01-07"}


def makers(base: str, key: str) -> dict[str, Callable[[int], bytes]]:
    """Request builders per operation; submissions are all distinct (no deduplication)."""
    headers = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
    run = uuid.uuid4().hex[:8]
    seeded = _seed(base, headers)
    read = request_bytes("GET", f"{base}/dataset/v1/request/read/seed?requestId={seeded}", headers)
    listing = request_bytes("GET", f"{base}/dataset/v1/request/list/seed?limit=10", headers)
    post_headers = {**headers, "Content-Type": "application/json"}

    def submit(n: int) -> bytes:
        request = {"tag": "load", "dataset": "uci-response-exhaust",
                   "datasetConfig": _config(f"bench-{run}-{n}")}  # fmt: skip
        body = json.dumps({"request": request}).encode()
        return request_bytes("POST", f"{base}/dataset/v1/request/submit", post_headers, body)[2]

    return {"submit": submit, "read": lambda n: read[2], "list": lambda n: listing[2]}


def _seed(base: str, headers: dict[str, str]) -> str:
    """20 jobs under tag ``seed`` (what list returns 10 of); the id of the last one."""
    with httpx.Client(timeout=30) as client:
        ids = [
            submit_export(client, base, headers, _config(f"seed-{n}"), "seed") for n in range(20)
        ]
    return ids[-1]


def measure(url: str, make: Callable[[int], bytes], runs: int) -> dict[str, Any]:
    """One uncounted warm-up run, then ``runs`` runs of RUN_S seconds."""
    run_load(url, make, clients=CLIENTS, total=REQUESTS, limit_s=WARMUP_S)
    results = [
        run_load(url, make, clients=CLIENTS, total=REQUESTS, limit_s=RUN_S).summary()
        for _ in range(runs)
    ]
    if any(r["errors"] for r in results):
        raise RuntimeError(f"errors under load: {results}")
    keys = ("rps", "p50_ms", "p99_ms")
    return {"runs": results, **{f"median_{k}": median([r[k] for r in results]) for k in keys}}


#: The bare app's routes: the constant, and the constant behind the read route's shape.
SHAPES = {
    "shaped": "/shaped/seed?requestId=ABC",
    "shaped_sync": "/shaped-sync/seed?requestId=ABC",
}


def constant(request: bytes) -> Callable[[int], bytes]:
    """A request maker that sends the same bytes every time."""
    return lambda _: request


def bare_ceiling(config: Config) -> dict[str, Any]:
    """The bare route (``"constant"`` at the top level, as before) and the shaped ones."""
    bare = Server(config.work / "bare" / "var")
    bare.data_dir.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": "Bearer not-a-key", "X-Channel-ID": CHANNEL}
    try:
        base = bare.start([sys.executable, "-m", "bench.bare_app", "{port}"], "/constant")
        make = request_bytes("GET", f"{base}/constant", {})[2]
        found = measure(base, constant(make), config.runs)
        for name, path in SHAPES.items():
            found[name] = measure(
                base, constant(request_bytes("GET", f"{base}{path}", headers)[2]), config.runs
            )
        return found
    finally:
        bare.stop_all()


def backend(
    config: Config, name: str, database_url: str | None, processes: int = 1
) -> dict[str, Any]:
    env = {"EXHAUST_WORKERS": "0"}
    if database_url:
        env["EXHAUST_DATABASE_URL"] = database_url
    with server(config.work / f"api-{name}" / "var", **env) as srv:
        key = srv.create_key(CHANNEL, "exhaust")
        base = srv.serve_processes(processes)
        return {op: measure(base, make, config.runs) for op, make in makers(base, key).items()}


def bare_processes(config: Config, processes: int) -> dict[str, Any]:
    """The bare route on ``processes`` processes (uvicorn's supervisor)."""
    bare = Server(config.work / f"bare-{processes}" / "var")
    bare.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        argv = [sys.executable, "-m", "bench.bare_app", "{port}", str(processes)]
        base = bare.start(argv, "/constant", processes)
        make = request_bytes("GET", f"{base}/constant", {})[2]
        return measure(base, lambda n: make, config.runs)
    finally:
        bare.stop_all()


def _row(db: str, op: str, m: dict[str, Any], ceiling: float) -> Row:
    rps, ratio = m["median_rps"], m["median_rps"] / ceiling
    target = op in ("read", "list")
    return Row(
        "3", f"API {op}", f"{db}, {CLIENTS} clients",
        f"{rps:,.0f} req/s, p50 {m['median_p50_ms']:.0f} ms, p99 {m['median_p99_ms']:.0f} ms",
        f"bare route {ceiling:,.0f} req/s", f"{ratio:.2f}× bare",
        f"≥ {READ_TARGET}× bare" if target else "", ratio >= READ_TARGET if target else None,
    )  # fmt: skip


def processes_rows(bare: dict[str, Any], sqlite: dict[str, Any]) -> list[Row]:
    """Both sides on PROCESSES processes: beside the target's rows, not instead of them."""
    ceiling = bare["median_rps"]
    where = f"{CLIENTS} clients, {PROCESSES} server processes"
    rows = [Row("3", "API bare FastAPI route", f"constant, {where}", _rate(bare), "",
                f"{ceiling / ceiling:.2f}×")]  # fmt: skip
    for op in ("submit", "read", "list"):
        m = sqlite[op]
        rows.append(Row("3", f"API {op}", f"sqlite, {where}", _rate(m),
                        f"bare route ×{PROCESSES} {ceiling:,.0f} req/s",
                        f"{m['median_rps'] / ceiling:.2f}× bare ×{PROCESSES}"))  # fmt: skip
    return rows


def _rate(m: dict[str, Any]) -> str:
    return (f"{m['median_rps']:,.0f} req/s, p50 {m['median_p50_ms']:.0f} ms, "
            f"p99 {m['median_p99_ms']:.0f} ms")  # fmt: skip


def _shape_row(name: str, m: dict[str, Any], ceiling: float) -> Row:
    how = "async endpoint" if name == "shaped" else "sync endpoint (thread-pool hop)"
    return Row(
        "3", "API ceiling: read route's parameters and dependencies, no database",
        f"{how}, {CLIENTS} clients",
        f"{m['median_rps']:,.0f} req/s, p50 {m['median_p50_ms']:.0f} ms, "
        f"p99 {m['median_p99_ms']:.0f} ms",
        f"bare route {ceiling:,.0f} req/s", f"{m['median_rps'] / ceiling:.2f}× bare",
    )  # fmt: skip


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    bare = bare_ceiling(config)
    results: dict[str, Any] = {"bare": bare, "sqlite": backend(config, "sqlite", None)}
    with postgres_database() as url:
        results["postgres"] = backend(config, "postgres", url)
    results[f"bare_x{PROCESSES}"] = bare_processes(config, PROCESSES)
    results[f"sqlite_x{PROCESSES}"] = backend(config, f"sqlite-{PROCESSES}", None, PROCESSES)
    ceiling = bare["median_rps"]
    rows = [
        Row("3", "API bare FastAPI route", f"constant, {CLIENTS} clients",
            f"{ceiling:,.0f} req/s, p50 {bare['median_p50_ms']:.0f} ms, "
            f"p99 {bare['median_p99_ms']:.0f} ms", "", "1.00× (ceiling)"),
    ]  # fmt: skip
    rows += [_shape_row(name, bare[name], ceiling) for name in SHAPES]
    for db in ("sqlite", "postgres"):
        rows += [_row(db, op, results[db][op], ceiling) for op in ("submit", "read", "list")]
    rows += processes_rows(results[f"bare_x{PROCESSES}"], results[f"sqlite_x{PROCESSES}"])
    from bench import api_costs  # it uses postgres_database from here

    results["app_costs"] = api_costs.measure(config)
    rows += api_costs.rows(results["app_costs"])
    inputs = {"clients": CLIENTS, "run_s": RUN_S, "warmup_s": WARMUP_S,
              "list_limit": 10, "executor": "EXHAUST_WORKERS=0 (API only)"}  # fmt: skip
    return rows, inputs, results
