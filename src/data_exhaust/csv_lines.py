"""Streamed CSV records with their line numbers, for imports.

A file is read through a byte counter (for progress) and decoded as UTF-8 with
``surrogateescape``, so an undecodable line is reported, not fatal. A record spans several
lines when a quoted field holds newlines; its number is the line it starts on. A field is
limited by :func:`csv.field_size_limit` (128 KiB), so an unclosed quote cannot eat the file.

The column-wise path reads the file in :class:`Blocks` of whole lines and parses each with
pyarrow (:func:`arrow_block`); a block it cannot vouch for (one record per physical line, all
valid UTF-8, the header's column count) is parsed here record by record instead
(:func:`block_records`), or, when even its end is not a sure record boundary, the rest of the
file is (:meth:`Blocks.rest`). Both parsers split records the same way (quotes open a field only
at its start, ``""`` inside quotes, CR, LF and CRLF end a record), so line numbers agree.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

UNPAIRED = re.compile(r"[\udc80-\udcff]")  # undecodable bytes, kept by "surrogateescape"

Source = str | Path | Callable[[], IO[bytes]]
Record = tuple[int, list[str] | None, str | None]


class ImportFormatError(ValueError):
    """The file cannot be imported at all (its header, or a missing secret); nothing written."""


class Counted(io.RawIOBase):
    """Counts the bytes read from the source (for progress)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.count = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.inner.read(len(view))
        view[: len(data)] = data
        self.count += len(data)
        return len(data)


@contextmanager
def opened(source: Source) -> Iterator[Counted]:
    binary = open(source, "rb") if isinstance(source, str | Path) else source()  # noqa: SIM115
    try:
        yield Counted(binary)
    finally:
        binary.close()


def records(binary: io.RawIOBase, after: int = 0, encoding: str = "utf-8-sig") -> Iterator[Record]:
    """``(first line number, fields or None, error)`` for every non-blank CSV record;
    ``after`` lines come before ``binary`` (its first line is number ``after + 1``)."""
    return map(_decoded, _raw_records(binary, after, encoding))


def _decoded(record: Record) -> Record:
    start, fields, error = record
    if fields is not None and any(UNPAIRED.search(value) for value in fields):
        return start, None, "not valid UTF-8 (save the file as UTF-8)"
    return start, fields, error


def _raw_records(binary: io.RawIOBase, after: int, encoding: str) -> Iterator[Record]:
    text = io.TextIOWrapper(
        io.BufferedReader(binary), encoding=encoding, errors="surrogateescape", newline=""
    )
    reader = csv.reader(text)
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield after + last + 1, None, f"not valid CSV ({exc}; an unclosed quote?)"
            last = reader.line_num
            continue
        start, last = last + 1, reader.line_num
        if fields:
            yield after + start, fields, None


def header_of(
    records: Iterator[Record],
    allowed: tuple[tuple[str, ...], ...],
) -> tuple[str, ...]:
    expected = " or ".join(",".join(h) for h in allowed)
    first = next(records, None)
    found = tuple(v.strip().lower() for v in first[1]) if first and first[1] else None
    for header in allowed:
        if found == header:
            return header
    raise ImportFormatError(f"line 1 must be the header {expected}")


def line_breaks(data: bytes) -> int:
    """Physical lines ended in ``data`` (CR, LF and CRLF each end one, as for the csv module)."""
    returns = data.count(b"\r")
    return data.count(b"\n") + (returns and returns - data.count(b"\r\n"))


def lines_in(block: bytes) -> int:
    """Physical lines in a block (a last line without a line break counts)."""
    return line_breaks(block) + bool(block and not block.endswith((b"\n", b"\r")))


class _Chain(io.RawIOBase):
    """``head`` then the rest of ``tail``, as one binary stream."""

    def __init__(self, head: bytes, tail: IO[bytes] | None = None) -> None:
        self.head, self.tail = memoryview(head), tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if not self.head:
            data = self.tail.read(len(view)) if self.tail is not None else b""
            view[: len(data)] = data
            return len(data)
        size = min(len(view), len(self.head))
        view[:size], self.head = self.head[:size], self.head[size:]
        return size


def raw_bytes(data: bytes) -> io.RawIOBase:
    """``data`` as a binary stream."""
    return _Chain(data)


class Blocks:
    """A binary stream in blocks of about ``size`` bytes, each cut after a line feed (the
    last block, and a block without any line feed, end where the data does)."""

    def __init__(self, binary: io.RawIOBase, size: int = 1 << 20) -> None:
        self.binary, self.size, self._carry = io.BufferedReader(binary), size, b""
        self.ended = False

    def __iter__(self) -> Iterator[bytes]:
        while not self.ended:
            data = self._carry + self.binary.read(self.size)
            self.ended = len(data) < self.size + len(self._carry)
            cut = data.rfind(b"\n") + 1
            if self.ended or cut == 0:
                cut = len(data)  # the end of the file, or a line longer than a block
            self._carry = data[cut:]
            if data:
                yield data[:cut]

    def cut_short(self, block: bytes) -> bool:
        """Whether ``block`` ends inside a line (one longer than a block)."""
        return not self.ended and not block.endswith(b"\n")

    def rest(self, block: bytes) -> io.RawIOBase:
        """``block`` (the last one yielded) and everything after it, as one stream."""
        return _Chain(block + self._carry, self.binary)


def arrow_block(block: bytes, header: tuple[str, ...]) -> pa.Table | None:
    """The block's records as string columns named ``header`` when pyarrow reads exactly one
    record per physical line (no blank line, no quoted line break) and all of it is valid
    UTF-8 with ``len(header)`` fields per record; else ``None``."""
    read = pacsv.ReadOptions(column_names=list(header), use_threads=False,
                             block_size=len(block) + 1)  # fmt: skip
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()))
    if block.startswith(codecs.BOM_UTF8):  # pyarrow would drop it; past line 1 it is data
        return None
    try:
        table = pacsv.read_csv(pa.py_buffer(block), read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == lines_in(block) else None


def block_records(block: bytes, after: int) -> list[Record] | None:
    """The block's records as :func:`records` reads them, or ``None`` when the block may end
    inside a quoted field (its last record's last field ends with a line break, or the last
    record is not valid CSV): then only the rest of the file read at once is right."""
    raw = list(_raw_records(raw_bytes(block), after, "utf-8"))
    last = raw[-1][1] if raw else [""]
    if last is None or last[-1].endswith(("\n", "\r")):
        return None
    return [_decoded(record) for record in raw]
