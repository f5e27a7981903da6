"""Probe (not part of the suite): what the small export's dedup column costs its query.

``python -m bench.dedup_key [--scale S] [--runs N]`` times the engine's own query of the small
export (``uci-response-exhaust``'s SELECT over the lake, fetched as Arrow batches) in three
forms, alternated, beside the suite's DuckDB ``COPY`` of the same rows:

* ``event_key``: today's query, sorted by ``ets, mid, event_key`` and carrying the 64-bit key
  (stored by compaction since the seventh sitting) for the streaming dedup;
* ``event_hash``: the query before it, carrying and sorting by the 64-character hash;
* no dedup column: the query without either (what ``COPY`` does; not a valid export).

It prints the median and minimum of each and the bytes DuckDB read (its JSON profile). Before
the lake stored the key, this probe timed it over a rewritten copy of the day files (the
seventh sitting's items 1-3 in bench/HISTORY.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path

import duckdb

from bench.data import dataset
from bench.export import duckdb_copy_sql, engine_sql


def replaced(sql: str, old: str, new: str, count: int = -1) -> str:
    """``sql`` with ``old`` replaced; an error if it is not there (the engine's query changed,
    and a silently unchanged variant would time the same query twice)."""
    if old not in sql:
        raise ValueError(f"{old!r} is no longer in the engine's query: update bench/dedup_key.py")
    return sql.replace(old, new, count)


def variants(lake: Path, conversation: str, first: date, last: date) -> dict[str, str]:
    today = engine_sql(lake, conversation, first, last)
    carried = "event_key AS", ", event_key\n"
    hashed = replaced(replaced(today, carried[0], "event_hash AS"), carried[1], ", event_hash\n")
    bare = replaced(replaced(today, carried[0], "NULL AS"), carried[1], "\n")
    return {"event_key (today)": today, "event_hash (before)": hashed, "no dedup column": bare}


def arrow(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    return con.sql(sql).to_arrow_table()


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def bytes_read(con: duckdb.DuckDBPyConnection, sql: str, profile: Path) -> int:
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = '{profile}'")
    con.execute(sql).fetchall()
    con.execute("SET enable_profiling = 'no_output'")
    return int(json.loads(profile.read_text())["io"]["total_bytes_read"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    ds = dataset(args.scale)
    with tempfile.TemporaryDirectory(prefix="exhaust-dedup-key-") as work:
        queries = variants(ds.lake, ds.small_conversation, ds.first_day, ds.last_day)
        con = duckdb.connect(config={"memory_limit": "256MB"})
        con.execute("SET parquet_metadata_cache = true")
        copy = duckdb_copy_sql(ds.lake, ds.small_conversation, ds.first_day, ds.last_day,
                               Path(work) / "copy.csv")  # fmt: skip
        cases: dict[str, Callable[[], object]] = {
            name: partial(arrow, con, sql) for name, sql in queries.items()
        }
        cases["DuckDB COPY (the suite's baseline)"] = lambda: con.execute(copy).fetchall()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs + 1):  # the first round warms the caches and is dropped
            for name, run in cases.items():
                times[name].append(timed(run))
        for name, values in times.items():
            read = bytes_read(con, queries[name], Path(work) / "p.json") if name in queries else 0
            size = f", read {read / 1e6:.1f} MB" if read else ""
            print(f"{name:36s} median {statistics.median(values[1:]):6.1f} ms, "
                  f"min {min(values[1:]):6.1f} ms{size}")  # fmt: skip


if __name__ == "__main__":
    main()
