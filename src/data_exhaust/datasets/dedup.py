"""Retried duplicates dropped while an export streams (datasets.md §1: same ``mid`` and same
content), instead of DuckDB's ``DISTINCT ON``, which holds every row in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def drop_adjacent_duplicates(
    reader: pa.RecordBatchReader, mid: str, digest: str
) -> pa.RecordBatchReader:
    """``reader`` without rows whose ``mid`` and ``digest`` equal the previous row's, and
    without the ``digest`` column. The input must be sorted so that duplicates are adjacent
    (equal events have equal ``ets``, so ``ORDER BY ets, mid, event_key`` does it)."""
    schema = reader.schema
    output = schema.remove(schema.get_field_index(digest))

    def batches() -> Iterator[pa.RecordBatch]:
        previous: tuple[Any, Any] = (None, None)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            keep = _not_repeated(batch.column(mid), batch.column(digest), previous)
            previous = (batch.column(mid)[-1].as_py(), batch.column(digest)[-1].as_py())
            trimmed = batch.drop_columns([digest])
            # Usually nothing repeats: then the batch is passed on without being copied.
            kept = trimmed if pc.all(keep).as_py() else trimmed.filter(keep)
            if kept.num_rows:
                yield kept

    return pa.RecordBatchReader.from_batches(output, batches())


def _not_repeated(mids: pa.Array, digests: pa.Array, previous: tuple[Any, Any]) -> pa.Array:
    count = len(mids)
    before_mid = pa.concat_arrays([pa.array([previous[0]], mids.type), mids.slice(0, count - 1)])
    before_digest = pa.concat_arrays(
        [pa.array([previous[1]], digests.type), digests.slice(0, count - 1)]
    )
    repeated = pc.and_(pc.equal(mids, before_mid), pc.equal(digests, before_digest))
    return pc.invert(pc.fill_null(repeated, False))
