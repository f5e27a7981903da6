"""``python -m bench [names…] [--scale S] [--runs N]``: run benchmarks, print the table.

Each benchmark writes ``bench/results/<name>.json``; the table is also written to
``bench/results/table.md`` (what ``bench/README.md`` shows).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, TABLE_HEADER, Config, Row, write_result
from data_exhaust.logs import configure as configure_logs

#: name → module (each has ``run(config) -> (rows, inputs, measurements)``), in run order.
BENCHMARKS = {
    "export": "bench.export",
    "ingest": "bench.ingest",
    "api": "bench.api",
    "import": "bench.imports",
    "memory": "bench.memory",
    "scale": "bench.scale",
}
DEFAULT_SCALE = 0.05


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    names = ", ".join(BENCHMARKS)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {names}")
    scale = f"fraction of the issue's sizes (1 = 5 M events; default {DEFAULT_SCALE})"
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=scale)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (≥ 3)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {names}")
    return args


def run_one(name: str, config: Config) -> list[Row]:
    module = importlib.import_module(BENCHMARKS[name])
    load_before = os.getloadavg()
    started = time.monotonic()
    rows, inputs, measurements = module.run(config)
    inputs = {**inputs, "scale": config.scale, "seconds": round(time.monotonic() - started, 1)}
    path = write_result(name, rows, inputs, measurements, load_before)
    for row in rows:
        print(row.markdown(), flush=True)
    print(f"  ({name}: {inputs['seconds']} s, {path.relative_to(RESULTS.parent.parent)})")
    return list(rows)


def main(argv: list[str]) -> int:
    args = parse(argv)
    configure_logs("WARNING")  # the generator's lake writes would log every segment
    names = args.names or list(BENCHMARKS)
    work = Path(tempfile.mkdtemp(prefix="exhaust-bench-"))
    config = Config(scale=args.scale, runs=max(3, args.runs), work=work)
    print(f"scale {args.scale} (1 = the issue's 5 M events); load average {os.getloadavg()}")
    print(TABLE_HEADER, flush=True)
    rows: list[Row] = []
    try:
        for name in names:
            rows += run_one(name, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(names) == len(BENCHMARKS):
        table = "\n".join([TABLE_HEADER, *(row.markdown() for row in rows)]) + "\n"
        (RESULTS / "table.md").write_text(table)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
