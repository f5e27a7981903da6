"""What every benchmark shares: machine facts, timing statistics, result files and table rows."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
TABLE_HEADER = (
    "| # | benchmark | case | measured | baseline | ratio | target | met |\n"
    "|---|---|---|---|---|---|---|---|"
)


@dataclass
class Row:
    """One line of the results table."""

    item: str
    name: str
    case: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None

    def markdown(self) -> str:
        met = {True: "met", False: "**not met**", None: ""}[self.met]
        cells = (self.item, self.name, self.case, self.measured, self.baseline, self.ratio)
        return "| " + " | ".join((*cells, self.target, met)) + " |"


@dataclass
class Config:
    """Options of one ``python -m bench`` run."""

    scale: float
    runs: int
    work: Path
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``action()``."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _versions() -> dict[str, str]:
    names = ("data-exhaust", "duckdb", "pyarrow", "fastapi", "uvicorn", "starlette", "httpx")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": run("rev-parse", "HEAD"),
        "dirty_files": len(run("status", "--short").splitlines()),
    }


def machine() -> dict[str, Any]:
    """Facts that explain the numbers: cores, RAM, CPU, versions, the tree measured."""
    return {
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "versions": _versions(),
        "git": _git(),
    }


def write_result(
    name: str,
    rows: list[Row],
    inputs: dict[str, Any],
    measurements: dict[str, Any],
    load_before: tuple[float, float, float],
) -> Path:
    """``bench/results/<name>.json`` with the machine, inputs, medians, ratios and rows."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "inputs": inputs,
        "measurements": measurements,
        "rows": [row.__dict__ for row in rows],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.2f} s"
