"""Exports sorted by event time, read as consecutive time slices of bounded size.

DuckDB sorts a query's whole result before its first row comes out, and it cannot spill a
sort of wide text rows far below the rows' size: sorting the 100 k rows of a large
conversation held ~180 MB in the worker whatever ``memory_limit`` said (64 MB failed with
"failed to pin block"), so a 2 M-row export would have needed gigabytes or failed. An export
ordered by ``ets`` is therefore read as slices of its event-time range, each at most
``max_rows`` rows (a single hour with more is one slice), each sorted on its own; slices follow
each other in time, so their concatenation is in ``ets`` order too, and rows with equal ``ets``
(hence every pair of duplicates) are always in the same slice.

The slices come from one cheap query counting the matching rows per hour (it reads only the
filter columns: ~25 ms against ~80 ms for the rows of a 3 k-row export), which also gives the
job its ``rowsTotal``, so an export reports a percentage. Rows ingested between that count and
the slice that covers them are exported too; the total is then an estimate, corrected to the
rows written when the export ends.

Most exports fit in one slice, and for them the count is a fifth of the work (9 of 40 ms for
the 3,111 rows of bench/README.md's small export). So an export first reads its rows unsorted,
which DuckDB streams without holding them (:func:`read_at_most`): when no more than a slice's
rows come, they are sorted in Arrow (1.4 ms for those rows) and there is no count; past that
the read is given up (~15 ms for the first 10,000 rows of a 100 k-row request) and the export
counts and slices as above.

The caller's ``where`` must bound the event time with the parameters ``$from_ms`` (inclusive)
and ``$to_ms`` (exclusive); each slice's query gets its own bounds there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from data_exhaust.datasets.uci_common import utc_day
from data_exhaust.lake import Lake
from data_exhaust.prefetch import ahead

HOUR_MS = 3_600_000
#: Batches the slice queries may run ahead of the writer (~5 MB each): 4 measured no faster
AHEAD_BATCHES = 2


@dataclass(frozen=True)
class Slice:
    """The half-open event-time range ``[from_ms, to_ms)`` holding about ``rows`` rows."""

    from_ms: int
    to_ms: int
    rows: int


def count_slices(
    connection: duckdb.DuckDBPyConnection,
    lake: Lake,
    where: str,
    params: dict[str, Any],
    max_rows: int,
) -> list[Slice]:
    """The slices covering ``params``' time range; empty when no row matches."""
    from_ms, to_ms = params["from_ms"], params["to_ms"]
    events = lake.events_sql(utc_day(from_ms), utc_day(to_ms - 1), where, dedup=False)
    hours = connection.execute(
        f"SELECT ets // {HOUR_MS} AS hour, count(*) FROM {events} AS e GROUP BY hour ORDER BY hour",
        params,
    ).fetchall()
    return cut(hours, from_ms, to_ms, max_rows)


def read_at_most(
    connection: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], max_rows: int,
    batch_rows: int,
) -> pa.Table | None:  # fmt: skip
    """Every row of ``sql`` as one table, or None as soon as more than ``max_rows`` came (the
    query is then abandoned, holding at most ``max_rows + batch_rows`` rows). ``sql`` must not
    sort: an ``ORDER BY`` holds every row before the first comes out."""
    reader = connection.sql(sql, params=params).to_arrow_reader(batch_rows)
    with closing(reader):
        batches, rows = [], 0
        for batch in reader:
            rows += batch.num_rows
            if rows > max_rows:
                return None
            batches.append(batch)
        return pa.Table.from_batches(batches, reader.schema)


def cut(hours: list[tuple[int, int]], from_ms: int, to_ms: int, max_rows: int) -> list[Slice]:
    """Group consecutive ``(hour, rows)`` counts into slices of at most ``max_rows`` rows
    (a slice cuts at the start of an hour), covering ``[from_ms, to_ms)`` without gaps."""
    slices: list[Slice] = []
    start, rows = from_ms, 0
    for hour, count in hours:
        if rows and rows + count > max_rows:
            boundary = max(hour * HOUR_MS, from_ms)
            slices.append(Slice(start, boundary, rows))
            start, rows = boundary, 0
        rows += count
    if rows:
        slices.append(Slice(start, to_ms, rows))
    return slices


@contextmanager
def read_slices(
    slices: list[Slice],
    reader_of: Callable[[Slice], pa.RecordBatchReader],
    ahead_batches: int = AHEAD_BATCHES,
) -> Iterator[pa.RecordBatchReader]:
    """The batches of every slice's reader in turn. The queries run one after another in a
    thread of their own (DuckDB works without the GIL), at most ``ahead_batches`` batches
    ahead of the caller, so the next slice is queried while the caller writes the last one;
    only one slice is ever being sorted. The thread is stopped and joined when the ``with``
    ends (a stop interrupts its query through the job's connection)."""
    if not slices:
        raise ValueError("read_slices needs at least one slice")
    first = reader_of(slices[0])

    def batches() -> Iterator[pa.RecordBatch]:
        yield from first
        for part in slices[1:]:
            yield from reader_of(part)

    with closing(ahead(batches(), ahead_batches, "export-slices")) as produced:
        yield pa.RecordBatchReader.from_batches(first.schema, produced)


def slice_events(lake: Lake, where: str, part: Slice) -> str:
    """The lake subquery for one slice (only the date partitions it spans)."""
    return lake.events_sql(utc_day(part.from_ms), utc_day(part.to_ms - 1), where, dedup=False)
