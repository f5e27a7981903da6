"""Item 2 — ingest: ``POST /v1/telemetry`` from a concurrent load generator (httpx, threads),
acknowledged-to-queryable latency, and bulk ``exhaust ingest FILE``."""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.common import Config, Row, fmt_rate, fmt_s, median, percentile
from bench.data import CHANNEL, Dataset, dataset
from bench.server import Server, server
from data_exhaust.lake import Lake

API_TARGET = 50_000  # events/s with batches of 1,000
P99_TARGET = 0.250
BULK_TARGET = 200_000
THREADS = 8
#: Events sent per run and batch size (bounded; the same events, fresh msgids every run).
API_EVENTS = 20_000
BULK_EVENTS = 75_000


def read_lines(path: Path, count: int) -> list[bytes]:
    with open(path, "rb") as source:
        return [line.rstrip(b"\n") for line in itertools.islice(source, count)]


def bodies(lines: list[bytes], size: int) -> list[bytes]:
    """Telemetry API request bodies of ``size`` events, each with a fresh msgid."""
    made = []
    for start in range(0, len(lines), size):
        head = b'{"id":"api.sunbird.telemetry","ver":"3.0","params":{"msgid":"%s"},"events":['
        made.append(
            head % uuid.uuid4().hex.encode() + b",".join(lines[start : start + size]) + b"]}"
        )
    return made


def _sender(base: str, key: str, work: queue.Queue[bytes], out: list[tuple[float, int]]) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(timeout=60, headers=headers) as client:
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
    """Send every body from ``threads`` concurrent clients; events/s and batch latencies."""
    work: queue.Queue[bytes] = queue.Queue()
    for body in batch_bodies:
        work.put(body)
    results: list[tuple[float, int]] = []
    workers = [
        threading.Thread(target=_sender, args=(base, key, work, results)) for _ in range(threads)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    wall = time.perf_counter() - started
    latencies = [latency for latency, _ in results]
    accepted = sum(n for _, n in results)
    return {
        "seconds": wall, "accepted": accepted, "events_per_s": accepted / wall,
        "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
        "batches": len(results),
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
        for size in (100, 1000):
            runs = [load(srv.base, key, bodies(lines, size), THREADS) for _ in range(config.runs)]
            cases[str(size)] = {"runs": runs, **_medians(runs)}
        lake = srv.data_dir / "lake"
        raw = Lake(lake).stats()
        fresh = queryable_latency(srv, key, lake, lines[0])
        srv.run("lake", "compact")
        compacted = queryable_latency(srv, key, lake, lines[0])
    return cases, {"raw_lake": raw, "uncompacted": fresh, "after_compaction": compacted}


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("events_per_s", "p50_s", "p99_s", "seconds")
    return {f"median_{k}": median([r[k] for r in runs]) for k in keys}


def bulk(config: Config, ds: Dataset) -> dict[str, Any]:
    """``exhaust ingest FILE`` wall time (process start included), a fresh lake per run."""
    path = config.work / "bulk.jsonl"
    count = min(BULK_EVENTS, ds.events)
    path.write_bytes(b"\n".join(read_lines(ds.jsonl, count)) + b"\n")
    seconds = []
    for n in range(config.runs):
        with server(config.work / f"bulk-{n}" / "var") as srv:
            started = time.perf_counter()
            srv.run("ingest", str(path))
            seconds.append(time.perf_counter() - started)
    path.unlink()
    return {"events": count, "seconds": seconds,
            "median_events_per_s": count / median(seconds)}  # fmt: skip


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    ds = dataset(config.scale)
    cases, queryable = api_cases(config, ds)
    bulk_result = bulk(config, ds)
    rows = []
    for size, case in cases.items():
        rate, p99 = case["median_events_per_s"], case["median_p99_s"]
        target = size == "1000"
        rows.append(Row(
            "2", "ingest POST /v1/telemetry", f"batches of {size}, {THREADS} clients",
            f"{fmt_rate(rate, 'events/s')}, p50 {fmt_s(case['median_p50_s'])}, p99 {fmt_s(p99)}",
            "", f"{rate / API_TARGET:.2f}× target" if target else "",
            f"≥ {API_TARGET:,}/s, p99 < 250 ms" if target else "",
            (rate >= API_TARGET and p99 < P99_TARGET) if target else None,
        ))  # fmt: skip
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
    inputs = {"dataset": ds.info(), "threads": THREADS, "api_events_per_run": len(
        read_lines(ds.jsonl, min(API_EVENTS, ds.events)))}  # fmt: skip
    return rows, inputs, {"api": cases, "queryable": queryable, "bulk": bulk_result}
