"""A one-row dataset: the job engine's own cost, without a query (item 1's floor).

Registered in the export benchmark's server through ``EXHAUST_PLUGINS``, exactly as a
third-party plugin would be. Its job goes the whole way a small export goes (submit, claim,
heartbeat, ``ctx.write`` of a CSV with its fsyncs and SHA-256, publish, success, the client's
polling) but reads no event: submit → SUCCESS of this job is what any export pays on top of
its query.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from data_exhaust.datasets import Dataset, RunContext, SubmitContext
from data_exhaust.jobs import OutputFile

HEADER = ("Conversation ID", "Rows")


class OneRow(Dataset):
    id: ClassVar[str] = "bench-one-row"
    title: ClassVar[str] = "One constant row (benchmark floor)"

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        return dict(config)

    def run(self, ctx: RunContext) -> list[OutputFile]:
        ctx.checkpoint(0, 1)
        batch = pa.record_batch({"a": pa.array(["floor"]), "b": pa.array([1], pa.int64())})
        batches = pa.RecordBatchReader.from_batches(batch.schema, [batch])
        return [ctx.write(f"floor_{ctx.today:%Y%m%d}", HEADER, batches, 1)]
