"""Item 2 — ingest: ``POST /v1/telemetry`` from a concurrent load generator (httpx, threads),
acknowledged-to-queryable latency, and bulk ``exhaust ingest FILE``; beside them, in the same
run on the same events, the ceilings of ``bench/ingest_ceiling.py`` (bare FastAPI + orjson;
DuckDB alone; Python parse / canonical JSON / SHA-256 on 1 and 2 processes)."""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.common import Config, Row, fmt_rate, fmt_s, median, percentile
from bench.data import CHANNEL, Dataset, dataset
from bench.ingest_ceiling import (
    PROCESSES,
    batch_ceiling,
    duckdb_ceilings,
    http_ceilings,
    least_ingest,
    medians,
    python_ceilings,
    warmed_runs,
)
from bench.server import Server, server
from data_exhaust.lake import Lake

API_TARGET = 50_000  # events/s with batches of 1,000
P99_TARGET = 0.250
BULK_TARGET = 200_000
THREADS = 8
SIZES = (100, 1000)
#: Distinct events of the HTTP runs (the same events every run).
API_EVENTS = 20_000
BULK_EVENTS = 75_000
#: Each HTTP run sends its events this many times: 80 requests of 1,000 events. Sent once,
#: a run was 20 requests (~0.6 s on two processes, the last wave of them on half the
#: clients) and its p99 the slowest of 20 batches (bench/HISTORY.md, tenth sitting). Every
#: body gets a fresh msgid, so no batch is a retry.
REPEAT = 4


def read_lines(path: Path, count: int) -> list[bytes]:
    with open(path, "rb") as source:
        return [line.rstrip(b"\n") for line in itertools.islice(source, count)]


def bodies(lines: list[bytes], size: int, repeat: int = 1) -> list[bytes]:
    """Telemetry API request bodies of ``size`` events, each with a fresh msgid, for all of
    ``lines`` ``repeat`` times over."""
    made = []
    for start in [*range(0, len(lines), size)] * repeat:
        head = b'{"id":"api.sunbird.telemetry","ver":"3.0","params":{"msgid":"%s"},"events":['
        made.append(
            head % uuid.uuid4().hex.encode() + b",".join(lines[start : start + size]) + b"]}"
        )
    return made


def _sender(
    base: str, key: str, work: queue.Queue[bytes], out: list[tuple[float, int]],
    ready: threading.Barrier,
) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(timeout=60, headers=headers) as client:
        ready.wait(timeout=60)  # building a client (its SSL context) takes ~60 ms: not timed
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            answer = client.post(f"{base}/v1/telemetry", content=body)
            latency = time.perf_counter() - started
            answer.raise_for_status()
            out.append((latency, int(answer.json()["result"]["accepted"])))


def load(base: str, key: str, batch_bodies: list[bytes], threads: int) -> dict[str, Any]:
    """Send every body from ``threads`` concurrent clients; events/s and batch latencies.
    The clock starts once every thread has built its client."""
    work: queue.Queue[bytes] = queue.Queue()
    for body in batch_bodies:
        work.put(body)
    results: list[tuple[float, int]] = []
    ready = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(target=_sender, args=(base, key, work, results, ready))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    ready.wait(timeout=60)
    started, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.join(timeout=600)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    latencies = [latency for latency, _ in results]
    accepted = sum(n for _, n in results)
    return {
        "seconds": wall, "accepted": accepted, "events_per_s": accepted / wall,
        "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
        "batches": len(results), "client_cpu_s": cpu,
    }  # fmt: skip


def with_mid(line: bytes, mid: str) -> bytes:
    """The event JSON ``line`` with its ``mid`` replaced."""
    old = line[line.index(b'"mid":"') : line.index(b'","actor"')]
    return line.replace(old, b'"mid":"' + mid.encode())


def queryable_latency(
    srv: Server, key: str, lake: Path, line: bytes, tries: int = 3
) -> dict[str, Any]:
    """Seconds from the ingest acknowledgement to the event being returned by a lake query
    (``Lake.events_sql``, what every export runs), on the lake as the load left it."""
    samples, query_s = [], []
    for _ in range(tries):
        mid = f"ASSESS:bench-{uuid.uuid4()}"
        event = with_mid(line, mid)
        httpx.post(
            f"{srv.base}/v1/telemetry", content=b'{"events":[' + event + b"]}",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ).raise_for_status()  # fmt: skip
        acked = time.perf_counter()
        query_s.append(_poll_visible(lake, mid))
        samples.append(time.perf_counter() - acked)
    return {"ack_to_queryable_s": samples, "median_s": median(samples), "query_s": query_s}


def _poll_visible(lake: Path, mid: str, timeout: float = 120) -> float:
    """Query until ``mid`` is seen (bounded); the duration of the last (successful) query."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.perf_counter()
        sql = Lake(lake).events_sql(where=f"mid = '{mid}'")
        with duckdb.connect() as con:
            found = con.execute(f"SELECT count(*) FROM {sql} AS e").fetchone()
        if found and found[0]:
            return time.perf_counter() - started
        time.sleep(0.01)
    raise TimeoutError(f"{mid} not queryable after {timeout} s")


def api_cases(config: Config, ds: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    lines = read_lines(ds.jsonl, min(API_EVENTS, ds.events))
    cases: dict[str, Any] = {}
    with server(config.work / "ingest" / "var") as srv:
        key = srv.create_key(CHANNEL, "ingest")
        srv.serve()
        for size in SIZES:
            runs = warmed_runs(
                load, srv.pid, srv.base, key, partial(bodies, lines, size, REPEAT), THREADS,
                config.runs,
            )  # fmt: skip
            cases[str(size)] = {"runs": runs, **medians(runs)}
        cases.update(processes_case(config, srv, key, lines))
        lake = srv.data_dir / "lake"
        raw = Lake(lake).stats()
        fresh = queryable_latency(srv, key, lake, lines[0])
        srv.run("lake", "compact")
        compacted = queryable_latency(srv, key, lake, lines[0])
    return cases, {"raw_lake": raw, "uncompacted": fresh, "after_compaction": compacted}


def processes_case(config: Config, srv: Server, key: str, lines: list[bytes]) -> dict[str, Any]:
    """Batches of 1,000 to ``exhaust serve --processes 2`` on the same data dir (the
    single-process server is stopped first: the two processes get both cores)."""
    srv.stop_all()
    base = srv.serve_processes(PROCESSES)
    runs = warmed_runs(
        load, srv.pid, base, key, partial(bodies, lines, 1000, REPEAT), THREADS, config.runs
    )
    return {f"1000x{PROCESSES}": {"runs": runs, **medians(runs)}}


def bulk_file(config: Config, ds: Dataset) -> tuple[Path, int]:
    """The JSON-lines file of the bulk row and of the bulk ceilings (the first events)."""
    path = config.work / "bulk.jsonl"
    count = min(BULK_EVENTS, ds.events)
    path.write_bytes(b"\n".join(read_lines(ds.jsonl, count)) + b"\n")
    return path, count


def bulk(config: Config, path: Path, count: int) -> dict[str, Any]:
    """``exhaust ingest FILE`` wall time (process start included), a fresh lake per run."""
    seconds = []
    for n in range(config.runs):
        with server(config.work / f"bulk-{n}" / "var") as srv:
            started = time.perf_counter()
            srv.run("ingest", str(path))
            seconds.append(time.perf_counter() - started)
    return {"events": count, "seconds": seconds,
            "median_events_per_s": count / median(seconds)}  # fmt: skip


def ceilings(config: Config, ds: Dataset, path: Path, count: int) -> dict[str, Any]:
    """What the framework + JSON parsing, DuckDB alone and Python alone reach here. The
    service's in-process pass first, as close to its HTTP runs as it can be: this machine's
    speed has moved by 2× within minutes (bench/HISTORY.md, fourteenth sitting)."""
    lines = read_lines(ds.jsonl, min(API_EVENTS, ds.events))
    by_size = {size: bodies(lines, size, REPEAT) for size in SIZES}
    batch = batch_ceiling(ds.jsonl, len(lines), 1000, config.runs, config.work / "batch")
    return {
        "batch": batch,
        "http": http_ceilings(config, load, by_size, THREADS),
        "least_http": least_ingest(config, load, by_size[1000], THREADS),
        "duckdb": duckdb_ceilings(path, count, config.runs),
        "python": python_ceilings(path, count, config.runs),
    }


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    ds = dataset(config.scale)
    cases, queryable = api_cases(config, ds)
    path, count = bulk_file(config, ds)
    try:
        bulk_result = bulk(config, path, count)
        found = ceilings(config, ds, path, count)
    finally:
        path.unlink()
    rows = [*api_rows(cases), *http_ceiling_rows(found["http"]), *http_bound_rows(found)]
    raw, compacted = queryable["uncompacted"], queryable["after_compaction"]
    rows.append(Row(
        "2", "ingest ack → queryable", f"{queryable['raw_lake']['raw_bytes'] / 1e6:,.0f} MB raw",
        f"{fmt_s(raw['median_s'])} (after compaction {fmt_s(compacted['median_s'])})",
    ))  # fmt: skip
    rate = bulk_result["median_events_per_s"]
    rows.append(Row(
        "2", "ingest `exhaust ingest FILE`", f"{bulk_result['events']:,} events",
        fmt_rate(rate, "events/s"), "", f"{rate / BULK_TARGET:.2f}× target",
        f"≥ {BULK_TARGET:,}/s", rate >= BULK_TARGET,
    ))  # fmt: skip
    rows += bulk_ceiling_rows(found, count)
    api_events = len(read_lines(ds.jsonl, min(API_EVENTS, ds.events)))
    inputs = {"dataset": ds.info(), "threads": THREADS, "api_events_per_run": api_events,
              "events_per_run": api_events * REPEAT}  # fmt: skip
    measurements = {"api": cases, "queryable": queryable, "bulk": bulk_result, "ceilings": found}
    return rows, inputs, measurements


def _latencies(case: dict[str, Any]) -> str:
    rate = fmt_rate(case["median_events_per_s"], "events/s")
    cpu = (f"CPU/event: server {case['median_server_cpu_us_per_event']:.0f} µs, "
           f"client {case['median_client_cpu_us_per_event']:.0f} µs")  # fmt: skip
    return f"{rate}, p50 {fmt_s(case['median_p50_s'])}, p99 {fmt_s(case['median_p99_s'])}; {cpu}"


def api_rows(cases: dict[str, Any]) -> list[Row]:
    rows = []
    for name, case in cases.items():
        rate, p99 = case["median_events_per_s"], case["median_p99_s"]
        size, _, processes = name.partition("x")
        target = size == "1000"
        where = f", {processes} server processes" if processes else ""
        rows.append(Row(
            "2", "ingest POST /v1/telemetry", f"batches of {size}, {THREADS} clients{where}",
            _latencies(case), "", f"{rate / API_TARGET:.2f}× target" if target else "",
            f"≥ {API_TARGET:,}/s, p99 < 250 ms" if target else "",
            (rate >= API_TARGET and p99 < P99_TARGET) if target else None,
        ))  # fmt: skip
    return rows


def http_ceiling_rows(http: dict[str, Any]) -> list[Row]:
    """Ceiling rows: same bodies, same load, bare FastAPI (no auth, no storage)."""
    names = {"parse": "read body + orjson.loads", "read_only": "read body only"}
    rows = []
    for variant, label in names.items():
        for size, case in http[variant].items():
            ratio = case["median_events_per_s"] / API_TARGET
            rows.append(Row(
                "2", "ingest ceiling: bare FastAPI POST",
                f"{label}, batches of {size}, {THREADS} clients, "
                f"{case['runs'][0]['accepted']:,} events", _latencies(case), "",
                f"{ratio:.2f}× target" if size == "1000" else "",
            ))  # fmt: skip
    return rows


def http_bound_rows(found: dict[str, Any]) -> list[Row]:
    """The service's per-batch work without HTTP, before it writes and with its writes, then
    that plus the bare route's transfer of the same bodies and the load generator's CPU: the
    least CPU an event costs through this service's code here, so the most the machine's
    cores can take in."""
    batch = found["batch"]
    split, stored = batch["median_split_us_per_event"], batch["median_stored_us_per_event"]
    transfer = found["http"]["read_only"][str(batch["size"])]
    read = transfer["median_server_cpu_us_per_event"]
    client = transfer["median_client_cpu_us_per_event"]
    total, cores = stored + read + client, os.cpu_count() or 1
    most = cores * 1e6 / total
    verdict = "out of reach with this code" if most < API_TARGET else "within reach"
    case = f"batches of {batch['size']}, {batch['events']:,} events"
    return [_batch_row(split, stored, case),
        Row(
            "2", "ingest bound: the service's work + the HTTP transfer + the client", case,
            f"{stored:.1f} + {read:.1f} + {client:.1f} = {total:.1f} µs CPU/event: at most "
            f"{fmt_rate(most, 'events/s')} on {cores} cores", "",
            f"{most / API_TARGET:.2f}× target", f"≥ {API_TARGET:,}/s: {verdict}",
        ),
        *least_http_rows(found["least_http"]),
    ]  # fmt: skip


def least_http_rows(least: dict[str, Any]) -> list[Row]:
    """The HTTP target's bounds for other designs (``bench/least_ingest_app.py``), under the
    same load: the least a checking ingest stores, and the same storing the lake's rows."""
    cases = {
        "least": ("ingest bound (any design): the least a checking ingest does, over HTTP",
                  "parse, check_event, sha256, a line of both written and fsync'd per batch",
                  "any ingest that checks each event in Python"),
        "rows": ("ingest bound (lake rows): the same, storing the lake's flattened rows",
                 "parse, checks, flatten and the row's JSON line (the design before event "
                 "lines), written and fsync'd per batch",
                 "an ingest that stores the lake's flattened rows when it acknowledges"),
    }  # fmt: skip
    rows = []
    for name, (title, work, who) in cases.items():
        case = least[name]
        rate, p99 = case["median_events_per_s"], case["median_p99_s"]
        if rate < API_TARGET:
            verdict = f"out of reach on this machine for {who}"
        else:  # the p99 follows how the 8 connections fall on the 2 processes (README)
            verdict = "within reach" if p99 < P99_TARGET else "its rate within reach"
        rows.append(Row(
            "2", title, f"batches of 1000, {THREADS} clients, {case['processes']} processes: "
            f"{work}; no auth, msgid or quarantine", _latencies(case), "",
            f"{rate / API_TARGET:.2f}× target", f"≥ {API_TARGET:,}/s, p99 < 250 ms: {verdict}",
        ))  # fmt: skip
    return rows


def _batch_row(split: float, stored: float, case: str) -> Row:
    """The service's per-batch work in process, before and with its writes."""
    return Row(
            "2", "ingest ceiling: Python the service's per-batch work, no HTTP",
            f"{case}, 1 process, heap frozen: parse + checks + event lines; "
            "then with the fsync'd append and the msgid row",
            f"{split:.1f} µs CPU/event before writing ({fmt_rate(1e6 / split, 'events/s')} a "
            f"core); {stored:.1f} µs with the writes ({fmt_rate(1e6 / stored, 'events/s')})",
    )  # fmt: skip


def bulk_ceiling_rows(found: dict[str, Any], count: int) -> list[Row]:
    """Ceiling rows on the bulk row's file: DuckDB alone, Python alone on 1 and 2 processes."""
    duck, rows = found["duckdb"], []
    columns = len(duck["columns"].split(","))
    for key, label in (("count", "read_json → count(*)"), ("to_parquet", "read_json → Parquet")):
        rate = duck[key]["median_events_per_s"]
        rows.append(Row(
            "2", f"ingest ceiling: DuckDB {label}",
            f"{count:,} events, {duck['threads']} threads"
            + (f", {columns} flattened columns" if key == "to_parquet" else ""),
            f"{fmt_rate(rate, 'events/s')} ({fmt_s(duck[key]['median_s'])})", "",
            f"{rate / BULK_TARGET:.2f}× target",
        ))  # fmt: skip
    labels = {"loads": "orjson.loads", "loads_dumps_sha256": "loads + sorted dumps + sha256",
              "loads_check_sha256": "loads + check_event (checks, sorted dumps) + sha256 + "
                                    "a line of both written: the least a validating, "
                                    "deduplicating ingest stores",
              "lake_row": "the service's per-event work, no I/O (check_event, its event "
                          "line)"}  # fmt: skip
    for key, label in labels.items():
        one = found["python"][key]["one_process"]
        many = found["python"][key][f"{PROCESSES}_processes"]
        rows.append(Row(
            "2", f"ingest ceiling: Python {label}", f"{count:,} events, per line",
            f"1 process {fmt_rate(one['median_events_per_s'], 'events/s')} "
            f"({one['median_cpu_s'] / count * 1e6:.1f} µs CPU/event); {PROCESSES} processes "
            f"{fmt_rate(many['median_events_per_s'], 'events/s')} wall, "
            f"{fmt_rate(many['cpu_bound_events_per_s'], 'events/s')} by CPU time"
            f"{_one_worker(many)}", "",
            f"{many['median_events_per_s'] / BULK_TARGET:.2f}× target ({PROCESSES} processes)",
        ))  # fmt: skip
    return [*rows, bulk_bound_row(found["python"]["loads_check_sha256"])]


def bulk_bound_row(least: dict[str, Any]) -> Row:
    """The bulk target's bound: the least a validating, deduplicating ingest does per event
    to store it, on both cores by CPU time."""
    rate = least[f"{PROCESSES}_processes"]["cpu_bound_events_per_s"]
    verdict = "within reach" if rate >= BULK_TARGET else (
        "out of reach on this machine for an ingest that checks each event in Python"
    )  # fmt: skip
    return Row(
        "2",
        "ingest bound (bulk): loads + checks + sha256 + the line written",
        f"{PROCESSES} processes, by CPU time",
        fmt_rate(rate, "events/s"),
        "",
        f"{rate / BULK_TARGET:.2f}× target",
        f"≥ {BULK_TARGET:,}/s: {verdict}",
    )


def _one_worker(pooled: dict[str, Any]) -> str:
    """A warning when a pool run had one worker do both halves (its figure is then 1 core)."""
    alone = sum(run["workers"] < PROCESSES for run in pooled["runs"])
    return f" ({alone} run(s) on fewer workers)" if alone else ""
