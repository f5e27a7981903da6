"""Streamed CSV records with their line numbers, for imports.

A file is read through a byte counter (for progress) and decoded as UTF-8 with
``surrogateescape``, so an undecodable line is reported, not fatal. A record spans several
lines when a quoted field holds newlines; its number is the line it starts on. A field is
limited by :func:`csv.field_size_limit` (128 KiB), so an unclosed quote cannot eat the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

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


def records(counted: Counted) -> Iterator[Record]:
    """``(first line number, fields or None, error)`` for every non-blank CSV record."""
    text = io.TextIOWrapper(
        io.BufferedReader(counted), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    reader = csv.reader(text)
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield last + 1, None, f"not valid CSV ({exc}; an unclosed quote?)"
            last = reader.line_num
            continue
        start, last = last + 1, reader.line_num
        if not fields:
            continue
        if any(UNPAIRED.search(value) for value in fields):
            yield start, None, "not valid UTF-8 (save the file as UTF-8)"
        else:
            yield start, fields, None


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
