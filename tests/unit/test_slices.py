"""Cutting an export's event-time range into slices DuckDB sorts one at a time, and the
process's shared DuckDB database the slices are read from."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_exhaust.datasets.slices import HOUR_MS, Slice, cut, read_at_most, read_slices
from data_exhaust.query_db import QueryDatabase

FROM_MS = 1_700_000_000_000 + 1_234  # not on an hour: the first slice starts mid-hour
TO_MS = FROM_MS + 48 * HOUR_MS

hour_counts = st.dictionaries(
    st.integers(FROM_MS // HOUR_MS, (TO_MS - 1) // HOUR_MS), st.integers(1, 50), max_size=48
).map(lambda counts: sorted(counts.items()))


@given(hour_counts, st.integers(1, 120))
def test_slices_cover_the_range_in_order_within_the_limit(
    hours: list[tuple[int, int]], max_rows: int
) -> None:
    slices = cut(hours, FROM_MS, TO_MS, max_rows)
    assert sum(part.rows for part in slices) == sum(count for _, count in hours)
    if not hours:
        assert slices == []
        return
    assert slices[0].from_ms == FROM_MS
    assert slices[-1].to_ms == TO_MS
    for before, after in itertools.pairwise(slices):
        assert before.to_ms == after.from_ms  # no gap, no overlap
        assert after.from_ms % HOUR_MS == 0  # cut at the start of an hour
    for part in slices:
        assert part.from_ms < part.to_ms
        inside = [
            n for hour, n in hours if part.from_ms <= max(hour * HOUR_MS, FROM_MS) < part.to_ms
        ]
        assert sum(inside) == part.rows
        assert part.rows <= max_rows or len(inside) == 1  # only a single hour may exceed it


def test_one_busy_hour_is_a_slice_of_its_own() -> None:
    hour = FROM_MS // HOUR_MS + 1
    slices = cut([(hour - 1, 3), (hour, 500), (hour + 1, 2)], FROM_MS, TO_MS, 10)
    assert [part.rows for part in slices] == [3, 500, 2]
    assert slices[1] == Slice(hour * HOUR_MS, (hour + 1) * HOUR_MS, 500)


def recording_reader(opened: list[int]) -> Callable[[Slice], pa.RecordBatchReader]:
    """A slice "query" of one row (its ``rows``) that records, in ``opened``, when it runs."""

    def reader(part: Slice) -> pa.RecordBatchReader:
        opened.append(part.rows)
        batch = pa.record_batch({"rows": pa.array([part.rows], pa.int64())})
        return pa.RecordBatchReader.from_batches(batch.schema, [batch])

    return reader


def test_read_slices_runs_the_queries_in_order_a_bounded_number_ahead() -> None:
    """The slices' queries run one at a time, in order, in a thread of their own, never more
    than ``ahead_batches`` batches ahead of the reader (the memory bound); every batch comes
    out once, in order."""
    opened: list[int] = []
    reader = recording_reader(opened)
    slices = [Slice(n, n + 1, n) for n in range(1, 21)]
    with read_slices(slices, reader, ahead_batches=2) as sliced:
        batches = iter(sliced)
        for read in range(1, 21):
            assert next(batches).column(0)[0].as_py() == read
            # read batches + 2 queued + 1 made and waiting to be queued, at most
            assert len(opened) <= read + 3
        assert next(batches, None) is None
    assert opened == list(range(1, 21))


def test_leaving_read_slices_early_stops_its_queries() -> None:
    opened: list[int] = []
    reader = recording_reader(opened)
    slices = [Slice(n, n + 1, n) for n in range(1, 1001)]
    with read_slices(slices, reader, ahead_batches=2) as sliced:
        assert next(iter(sliced)).column(0)[0].as_py() == 1
    made = len(opened)
    assert made <= 1 + 3  # stopped and joined: nothing runs after the with
    assert len(opened) == made


@pytest.mark.parametrize("rows", [0, 1, 2_500, 10_000])
def test_rows_that_fit_are_read_whole(rows: int) -> None:
    with duckdb.connect() as con:
        sql = "SELECT i, i * 2 AS twice FROM range($n) AS t(i)"
        table = read_at_most(con, sql, {"n": rows}, 10_000, 1_000)
    assert table is not None
    assert table.column_names == ["i", "twice"]
    assert sorted(table.column("i").to_pylist()) == list(range(rows))


def test_a_read_of_more_rows_than_fit_is_given_up_early() -> None:
    """Given up once past the limit, not read to the end: a range of 10^12 rows would take
    hours, and the next query on the connection runs at once."""
    with duckdb.connect() as con:
        sql = "SELECT i FROM range($n) AS t(i)"
        assert read_at_most(con, sql, {"n": 10**12}, 10_000, 1_000) is None
        assert read_at_most(con, sql, {"n": 10_001}, 10_000, 1_000) is None
        assert con.execute("SELECT 42").fetchall() == [(42,)]


def test_jobs_share_one_database_but_not_their_temp_tables(tmp_path: Path) -> None:
    queries = QueryDatabase("96MB", tmp_path / "spill")
    first, second = queries.connect(), queries.connect()
    try:
        first.execute("CREATE TEMP TABLE mine AS SELECT 1 AS x")
        first.execute("CREATE TABLE shared AS SELECT 2 AS y")
        assert second.execute("SELECT y FROM shared").fetchall() == [(2,)]
        with pytest.raises(duckdb.CatalogException):
            second.execute("SELECT x FROM mine")
        limit = second.execute("SELECT current_setting('memory_limit')").fetchone()
        assert limit is not None and limit[0] in {"96.0 MiB", "91.5 MiB"}
    finally:
        first.close()
        second.close()
    queries.close()
    reopened = queries.connect()  # a closed database is opened again, empty
    with pytest.raises(duckdb.CatalogException):
        reopened.execute("SELECT y FROM shared")
    reopened.close()
    queries.close()
