"""Ceilings of item 2 (ingest), measured in the same run on the same events as the service:
what any implementation in this architecture can reach on this machine.

* HTTP: ``bench/bare_ingest_app.py`` (bare FastAPI, the uvicorn settings of ``exhaust serve``)
  driven by the same ``load()`` with the same bodies: read + ``orjson.loads``, and read only.
* HTTP, any design: ``bench/least_ingest_app.py`` on two processes (read, parse, the service's
  checks and canonical JSON, SHA-256, a line of both written and ``fsync``'d per batch), and
  the same storing the lake's flattened rows as JSON lines (the design before event lines).
* Bulk, on the JSON-lines file of the ``exhaust ingest FILE`` row: DuckDB alone (``read_json``
  → ``count(*)``, and → Parquet of a few flattened columns), and Python alone (``orjson.loads``
  per line; plus canonical JSON and SHA-256, the least the ingest does per event; and the
  service's own per-event work for the lake's flattened rows, without I/O) on one process and
  on a ``multiprocessing`` pool of 2 over the two halves of the file.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from hashlib import sha256
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bench.common import Config, median
from bench.server import Server

#: The flattened columns the DuckDB → Parquet ceiling writes (a subset of the lake's).
PARQUET_COLUMNS = (
    "eid, ets, mid, context.channel AS channel, context.rollup.l2 AS conversation_id, "
    "actor.id AS actor_id, context.sid AS session_id, edata.item.id AS item_id, "
    "edata.score AS score, edata.duration AS duration"
)
PROCESSES = 2
MEDIAN_KEYS = ("events_per_s", "p50_s", "p99_s", "seconds", "server_cpu_us_per_event",
               "client_cpu_us_per_event")  # fmt: skip

# -- HTTP ----------------------------------------------------------------------------------

Loader = Callable[[str, str, list[bytes], int], dict[str, Any]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its live
    children (``exhaust serve --processes N``'s), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def with_cpu(
    load: Loader, pid: int, base: str, key: str, bodies: list[bytes], threads: int
) -> dict[str, Any]:
    """``load(...)`` plus the CPU the server process ``pid`` and this (client) process used,
    per accepted event: what each side would cost with a core to itself. The client's is the
    loader's own from its start signal when it reports one (``client_cpu_s``): building the 8
    httpx clients (their SSL contexts, ~60 ms each) happens before the clock starts, and had
    been counted, as 24 µs per event of a 20,000-event run."""
    server, client = cpu_seconds(pid), time.process_time()
    result = load(base, key, bodies, threads)
    server, client = cpu_seconds(pid) - server, time.process_time() - client
    client = result.get("client_cpu_s", client)
    events = max(1, result["accepted"])
    return {**result, "server_cpu_s": server, "client_cpu_s": client,
            "server_cpu_us_per_event": server / events * 1e6,
            "client_cpu_us_per_event": client / events * 1e6}  # fmt: skip


def warmed_runs(
    load: Loader, pid: int, base: str, key: str, make_bodies: Callable[[], list[bytes]],
    threads: int, runs: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """One untimed run, then ``runs`` timed ones (:func:`with_cpu`), each on fresh bodies
    (new ``msgid``s: no batch is a retry). A server's first batches import what its ingest
    imports lazily and open its segments and connections: the first of three runs on two
    processes read 34 k events/s, the next two 49 and 54 k (bench/HISTORY.md, eleventh
    sitting)."""
    load(base, key, make_bodies(), threads)
    return [with_cpu(load, pid, base, key, make_bodies(), threads) for _ in range(runs)]


def http_ceilings(
    config: Config, load: Loader, bodies_by_size: dict[int, list[bytes]], threads: int
) -> dict[str, Any]:
    """``{"parse": {size: case}, "read_only": {size: case}}`` against the bare ingest app."""
    bare = Server(config.work / "bare-ingest" / "var")
    bare.data_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {"parse": {}, "read_only": {}}
    try:
        base = bare.start([sys.executable, "-m", "bench.bare_ingest_app", "{port}"])
        for size, bodies in bodies_by_size.items():
            urls = {"parse": base, "read_only": f"{base}/noparse/{size}"}
            for variant, url in urls.items():
                runs = warmed_runs(
                    load, bare.pid, url, "bare", partial(list, bodies), threads, config.runs
                )
                found[variant][str(size)] = {"runs": runs, **medians(runs)}
    finally:
        bare.stop_all()
    return found


def least_ingest(
    config: Config, load: Loader, bodies: list[bytes], threads: int
) -> dict[str, Any]:  # fmt: skip
    """Batches of 1,000 against ``bench/least_ingest_app.py`` on :data:`PROCESSES` processes,
    its two routes in turn (one run of each per round, after a warm-up of each): ``least``,
    the most any ingest that checks each event in Python behind FastAPI takes in here, and
    ``rows``, the same storing the lake's flattened rows as JSON (the design before event
    lines)."""
    least = Server(config.work / "least-ingest" / "var")
    least.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench.least_ingest_app", "{port}", str(PROCESSES)]
    routes = {"least": "", "rows": "/rows"}
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
    try:
        base = least.start(argv, processes=PROCESSES)
        for path in routes.values():
            load(base + path, "least", list(bodies), threads)
        for _ in range(config.runs):
            for name, path in routes.items():
                found[name].append(
                    with_cpu(load, least.pid, base + path, "least", list(bodies), threads)
                )
    finally:
        least.stop_all()
    return {name: {"processes": PROCESSES, "runs": runs, **medians(runs)}
            for name, runs in found.items()}  # fmt: skip


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {f"median_{k}": median([r[k] for r in runs]) for k in MEDIAN_KEYS}


# -- bulk: DuckDB alone --------------------------------------------------------------------


def duckdb_ceilings(path: Path, events: int, runs: int) -> dict[str, Any]:
    """``read_json`` of ``path`` → ``count(*)``, and → Parquet of :data:`PARQUET_COLUMNS`."""
    source = f"read_json('{path}', format='newline_delimited')"
    out = path.with_suffix(".parquet")
    count_s, copy_s = [], []
    with duckdb.connect() as con:
        threads = con.execute("SELECT current_setting('threads')").fetchone()
        for _ in range(runs):
            started = time.perf_counter()
            row = con.execute(f"SELECT count(*) FROM {source}").fetchone()
            count_s.append(time.perf_counter() - started)
            if not row or row[0] != events:
                raise RuntimeError(f"DuckDB counted {row} events, expected {events}")
            started = time.perf_counter()
            con.execute(
                f"COPY (SELECT {PARQUET_COLUMNS} FROM {source}) TO '{out}' (FORMAT parquet)"
            )
            copy_s.append(time.perf_counter() - started)
            out.unlink()
    return {
        "threads": threads[0] if threads else None, "columns": PARQUET_COLUMNS,
        "count": _rates(events, count_s), "to_parquet": _rates(events, copy_s),
    }  # fmt: skip


def _rates(events: int, seconds: list[float]) -> dict[str, Any]:
    return {"seconds": seconds, "median_s": median(seconds),
            "median_events_per_s": events / median(seconds)}  # fmt: skip


# -- bulk: Python alone --------------------------------------------------------------------


#: The per-line passes: parse only; parse + the sorted compact JSON and SHA-256 that dedup
#: needs; the same with the event's checks (``check_event``, which makes that JSON too) and a
#: line of the hash and that JSON written to a file (fsync'd at the end): the least any
#: ingest does that validates each event in Python, as api.md §6 asks, deduplicates on its
#: content and stores it (the canonical-JSON design of bench/README.md's *Why*, which would
#: flatten later, and whose lines no query could read as they are); and the service's whole
#: per-event work, with no I/O (``check_event``; ``event_line``: the hash, the keys, the
#: options' and response's JSON), which is what a bulk ingest does per event before it writes
#: (the lake's flattened row and its JSON line until the fourteenth sitting).
PASSES = ("loads", "loads_dumps_sha256", "loads_check_sha256", "lake_row")


def python_pass(path: str, start: int, end: int, mode: str) -> tuple[int, int, float]:
    """One of :data:`PASSES` over every line of ``path`` in bytes ``[start, end)``; (pid,
    lines, CPU seconds)."""
    from data_exhaust.event_lines import event_line
    from data_exhaust.telemetry import check_event

    cpu = time.process_time()
    lines, left = 0, end - start
    writes = mode == "loads_check_sha256"  # the one pass that stores what it made
    written = f"{path}.{os.getpid()}.lines"
    with open(path, "rb") as source, open(written if writes else os.devnull, "wb") as out:
        source.seek(start)
        for line in source:
            if left <= 0:
                break
            left -= len(line)
            event = orjson.loads(line)
            if mode == "loads_dumps_sha256":
                sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
            elif writes:
                _, canonical = check_event(event)
                canonical = canonical or b"null"
                out.write(b"%s\t%s\n" % (sha256(canonical).hexdigest().encode(), canonical))
            elif mode == "lake_row":
                _, canonical = check_event(event)
                event_line(event, canonical)  # type: ignore[arg-type]
            lines += 1
        if writes:
            out.flush()
            os.fsync(out.fileno())
    if writes:
        os.unlink(written)
    return os.getpid(), lines, time.process_time() - cpu


def halves(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the two halves of ``path``, split after a newline."""
    size = path.stat().st_size
    with path.open("rb") as source:
        source.seek(size // 2)
        source.readline()
        middle = source.tell()
    return [(0, middle), (middle, size)]


def python_ceilings(path: Path, events: int, runs: int) -> dict[str, Any]:
    """Both passes on one process (this one), then on a pool of :data:`PROCESSES` (started
    only then, so that its start-up does not overlap the single-process runs); wall time."""
    found: dict[str, Any] = {}
    for mode in PASSES:
        one = [_one_process(path, events, mode) for _ in range(runs)]
        found[mode] = {"one_process": _summary(events, one)}
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with DuckDB's threads
    with spawn.Pool(PROCESSES) as pool:
        for mode in PASSES:
            _pooled(pool, path, events, mode)  # warm-up: both workers started and idle
            two = [_pooled(pool, path, events, mode) for _ in range(runs)]
            found[mode][f"{PROCESSES}_processes"] = _summary(events, two)
    return found


def _one_process(path: Path, events: int, mode: str) -> dict[str, Any]:
    started = time.perf_counter()
    _, lines, cpu = python_pass(str(path), 0, path.stat().st_size, mode)
    wall = time.perf_counter() - started
    _check(lines, events)
    return {"seconds": wall, "cpu_s": cpu}


def _pooled(pool: Pool, path: Path, events: int, mode: str) -> dict[str, Any]:
    ranges = [(str(path), start, end, mode) for start, end in halves(path)]
    started = time.perf_counter()
    parts = pool.starmap(python_pass, ranges, chunksize=1)
    wall = time.perf_counter() - started
    _check(sum(lines for _, lines, _ in parts), events)
    return {"seconds": wall, "cpu_s": [cpu for *_, cpu in parts],
            "workers": len({pid for pid, *_ in parts})}  # fmt: skip


def _check(lines: int, events: int) -> None:
    if lines != events:
        raise RuntimeError(f"parsed {lines} lines, expected {events}")


def _summary(events: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of wall time and of CPU time (of the busiest worker): the CPU figure is what
    the wall time would be with every process on a core of its own (load-independent)."""
    seconds = median([r["seconds"] for r in runs])
    cpu = median([max(r["cpu_s"]) if isinstance(r["cpu_s"], list) else r["cpu_s"] for r in runs])
    return {"runs": runs, "median_s": seconds, "median_events_per_s": events / seconds,
            "median_cpu_s": cpu, "cpu_bound_events_per_s": events / cpu}  # fmt: skip


# -- HTTP: the service's per-batch work, without HTTP -----------------------------------------


def batch_pass(path: str, count: int, size: int, runs: int, work: str) -> dict[str, list[float]]:
    """In a process of its own with the heap frozen, as a server's is: CPU seconds of ``runs``
    passes of each of two steps (after a warm-up; one of each in turn) over the first
    ``count`` events of ``path`` as request bodies of ``size`` events. ``split``: what
    ``POST /v1/telemetry`` does with a body before it writes (``Ingestor.parse``, then
    ``split_events``: checks, rows, their JSON lines).
    ``stored``: all it does without HTTP (``Ingestor.parse`` and ``Ingestor.ingest``: the
    same, the ``fsync``'d append to a lake under ``work`` and the ``msgid`` lookup and record
    in a SQLite database there), a fresh ``msgid`` per body every pass."""
    from bench.ingest import bodies, read_lines
    from data_exhaust.db import make_engine
    from data_exhaust.heap import freeze_heap
    from data_exhaust.ingest import Ingestor, split_events
    from data_exhaust.lake import Lake
    from data_exhaust.logs import configure
    from data_exhaust.models import Base

    sys.stderr = open(Path(work) / "batch.log", "w")  # noqa: SIM115 — as the bench's servers log
    configure("INFO", json=True)
    lines = read_lines(Path(path), count)
    engine = make_engine(f"sqlite:///{work}/bench.db")
    Base.metadata.create_all(engine)
    ingestor = Ingestor(Lake(Path(work) / "lake"), engine)
    freeze_heap()

    def split(made: list[bytes]) -> None:
        for body in made:
            split_events(Ingestor.parse(body)["events"])

    def stored(made: list[bytes]) -> None:
        for body in made:
            ingestor.ingest(Ingestor.parse(body), consume=True)

    steps = {"split": split, "stored": stored}
    found: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step(bodies(lines, size))  # warm-up
    for _ in range(runs):  # alternated: this machine's speed drifts within a minute
        for name, step in steps.items():
            made = bodies(lines, size)
            cpu = time.process_time()
            step(made)
            found[name].append(time.process_time() - cpu)
    engine.dispose()
    return found


def batch_ceiling(path: Path, count: int, size: int, runs: int, work: Path) -> dict[str, Any]:
    """:func:`batch_pass` in a fresh spawned process; µs of CPU per event of each pass."""
    work.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        found = pool.apply(batch_pass, (str(path), count, size, runs, str(work)))
    return {"events": count, "size": size, "cpu_s": found,
            **{f"median_{name}_us_per_event": median(seconds) / count * 1e6
               for name, seconds in found.items()}}  # fmt: skip
