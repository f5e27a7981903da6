"""Item 5 — memory: peak RSS (``VmHWM``) of the server process, whose embedded worker runs
the export, during the small and the large export (the peak is reset before each with
``/proc/<pid>/clear_refs``). The 1 M-row import's peak is measured by bench/imports.py.

The library pages of the peak depend on the page cache: where the kernel holds a shared
library's file in huge pages (``FileHugePages`` in ``/proc/meminfo``, which writing or reading
gigabytes just before fills), the process maps them whole, and the same code's peak was
20-30 MB higher than after ``echo 3 > /proc/sys/vm/drop_caches`` (bench/HISTORY.md, *Eleventh
sitting* item 7, *Twelfth sitting*). The row shows that state, read before the server starts."""

from __future__ import annotations

from typing import Any

import httpx

from bench.common import Config, Row
from bench.data import CHANNEL, dataset
from bench.export import export_config
from bench.server import export_once, proc_status, reset_peak, server, split_peaks

TARGET_MB = 300
SPLIT = ("RssAnon", "RssFile")
PAGE_CACHE = ("FileHugePages", "FilePmdMapped")


def page_cache_huge_pages() -> dict[str, int]:
    """kB of files the page cache holds in huge pages, and of those mapped whole."""
    found = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, _, value = line.partition(":")
            if name in PAGE_CACHE:
                found[name] = int(value.split()[0])
    return found


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    ds = dataset(config.scale)
    found: dict[str, Any] = {"page_cache_kb": page_cache_huge_pages()}
    with server(config.work / "memory" / "var", EXHAUST_LAKE_URL=ds.lake.as_uri()) as srv:
        key = srv.create_key(CHANNEL)
        base = srv.serve()
        headers = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
        found["idle_kb"] = proc_status(srv.pid)
        with httpx.Client(timeout=60) as client:
            for which, conversation in (
                ("small", ds.small_conversation), ("large", ds.large_conversation),
            ):  # fmt: skip
                cfg = export_config(conversation, ds.first_day, ds.last_day)
                peaks: list[int] = []
                splits: list[dict[str, int]] = []
                rows = 0
                for _ in range(config.runs):
                    reset_peak(srv.pid)
                    with split_peaks(srv.pid) as split:
                        job = export_once(client, base, headers, cfg).job
                    peaks.append(proc_status(srv.pid)["VmHWM"])
                    splits.append(split)
                    rows = int(job["files"][0]["rows"])
                found[which] = {"rows": rows, "peak_kb": peaks, "max_peak_mb": max(peaks) / 1024,
                                "split_peaks_kb": splits}  # fmt: skip
    idle_mb = found["idle_kb"]["VmRSS"] / 1024
    small, large = found["small"], found["large"]
    growth = large["max_peak_mb"] - small["max_peak_mb"]
    anon, files = (max(s[key] for s in large["split_peaks_kb"]) / 1024 for key in SPLIT)
    huge = found["page_cache_kb"].get("FileHugePages", 0) / 1024
    table = [
        Row("5", "memory: server peak RSS", f"large export, {large['rows']:,} rows",
            f"{large['max_peak_mb']:,.0f} MB (sampled peaks: allocated {anon:,.0f} MB, "
            f"library pages {files:,.0f} MB; files in huge pages in the page cache "
            f"{huge:,.0f} MB)", f"idle {idle_mb:,.0f} MB; "
            f"{small['rows']:,}-row export {small['max_peak_mb']:,.0f} MB",
            f"{growth:+,.0f} MB for {large['rows'] / max(small['rows'], 1):,.0f}× the rows",
            f"< {TARGET_MB} MB, flat", large["max_peak_mb"] < TARGET_MB),
    ]  # fmt: skip
    return table, {"dataset": ds.info(), "runs": config.runs}, found
