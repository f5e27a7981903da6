"""Result files: stream Arrow record batches into a blob as CSV, gzipped CSV, JSON lines or Parquet.

:func:`write_output` is the one way a dataset's rows become a published file. It never holds
more than one record batch in memory, hashes and counts the bytes as they pass to the blob
store, and publishes only if everything succeeded: any exception (a failing write, or
``on_batch`` raising :class:`~data_exhaust.datasets.base.StopRequested`) propagates out of the
blob writer's ``with`` block, so the store discards the partial blob.

How cells look in CSV (datasets.md §5), as rendered by ``pyarrow.csv.CSVWriter`` with
``quoting_style="needed"`` — the same rules for every dataset, so choose Arrow types for the
cell a person expects:

* every non-null string cell is quoted (``"abc"``), ``"`` doubled inside; RFC 4180 allows
  quoting any field, and it makes embedded commas, newlines and CR round-trip everywhere;
* a **null** is an empty, unquoted cell; an **empty string** is ``""``. Python's ``csv`` reads
  both as ``''``; DuckDB's ``read_csv`` reads both as NULL by default and, with
  ``allow_quoted_nulls = false``, the first as NULL and the second as ``''``. So datasets use
  NULL for "no value" and keep ``''`` only where the source really had one;
* integers print plainly (``42``); doubles print in shortest round-trip form without a
  useless fraction (``1.0`` → ``1``, ``0.5`` → ``0.5``, ``1e20`` → ``1e+20``); booleans as
  ``true``/``false``;
* lines end with LF only; the header is written by Python's ``csv`` module exactly as given
  (quoted only if a name contains a comma, quote or line break); UTF-8, with a BOM only when
  ``bom`` is set (``EXHAUST_CSV_BOM``, for Excel).

Formula-injection guard (OWASP "CSV injection"): in the human-facing formats ``csv`` and
``csv.gz``, when ``formula_guard`` is on (``EXHAUST_CSV_FORMULA_GUARD``, default true), a
*string* cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``. Numeric
cells are never altered (``-1`` stays a number). ``jsonl`` and ``parquet`` are machine formats
read by programs, not spreadsheets, so their values are written unaltered.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_exhaust.jobs import OutputFile

__all__ = ["EXTENSIONS", "BlobWriter", "write_output"]

#: Output format → file-name extension.
EXTENSIONS = {"csv": "csv", "csv.gz": "csv.gz", "jsonl": "jsonl", "parquet": "parquet"}

UTF8_BOM = b"\xef\xbb\xbf"
_FORMULA_FIRST_BYTES = pa.array([c.encode() for c in "=+-@\t\r"], pa.binary())
#: gzip level 6: nearly the size of level 9 at a fraction of its CPU time.
GZIP_LEVEL = 6

_W = TypeVar("_W")


class BlobWriter(Protocol):
    """The part of ``data_exhaust.storage.BlobStore`` this module needs."""

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write ``key`` into; published only when the ``with`` exits cleanly."""
        ...


@dataclass(frozen=True)
class _Options:
    bom: bool
    formula_guard: bool
    on_batch: Callable[[int], None] | None


class _HashingSink:
    """A write-only file that hashes and counts what passes through to the real one.

    After :meth:`discard` (an error happened; the blob will not be published) writes are
    dropped, so writers being closed or garbage-collected on the error path (Parquet writes
    its footer on close) never touch the store's file again.
    """

    closed = False

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0
        self._discarded = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self._discarded:
            return view.nbytes
        self._sha.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def discard(self) -> None:
        self._discarded = True

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        """Nothing to do: the blob store's file is flushed when its writer commits."""

    def close(self) -> None:
        """The blob store owns the underlying file; closing the sink does nothing."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


def write_output(
    blobs: BlobWriter,
    key_prefix: str,
    stem: str,
    fmt: str,
    header: Sequence[str],
    batches: pa.RecordBatchReader,
    *,
    bom: bool = False,
    formula_guard: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> OutputFile:
    """Stream ``batches`` into the blob ``<key_prefix>/<stem>.<ext>`` and return its description.

    ``header`` names the columns of ``batches`` in order (the CSV header line, the JSON keys,
    the Parquet column names). ``on_batch(rows_so_far)`` is called after each batch; if it
    raises, nothing is published and the exception propagates.
    """
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(EXTENSIONS)}")
    names = list(header)
    if len(names) != len(batches.schema):
        raise ValueError(
            f"header has {len(names)} names but the rows have {len(batches.schema)} columns"
        )
    name = f"{stem}.{EXTENSIONS[fmt]}"
    key = f"{key_prefix.rstrip('/')}/{name}" if key_prefix else name
    options = _Options(bom=bom, formula_guard=formula_guard, on_batch=on_batch)
    with blobs.writer(key) as raw:
        sink = _HashingSink(raw)
        try:
            rows = _FORMATS[fmt](sink, names, batches, options)
        except BaseException:
            sink.discard()
            raise
    return OutputFile(name=name, key=key, size=sink.size, sha256=sink.hexdigest(), rows=rows)


@contextmanager
def _finishing(sink: _HashingSink, writer: _W) -> Iterator[_W]:
    """Close ``writer`` at the end; on error, drop whatever closing it still writes."""
    try:
        yield writer
    except BaseException:
        sink.discard()
        with suppress(Exception):
            writer.close()  # type: ignore[attr-defined]
        raise
    writer.close()  # type: ignore[attr-defined]


def _counted(batches: pa.RecordBatchReader, options: _Options) -> Iterator[pa.RecordBatch]:
    """The batches; after the caller has written each, report the running row count."""
    rows = 0
    for batch in batches:
        yield batch
        rows += batch.num_rows
        if options.on_batch is not None:
            options.on_batch(rows)


def _header_line(names: Sequence[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(names)
    return text.getvalue().encode()


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    """The schema the CSV writer gets: ``string_view`` (unsupported by it) becomes ``string``."""
    return pa.schema(
        [f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f for f in schema]
    )


def _csv_batch(batch: pa.RecordBatch, schema: pa.Schema, guard: bool) -> pa.RecordBatch:
    """``batch`` cast to ``schema``, with the formula guard applied to its string columns."""
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        if column.type != field.type:
            column = column.cast(field.type)
        columns.append(_guarded(column) if guard else column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _guarded(column: pa.Array) -> pa.Array:
    """A string column with ``'`` before every cell starting with a formula character.

    The cells are found by their first byte (a zero-copy binary view, sliced and looked up:
    the trigger characters are all ASCII, so a first *byte* is a first character), and only
    those are prefixed. Most columns have none and come back as they are. (An anchored regex
    replace over every cell of the columns that had one cost 1.5 s of a 2 M-row export;
    this, ~0.3 s.)"""
    if pa.types.is_string(column.type):
        raw = column.cast(pa.binary())
    elif pa.types.is_large_string(column.type):
        raw = column.cast(pa.large_binary())
    else:
        return column
    first = pc.binary_slice(raw, 0, 1)
    starts = pc.fill_null(pc.is_in(first, value_set=_FORMULA_FIRST_BYTES), False)
    if not pc.any(starts).as_py():
        return column
    quote, nothing = pa.scalar("'", column.type), pa.scalar("", column.type)
    return pc.if_else(starts, pc.binary_join_element_wise(quote, column, nothing), column)


def _write_csv_to(
    target: Any,
    names: list[str],
    batches: pa.RecordBatchReader,
    options: _Options,
    sink: _HashingSink,
) -> int:
    """Header then rows as CSV into ``target`` (the sink itself, or a gzip stream over it)."""
    target.write((UTF8_BOM if options.bom else b"") + _header_line(names))
    schema = _csv_schema(batches.schema)
    write_options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    rows = 0
    with _finishing(sink, pacsv.CSVWriter(target, schema, write_options=write_options)) as writer:
        for batch in _counted(batches, options):
            writer.write_batch(_csv_batch(batch, schema, options.formula_guard))
            rows += batch.num_rows
    return rows


def _write_csv(
    sink: _HashingSink, names: list[str], batches: pa.RecordBatchReader, options: _Options
) -> int:
    return _write_csv_to(sink, names, batches, options, sink)


def _write_csv_gz(
    sink: _HashingSink, names: list[str], batches: pa.RecordBatchReader, options: _Options
) -> int:
    """gzip with ``mtime=0`` and no file name, so equal rows give byte-identical files."""
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
    with _finishing(sink, gz):
        return _write_csv_to(gz, names, batches, options, sink)


def _json_default(value: Any) -> str:
    """Values orjson cannot serialise (e.g. ``Decimal``) become their ``str()``, keeping digits."""
    return str(value)


def _write_jsonl(
    sink: _HashingSink, names: list[str], batches: pa.RecordBatchReader, options: _Options
) -> int:
    """One compact JSON object per row, keyed by the header names; values unaltered."""
    rows = 0
    dumps = orjson.dumps
    for batch in _counted(batches, options):
        records = batch.rename_columns(names).to_pylist()
        if records:
            sink.write(b"\n".join(dumps(r, default=_json_default) for r in records) + b"\n")
        rows += len(records)
    return rows


def _write_parquet(
    sink: _HashingSink, names: list[str], batches: pa.RecordBatchReader, options: _Options
) -> int:
    """A Parquet file whose columns are named by the header; values unaltered.

    ``pyarrow.parquet`` is imported here, by the first Parquet export: with the filesystems
    it brings (S3, GCS, Azure, HDFS) it added ~5 MB to every process that runs jobs, most of
    which never write Parquet (bench/README.md, memory)."""
    import pyarrow.parquet as pq

    schema = pa.schema([f.with_name(n) for f, n in zip(batches.schema, names, strict=True)])
    rows = 0
    with _finishing(sink, pq.ParquetWriter(sink, schema)) as writer:
        for batch in _counted(batches, options):
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
            rows += batch.num_rows
    return rows


_FORMATS: dict[str, Callable[[_HashingSink, list[str], pa.RecordBatchReader, _Options], int]] = {
    "csv": _write_csv,
    "csv.gz": _write_csv_gz,
    "jsonl": _write_jsonl,
    "parquet": _write_parquet,
}
