"""write_output: every format read back cell for cell, hashes, BOM, formula guard, atomicity."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_exhaust.datasets.base import StopRequested
from data_exhaust.output import write_output
from data_exhaust.testing import MemoryBlobStore

HEADER = ["Text", "Count", "Score", "Has, comma"]
TEXTS = [
    "plain",
    "a,b",
    'say "hi"',
    "line1\nline2",
    "cr\rhere",
    "crlf\r\nend",
    "नमस्ते दुनिया",
    "",
    None,
    "trailing space ",
]
COUNTS = [1, -2, None, 0, 10**12, 5, 6, 7, 8, 9]
SCORES = [1.0, 0.5, None, -0.25, 100.0, 2.0, 0.0, 3.5, 1e-3, 7.0]
FLAGS = ["x"] * 10
#: How Python's csv module reads each score cell back (integral doubles lose the ".0").
SCORE_CELLS = ["1", "0.5", "", "-0.25", "100", "2", "0", "3.5", "0.001", "7"]


def _schema() -> pa.Schema:
    return pa.schema(
        [("t", pa.string()), ("n", pa.int64()), ("s", pa.float64()), ("f", pa.string())]
    )


def _reader(batch_size: int = 3, rows: int | None = None) -> pa.RecordBatchReader:
    """The test rows as a reader of several batches (and a trailing empty one)."""
    table = pa.table([TEXTS, COUNTS, SCORES, FLAGS], schema=_schema())
    if rows is not None:
        table = table.slice(0, rows)
    empty = pa.RecordBatch.from_pylist([], schema=_schema())
    batches = [*table.to_batches(max_chunksize=batch_size), empty]
    return pa.RecordBatchReader.from_batches(_schema(), batches)


def _blob(store: MemoryBlobStore, key: str) -> bytes:
    return b"".join(store.read(key))


def _write(store: MemoryBlobStore, fmt: str, **kwargs: Any) -> tuple[Any, bytes]:
    out = write_output(store, "jobs/abc", "result", fmt, HEADER, _reader(), **kwargs)
    return out, _blob(store, out.key)


def _expected_csv_rows() -> list[list[str]]:
    return [
        [t or "", "" if n is None else str(n), s_cell, f]
        for t, n, s_cell, f in zip(TEXTS, COUNTS, SCORE_CELLS, FLAGS, strict=True)
    ]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
def test_file_name_key_size_hash_and_rows(fmt: str) -> None:
    store = MemoryBlobStore()
    out, data = _write(store, fmt)
    assert out.name == f"result.{fmt}"
    assert out.key == f"jobs/abc/result.{fmt}"
    assert out.size == len(data)
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert out.rows == len(TEXTS)


def test_csv_round_trips_through_python_csv() -> None:
    store = MemoryBlobStore()
    _, data = _write(store, "csv")
    assert not data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0] == HEADER
    assert rows[1:] == _expected_csv_rows()


def test_csv_header_is_written_as_given_and_lines_end_with_lf() -> None:
    store = MemoryBlobStore()
    _, data = _write(store, "csv")
    assert data.startswith(b'Text,Count,Score,"Has, comma"\n')
    assert b"\r\n" not in data.replace(b'"crlf\r\nend"', b"")


def test_csv_distinguishes_null_from_empty_string() -> None:
    store = MemoryBlobStore()
    _, data = _write(store, "csv")
    lines = data.decode().split("\n")
    assert '"",7,3.5,"x"' in lines  # empty string: quoted
    assert '"say ""hi""",,,"x"' in lines  # null int and null double: empty, unquoted
    assert ',8,0.001,"x"' in lines  # null string: empty, unquoted


def test_csv_round_trips_through_duckdb(tmp_path: Path) -> None:
    """Types are sniffed back; with allow_quoted_nulls=false even '' vs NULL survives."""
    store = MemoryBlobStore()
    _, data = _write(store, "csv")
    path = tmp_path / "result.csv"
    path.write_bytes(data)
    con = duckdb.connect()
    exact = f"SELECT * FROM read_csv('{path}', header = true, allow_quoted_nulls = false)"
    assert con.sql(exact).fetchall() == list(zip(TEXTS, COUNTS, SCORES, FLAGS, strict=True))
    assert con.sql(f"SELECT \"Has, comma\" FROM read_csv('{path}')").fetchall() == [("x",)] * 10
    default = con.sql(f"SELECT Text FROM read_csv('{path}', header = true)").fetchall()
    assert [t for (t,) in default] == [t or None for t in TEXTS]  # by default "" reads as NULL


def test_csv_gz_is_gzip_of_the_same_csv() -> None:
    store = MemoryBlobStore()
    _, plain = _write(store, "csv")
    _, packed = _write(store, "csv.gz")
    assert gzip.decompress(packed) == plain


def test_csv_gz_is_reproducible() -> None:
    first = _write(MemoryBlobStore(), "csv.gz")[0]
    second = _write(MemoryBlobStore(), "csv.gz")[0]
    assert first.sha256 == second.sha256


def test_jsonl_round_trips() -> None:
    store = MemoryBlobStore()
    _, data = _write(store, "jsonl")
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert records == [
        dict(zip(HEADER, row, strict=True))
        for row in zip(TEXTS, COUNTS, SCORES, FLAGS, strict=True)
    ]


def test_parquet_round_trips_with_header_names() -> None:
    store = MemoryBlobStore()
    _, data = _write(store, "parquet")
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == HEADER
    assert table.schema.types == _schema().types
    assert table.to_pylist() == [
        dict(zip(HEADER, row, strict=True))
        for row in zip(TEXTS, COUNTS, SCORES, FLAGS, strict=True)
    ]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_bom_when_asked(fmt: str) -> None:
    store = MemoryBlobStore()
    _, data = _write(store, fmt, bom=True)
    text = gzip.decompress(data) if fmt == "csv.gz" else data
    assert text.startswith(b"\xef\xbb\xbfText,Count")
    rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"), newline="")))
    assert rows[0] == HEADER


def _guard_reader() -> pa.RecordBatchReader:
    table = pa.table(
        {
            "s": ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\ry", "ok", "a=b", None, ""],
            "n": [-1, -2, 3, 4, 5, 6, 7, 8, 9, 10],
            "d": [-1.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        },
        schema=pa.schema([("s", pa.large_string()), ("n", pa.int64()), ("d", pa.float64())]),
    )
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=4))


def _guarded(fmt: str, guard: bool) -> list[list[str]]:
    store = MemoryBlobStore()
    out = write_output(store, "p", "g", fmt, ["s", "n", "d"], _guard_reader(), formula_guard=guard)
    data = _blob(store, out.key)
    text = (gzip.decompress(data) if fmt == "csv.gz" else data).decode()
    return list(csv.reader(io.StringIO(text, newline="")))[1:]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_formula_guard_prefixes_only_string_cells(fmt: str) -> None:
    rows = _guarded(fmt, guard=True)
    assert [r[0] for r in rows] == [
        "'=SUM(A1)", "'+1", "'-2", "'@cmd", "'\tx", "'\ry", "ok", "a=b", "", "",
    ]  # fmt: skip
    assert rows[0][1:] == ["-1", "-1.5"]  # numbers are never altered
    assert rows[1][1:] == ["-2", "1"]


def test_formula_guard_off_leaves_cells() -> None:
    rows = _guarded("csv", guard=False)
    assert [r[0] for r in rows][:6] == ["=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\ry"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_machine_formats_are_not_guarded(fmt: str) -> None:
    store = MemoryBlobStore()
    out = write_output(store, "p", "g", fmt, ["s", "n", "d"], _guard_reader())
    data = _blob(store, out.key)
    if fmt == "jsonl":
        values = [json.loads(line)["s"] for line in data.decode().splitlines()]
    else:
        values = pq.read_table(io.BytesIO(data)).column("s").to_pylist()
    assert values[:4] == ["=SUM(A1)", "+1", "-2", "@cmd"]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
def test_on_batch_reports_running_row_counts(fmt: str) -> None:
    seen: list[int] = []
    out = write_output(
        MemoryBlobStore(), "p", "r", fmt, HEADER, _reader(batch_size=4), on_batch=seen.append
    )
    assert seen == [4, 8, 10, 10]  # the trailing empty batch reports too
    assert out.rows == 10


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_on_batch_raising_publishes_nothing(fmt: str, stop_after: int) -> None:
    store = MemoryBlobStore()
    calls = 0

    def stop(rows: int) -> None:
        nonlocal calls
        calls += 1
        if calls == stop_after:
            raise StopRequested

    with pytest.raises(StopRequested):
        write_output(store, "p", "r", fmt, HEADER, _reader(), on_batch=stop)
    assert list(store.keys()) == []


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
def test_no_rows_gives_a_header_only_file(fmt: str) -> None:
    store = MemoryBlobStore()
    out = write_output(store, "p", "empty", fmt, HEADER, _reader(rows=0))
    data = _blob(store, out.key)
    assert out.rows == 0
    if fmt == "csv":
        assert data == b'Text,Count,Score,"Has, comma"\n'
    if fmt == "parquet":
        assert pq.read_table(io.BytesIO(data)).column_names == HEADER


def test_string_view_columns_are_written_as_csv() -> None:
    table = pa.table({"v": pa.array(["a", "=b", None], type=pa.string_view())})
    store = MemoryBlobStore()
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    out = write_output(store, "p", "sv", "csv", ["v"], reader)
    assert _blob(store, out.key) == b'v\n"a"\n"\'=b"\n\n'


def test_rejects_unknown_format_and_header_mismatch() -> None:
    with pytest.raises(ValueError, match="unknown output format 'xlsx'"):
        write_output(MemoryBlobStore(), "p", "r", "xlsx", HEADER, _reader())
    with pytest.raises(ValueError, match="header has 2 names but the rows have 4 columns"):
        write_output(MemoryBlobStore(), "p", "r", "csv", ["a", "b"], _reader())
