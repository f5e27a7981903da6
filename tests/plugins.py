"""A dataset plugin for engine tests: writes ``rows`` rows in small batches, slowly if asked,
and fails on demand. Loaded like any third-party plugin (EXHAUST_PLUGINS / load_datasets)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa

from data_exhaust.datasets import ConfigError, Dataset, PermanentError, RunContext, SubmitContext
from data_exhaust.jobs import OutputFile


class CountingDataset(Dataset):
    id: ClassVar[str] = "test-counting"
    title: ClassVar[str] = "Counts from 1 to rows, batch by batch (tests only)"

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        rows = config.get("rows")
        if not isinstance(rows, int) or rows < 0:
            raise ConfigError("rows must be a whole number")
        return {
            "rows": rows,
            "delay": float(config.get("delay", 0)),
            "fail": config.get("fail"),
            "batch": int(config.get("batch", 100)),
        }

    def run(self, ctx: RunContext) -> list[OutputFile]:
        config = ctx.job.config
        log = os.environ.get("COUNTING_RUN_LOG")
        if log:  # one line per execution, so tests can prove no job ran twice at once
            with open(log, "a") as out:
                out.write(f"{ctx.job.request_id} {os.getpid()}\n")
        if config["fail"] == "permanent":
            raise PermanentError("asked to fail permanently")
        if config["fail"] == "transient":
            raise OSError("asked to fail transiently")
        schema = pa.schema([("n", pa.int64()), ("label", pa.string())])
        reader = pa.RecordBatchReader.from_batches(schema, self._batches(config, schema))
        return [ctx.write(f"count_{config['rows']}", ["n", "label"], reader, config["rows"])]

    def _batches(self, config: dict[str, Any], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        rows, size = config["rows"], config["batch"]
        for start in range(1, rows + 1, size):
            stop = min(rows, start + size - 1)
            numbers = list(range(start, stop + 1))
            yield pa.record_batch([numbers, [f"row {n}" for n in numbers]], schema=schema)
            time.sleep(config["delay"])
