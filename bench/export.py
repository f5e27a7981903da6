"""Item 1 — export: ``uci-response-exhaust`` through the real API, beside DuckDB ``COPY`` and a
hand-written Python ``json`` + ``csv`` exporter, in the same run on the same files."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.common import Config, Row, fmt_s, median, timed
from bench.data import CHANNEL, Dataset, dataset
from bench.server import POLL_SECONDS, ExportRun, export_once, server
from data_exhaust.datasets.slices import count_slices
from data_exhaust.datasets.uci_common import local_day_bounds_ms
from data_exhaust.datasets.uci_response import (
    _RESPONSE,
    _SELECT,
    _WHERE,
    DIGEST,
    HEADER,
    ROWS_PER_SLICE,
    SORTED,
)
from data_exhaust.lake import Lake

COPY_TARGET = 1.3
PYTHON_TARGET = 10.0
#: The one-row dataset (bench/floor_dataset.py), registered as a third-party plugin would be.
FLOOR_PLUGIN = "bench.floor_dataset:OneRow"
FLOOR_DATASET = "bench-one-row"
FLOOR_RUNS = 9
#: Timed runs of the export's counting query alone (it takes milliseconds).
COUNT_RUNS = 15
#: Timed runs of the small case's export, COPY and engine-SQL COPY (~50 ms each): the median
#: of three moved from 1.07× to 1.44× COPY between two runs of the same code (*Twelfth sitting*).
SMALL_RUNS = 9


def export_config(conversation: str, first: date, last: date) -> dict[str, Any]:
    return {
        "type": "uci-response-exhaust", "conversationId": conversation,
        "startDate": first.isoformat(), "endDate": last.isoformat(),
    }  # fmt: skip


def bounds_ms(first: date, last: date) -> tuple[int, int]:
    from zoneinfo import ZoneInfo

    return local_day_bounds_ms(first, last, ZoneInfo("UTC"))


def _parquet_files(lake: Path, first: date, last: date) -> list[str]:
    """The files the service's queries read for these days (merged days: one file each)."""
    return [str(path) for path in Lake(lake).parquet_files(first, last)]


def duckdb_copy_sql(lake: Path, conversation: str, first: date, last: date, out: Path) -> str:
    """What someone who knows DuckDB writes: the same rows and columns, straight to CSV."""
    low, high = bounds_ms(first, last)
    files = ", ".join(f"'{f}'" for f in _parquet_files(lake, first, last))
    return f"""COPY (
        SELECT mid, conversation_id, NULL::VARCHAR AS name, device_id, session_id, item_id,
               item_type, item_title, item_desc, TRY_CAST(round(duration) AS BIGINT), score,
               max_score, options, response, xpath, eof,
               strftime(make_timestamp(ets * 1000), '%Y-%m-%dT%H:%M:%S.%gZ')
        FROM read_parquet([{files}])
        WHERE eid = 'ASSESS' AND channel = '{CHANNEL}' AND conversation_id = '{conversation}'
          AND ets >= {low} AND ets < {high}
        ORDER BY ets, mid
    ) TO '{out}' (HEADER, DELIMITER ',')"""


def engine_copy_sql(lake: Path, conversation: str, first: date, last: date, out: Path) -> str:
    """The engine's own query under COPY: separates the query's cost from the Arrow CSV
    writer's and the job machinery's."""
    return (
        f"COPY ({engine_sql(lake, conversation, first, last)}) TO '{out}' (HEADER, DELIMITER ',')"
    )


def engine_sql(lake: Path, conversation: str, first: date, last: date) -> str:
    """The engine's own query (``UciResponseExhaust``'s one slice over the whole range: lake
    union, no DISTINCT — the engine drops duplicates while streaming), parameters inlined."""
    low, high = bounds_ms(first, last)
    where = (
        _WHERE.replace("$channel", f"'{CHANNEL}'")
        .replace("$conversation_id", f"'{conversation}'")
        .replace("$from_ms", str(low))
        .replace("$to_ms", str(high))
    )
    events = Lake(lake).events_sql(first, last, where, dedup=False)
    sql = _SELECT.format(response=_RESPONSE, events=events, digest=DIGEST, **SORTED)
    return sql.replace("$conversation_name::VARCHAR", "NULL::VARCHAR")


def count_seconds(lake: Path, conversation: str, first: date, last: date, runs: int) -> list[float]:
    """The export's own first query, alone: ``count_slices`` over the same lake with the
    worker's DuckDB settings (one database, Parquet footers cached), after one warm-up."""
    low, high = bounds_ms(first, last)
    params = {"channel": CHANNEL, "conversation_id": conversation, "from_ms": low, "to_ms": high}
    the_lake = Lake(lake)  # a worker's lake is built once, not per job
    with duckdb.connect() as database:
        database.execute("SET parquet_metadata_cache = true")
        with database.cursor() as con:

            def count() -> list[Any]:
                return count_slices(con, the_lake, _WHERE, params, ROWS_PER_SLICE)

            count()
            return [timed(count)[0] for _ in range(runs)]


def run_copy(sql: str) -> tuple[float, int]:
    """(seconds, rows written) of one COPY on a fresh connection."""
    with duckdb.connect() as con:
        seconds, result = timed(lambda: con.execute(sql).fetchall())
    return seconds, int(result[0][0])


def python_loop(jsonl: Path, conversation: str, first: date, last: date, out: Path) -> int:
    """A hand-written exporter: ``json.loads`` every line, filter, sort, ``csv.writer``."""
    low, high = bounds_ms(first, last)
    rows: list[tuple[int, str, list[Any]]] = []
    with open(jsonl, encoding="utf-8") as source:
        for line in source:
            event = json.loads(line)
            context = event["context"]
            if event["eid"] != "ASSESS" or context["channel"] != CHANNEL:
                continue
            cdata = context.get("cdata") or []
            found = next((c["id"] for c in cdata if c.get("type") == "Conversation"), None)
            if found != conversation or not low <= event["ets"] < high:
                continue
            rows.append((event["ets"], event["mid"], _python_row(event, conversation)))
    rows.sort(key=lambda row: (row[0], row[1]))
    with open(out, "w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(row[2] for row in rows)
    return len(rows)


def _python_row(event: dict[str, Any], conversation: str) -> list[Any]:
    from datetime import UTC, datetime

    context, edata = event["context"], event["edata"]
    item, rollup = edata["item"], context.get("rollup") or {}
    moment = datetime.fromtimestamp(event["ets"] / 1000, UTC)
    return [
        event["mid"], conversation, "", context.get("did"), context.get("sid"),
        item.get("id"), item.get("type"), item.get("title"), item.get("desc"),
        round(edata["duration"]), edata["score"], item.get("maxscore"),
        _compact_json(item.get("params")), _compact_json(edata["resvalues"]),
        rollup.get("l3"), rollup.get("l4"), moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    ]  # fmt: skip


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _case(ds: Dataset, which: str) -> tuple[str, str]:
    if which == "small":
        return ds.small_conversation, "1 conversation of 50"
    return ds.large_conversation, "all of the large conversation"


def measure_case(
    config: Config, ds: Dataset, which: str, client: httpx.Client, base: str,
    headers: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """API, COPY, engine-SQL COPY and Python-loop timings of one case (medians of runs).

    The export and its two ``COPY`` baselines run in turn, one of each per round, so that a
    change of the machine's speed while the case runs (a third within minutes on the
    thirteenth sitting's EPYC, bench/HISTORY.md) falls on all three alike, not on whichever
    block of nine runs it came in."""
    conversation, _ = _case(ds, which)
    cfg = export_config(conversation, ds.first_day, ds.last_day)
    times = max(config.runs, SMALL_RUNS) if which == "small" else config.runs
    tmp = Path(tempfile.mkdtemp(dir=config.work))
    out = tmp / "x.csv"
    args = (ds.lake, conversation, ds.first_day, ds.last_day, out)
    copy_sql, engine_sql = duckdb_copy_sql(*args), engine_copy_sql(*args)
    export_once(client, base, headers, cfg)  # warm-ups: page cache, DuckDB start
    run_copy(copy_sql)
    runs: list[ExportRun] = []
    copy_runs: list[tuple[float, int]] = []
    engine: list[float] = []
    for _ in range(times):  # in turn, so that each sees the machine as the others do
        runs.append(export_once(client, base, headers, cfg))
        copy_runs.append(run_copy(copy_sql))
        engine.append(run_copy(engine_sql)[0])
    rows = int(runs[-1].job["files"][0]["rows"])
    copy, copy_rows = [s for s, _ in copy_runs], copy_runs[0][1]
    count = count_seconds(*args[:4], max(config.runs, COUNT_RUNS))
    python: list[float] = []
    python_rows = 0
    for _ in range(config.runs):
        seconds, python_rows = timed(lambda: python_loop(ds.jsonl, *args[1:]))
        python.append(seconds)
    os.unlink(out)
    return {
        "rows": rows, "copy_rows": copy_rows, "python_rows": python_rows,
        **api_timings(runs), "copy_s": copy, "engine_sql_copy_s": engine,
        "python_s": python, "count_s": count, "count_median_s": median(count),
        "copy_median_s": median(copy),
        "engine_sql_copy_median_s": median(engine), "python_median_s": median(python),
    }  # fmt: skip


def rows_of(which: str, label: str, m: dict[str, Any]) -> list[Row]:
    api, copy, py = m["api_median_s"], m["copy_median_s"], m["python_median_s"]
    case = f"{label}: {m['rows']:,} rows"
    return [
        Row(
            "1", "export vs DuckDB COPY", case, measured(m), f"COPY {fmt_s(copy)}",
            f"{api / copy:.2f}× COPY", f"≤ {COPY_TARGET}× COPY", api / copy <= COPY_TARGET,
        ),
        Row(
            "1", "export vs Python loop", case, fmt_s(api), f"json+csv {fmt_s(py)}",
            f"{py / api:.1f}× faster", f"≥ {PYTHON_TARGET:.0f}× faster", py / api >= PYTHON_TARGET,
        ),
    ]  # fmt: skip


def measure_floor(
    config: Config, client: httpx.Client, base: str, headers: dict[str, str]
) -> dict[str, Any]:
    """Submit → SUCCESS of the one-row dataset (``bench/floor_dataset.py``): the engine alone."""
    cfg = {"startDate": "2024-01-01"}
    export_once(client, base, headers, cfg, FLOOR_DATASET)  # warm-up
    times = max(config.runs, FLOOR_RUNS)
    return api_timings(
        [export_once(client, base, headers, cfg, FLOOR_DATASET) for _ in range(times)]
    )


def api_timings(runs: list[ExportRun]) -> dict[str, Any]:
    """Each run's submit → SUCCESS, submit → the poll that saw it, and the worker's own time
    (``executionTime``), with their medians."""
    api = [run.seconds for run in runs]
    seen = [run.seen_seconds for run in runs]
    job_s = [run.job["jobStats"]["executionTime"] / 1000 for run in runs]
    return {
        "api_s": api, "seen_s": seen, "job_s": job_s, "api_median_s": median(api),
        "seen_median_s": median(seen), "job_median_s": median(job_s),
    }  # fmt: skip


def measured(m: dict[str, Any]) -> str:
    """The *measured* cell of an API timing: to SUCCESS, in the worker, as a poller saw it."""
    return (
        f"{fmt_s(m['api_median_s'])} (in the worker {fmt_s(m['job_median_s'])}; "
        f"seen by a {POLL_SECONDS * 1000:.0f} ms poll {fmt_s(m['seen_median_s'])})"
    )


def floor_rows(floor: dict[str, Any], small: dict[str, Any]) -> list[Row]:
    """The best any export of the small request could do through this engine: the floor
    plus DuckDB's own COPY of its rows (a query no faster than COPY), against COPY, which is
    the bound of item 1's target for this request on this machine; plus the count an export
    of more than a slice's rows makes first (bench/README.md, *Why*), which the small
    request, read whole, no longer makes (*Eleventh sitting*)."""
    api, copy, count = floor["api_median_s"], small["copy_median_s"], small["count_median_s"]
    counts = small["rows"] > ROWS_PER_SLICE
    bound = (api + (count if counts else 0) + copy) / copy
    verdict = "within reach" if bound <= COPY_TARGET else "out of reach on this machine"
    parts = f"floor {fmt_s(api)} + {'' if counts else 'no '}count ({fmt_s(count)}) + COPY"
    return [
        Row(
            "1", "export floor: the job engine alone", "one-row dataset plugin, no query",
            measured(floor), f"small export's COPY {fmt_s(copy)}",
            f"floor + COPY = {(api + copy) / copy:.2f}× COPY",
        ),
        Row(
            "1", "export bound: floor + count if over a slice + COPY", f"{small['rows']:,} rows",
            f"{parts} {fmt_s(copy)}", f"COPY {fmt_s(copy)}", f"{bound:.2f}× COPY",
            f"≤ {COPY_TARGET}× COPY: {verdict}",
        ),
    ]  # fmt: skip


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    ds = dataset(config.scale)
    measurements: dict[str, Any] = {}
    rows: list[Row] = []
    plugins = {"EXHAUST_PLUGINS": json.dumps([FLOOR_PLUGIN])}
    with server(
        config.work / "export" / "var", EXHAUST_LAKE_URL=ds.lake.as_uri(), **plugins
    ) as srv:
        key = srv.create_key(CHANNEL)
        base = srv.serve()
        headers = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
        with httpx.Client(timeout=60) as client:
            for which in ("small", "large"):
                m = measure_case(config, ds, which, client, base, headers)
                if not m["rows"] == m["copy_rows"] == m["python_rows"]:
                    raise RuntimeError(f"row counts differ: {m}")
                measurements[which] = m
                rows += rows_of(which, _case(ds, which)[1], m)
            measurements["floor"] = measure_floor(config, client, base, headers)
            rows += floor_rows(measurements["floor"], measurements["small"])
    return rows, {"dataset": ds.info(), "runs": config.runs}, measurements
