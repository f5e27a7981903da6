"""Item 6 — scale: time to SUCCESS of a fixed request (the small conversation over its first
7 days) as the lake grows 1×, 4×, 16× — by more days, as a live lake grows.

The 16× lake is generated once (16 weeks); the 4× and 1× lakes are hard links of its first 4
weeks and first week of date partitions (same files, no copy), with every commit marker.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import Config, Row, fmt_s, median
from bench.data import CHANNEL, FULL_EVENTS, Dataset, dataset
from bench.export import api_timings, duckdb_copy_sql, export_config, run_copy
from bench.server import export_once, server

FACTORS = (1, 4, 16)
WEEK = 7
FLAT_TARGET = 1.5  # 16× lake: at most this × the 1× time counts as "small stays small"


def grown_lake(big: Dataset, factor: int) -> Path:
    """A lake holding the first ``factor`` weeks of ``big`` (hard links)."""
    target = big.root / f"lake-{factor}x"
    if target.exists():
        return target
    tmp = big.root / f".lake-{factor}x.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(big.lake / "compacted", tmp / "compacted")
    for name in ("raw", "quarantine"):
        (tmp / name).mkdir(parents=True)
    last = big.first_day + timedelta(days=factor * WEEK - 1)
    for folder in sorted((big.lake / "events").glob("date=*")):
        if folder.name <= f"date={last}":
            (tmp / "events" / folder.name).mkdir(parents=True)
            for part in folder.glob("*.parquet"):
                os.link(part, tmp / "events" / folder.name / part.name)
    tmp.rename(target)
    return target


def measure(config: Config, big: Dataset, factor: int) -> dict[str, Any]:
    lake = grown_lake(big, factor)
    first, last = big.first_day, big.first_day + timedelta(days=WEEK - 1)
    cfg = export_config(big.small_conversation, first, last)
    with server(config.work / f"scale-{factor}" / "var", EXHAUST_LAKE_URL=lake.as_uri()) as srv:
        key = srv.create_key(CHANNEL)
        base = srv.serve()
        headers = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
        with httpx.Client(timeout=60) as client:
            export_once(client, base, headers, cfg)  # warm-up
            api = [export_once(client, base, headers, cfg) for _ in range(config.runs)]
    sql = duckdb_copy_sql(lake, big.small_conversation, first, last, config.work / "s.csv")
    copy = [run_copy(sql)[0] for _ in range(config.runs)]
    events = sum(1 for _ in lake.rglob("*.parquet"))
    return {
        "lake_parquet_files": events, "rows": api[0].job["files"][0]["rows"],
        **api_timings(api), "copy_median_s": median(copy),
    }  # fmt: skip


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    weekly = int(FULL_EVENTS * config.scale / 4)  # 1× lake = a quarter of the main data set
    big = dataset(weekly * 16 / FULL_EVENTS, days=16 * WEEK)
    found = {f"{f}x": measure(config, big, f) for f in FACTORS}
    base = found["1x"]["api_median_s"]
    rows = []
    for factor in FACTORS:
        m = found[f"{factor}x"]
        ratio = m["api_median_s"] / base
        last = factor == FACTORS[-1]
        rows.append(Row(
            "6", "scale: fixed request", f"lake {factor}× ({weekly * factor:,} events, "
            f"{factor * WEEK} days); {m['rows']:,} rows", fmt_s(m["api_median_s"]),
            f"COPY {fmt_s(m['copy_median_s'])}", f"{ratio:.2f}× the 1× time",
            f"flat (bar: ≤ {FLAT_TARGET}×)" if last else "",
            ratio <= FLAT_TARGET if last else None,
        ))  # fmt: skip
    return rows, {"dataset": big.info(), "weekly_events": weekly, "factors": FACTORS}, found
