"""The telemetry lake: raw JSON-lines segments, compacted into date-partitioned Parquet.

Layout under the root::

    raw/<segment>.jsonl                       flattened rows, appended and fsync'd per batch
    events/date=YYYY-MM-DD/part-<segment>.<n>.parquet   compacted rows (plain Hive layout)
    compacted/<segment>                       commit marker: the segment now lives in Parquet
    quarantine/<pid>-<uuid>.jsonl             rejected events with their errors

Why it is safe without a coordinator:

* Every writer (process, or :class:`Lake` instance) appends to segments of its own, named with
  its pid and a uuid, and holds an exclusive ``flock`` on the open one. The file is created
  under a hidden name and locked *before* it is renamed into ``raw/``, so no one can ever see an
  unlocked live segment. The kernel drops the lock when the writer closes the segment (on
  roll) or dies, which is exactly when the segment becomes compactable: compaction takes the
  same lock without blocking and skips segments it cannot lock. The lock also keeps two
  concurrent compactions off one segment.
* The ``compacted/<segment>`` marker is the single commit point. Readers list markers first;
  a segment with a marker is read from its Parquet files, one without from its raw file, never
  both. Parquet files of a segment whose marker is missing are leftovers of an interrupted
  compaction: invisible, and removed when the compaction is redone.
* A compacted raw segment is deleted only ``grace_seconds`` after its marker, so a query that
  listed it just before the commit can still read it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson
import structlog

from data_exhaust.fsutil import fsync_dir

log = structlog.get_logger(__name__)

#: The lake's column contract (names and DuckDB types), in order; ``telemetry.flatten`` rows.
COLUMNS: dict[str, str] = {
    "eid": "VARCHAR", "ets": "BIGINT", "mid": "VARCHAR", "channel": "VARCHAR",
    "pdata_id": "VARCHAR", "conversation_id": "VARCHAR", "device_id": "VARCHAR",
    "session_id": "VARCHAR", "actor_id": "VARCHAR", "item_id": "VARCHAR",
    "item_type": "VARCHAR", "item_title": "VARCHAR", "item_desc": "VARCHAR",
    "duration": "DOUBLE", "score": "DOUBLE", "max_score": "DOUBLE", "options": "VARCHAR",
    "response": "VARCHAR", "xpath": "VARCHAR", "eof": "VARCHAR", "event_hash": "VARCHAR",
    "event": "VARCHAR", "date": "VARCHAR",
}  # fmt: skip
SELECT_LIST = ", ".join(f'CAST("{name}" AS {kind}) AS "{name}"' for name, kind in COLUMNS.items())
EMPTY_SELECT = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in COLUMNS.items())
JSON_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
RAW_SUFFIX = ".jsonl"
MB = 1024 * 1024
DuckConfigValue = str | bool | int | float | list[str]
#: How compacted rows are ordered in each Parquet file: one conversation's rows are together
#: and in time order, so min/max statistics let a query skip the row groups of other
#: conversations and other hours (a 1-of-50 conversation export reads ~1/10 of a file), and an
#: export sorts rows that are already nearly in order.
SORT_ORDER = "conversation_id, ets, mid, event_hash"
#: Rows per Parquet row group: the unit a query skips (DuckDB's default is 122,880).
ROW_GROUP_ROWS = 10_240
#: DuckDB memory cap of a compaction (the server compacts in its maintenance thread).
COMPACTION_MEMORY = "256MB"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(_quote(str(p)) for p in paths) + "]"


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _segment_of(parquet_name: str) -> str:
    """``part-<segment>.<n>.parquet`` → ``<segment>`` (segment ids hold no dots)."""
    return parquet_name.removeprefix("part-").split(".", 1)[0]


@dataclass
class _Segment:
    fd: int
    path: Path
    opened_at: float
    size: int
    pid: int


def encode_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    """Flattened rows as the JSON lines of a raw segment (see :meth:`Lake.append`)."""
    return b"".join([orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows])


class Lake:
    """A lake on the local filesystem (``file://`` URL); see the module docstring for the design."""

    def __init__(
        self,
        root: Path,
        *,
        segment_bytes: int = 64 * MB,
        segment_seconds: float = 600.0,
        grace_seconds: float = 3600.0,
    ) -> None:
        self.root = Path(root)
        self.raw = self.root / "raw"
        self.events = self.root / "events"
        self.markers = self.root / "compacted"
        self.quarantined = self.root / "quarantine"
        for folder in (self.raw, self.events, self.markers, self.quarantined):
            folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self._segment: _Segment | None = None
        self._quarantine_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> Lake:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ValueError(
                f"unsupported lake URL {url!r}: only file:// URLs are supported "
                "(e.g. file:///var/lib/exhaust/lake)"
            )
        return cls(Path(unquote(parsed.path)))

    # -- writing -------------------------------------------------------------------------

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append flattened rows to this writer's segment: one write, one fsync, then return."""
        self.append_encoded(encode_rows(rows))

    def append_encoded(self, data: bytes) -> None:
        """Append rows already encoded by :func:`encode_rows` (whole lines), as :meth:`append`
        does: a caller with many rows may encode them as it goes, a few at a time."""
        if not data:
            return
        with self._lock:
            segment = self._current()
            os.write(segment.fd, data)  # O_APPEND: one call, whole lines, at the end
            os.fsync(segment.fd)
            segment.size += len(data)
            if segment.size >= self.segment_bytes:
                self._close()

    def _current(self) -> _Segment:
        segment = self._segment
        if segment is not None and segment.pid != os.getpid():
            # Inherited across fork: the parent owns it. Our copy of the fd would keep the
            # parent's flock alive (and the segment uncompactable) until we exit.
            os.close(segment.fd)
            self._segment = segment = None
        if segment is not None and time.monotonic() - segment.opened_at > self.segment_seconds:
            self._close()
            segment = None
        if segment is None:
            segment = self._segment = self._open_segment()
        return segment

    def _open_segment(self) -> _Segment:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        segment_id = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        hidden = self.raw / f".{segment_id}.open"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before it is visible: never compactable while open
        path = self.raw / f"{segment_id}{RAW_SUFFIX}"
        os.rename(hidden, path)
        fsync_dir(self.raw)
        log.debug("lake.segment_opened", segment=segment_id)
        return _Segment(fd, path, time.monotonic(), 0, os.getpid())

    def _close(self) -> None:
        if self._segment is not None:
            os.close(self._segment.fd)  # releases the flock: compaction may take it now
            self._segment = None

    def roll(self) -> None:
        """Close this writer's current segment so that the next compaction can take it."""
        with self._lock:
            self._close()

    def quarantine(self, items: Iterable[dict[str, Any]]) -> None:
        """Durably keep rejected events/lines with their errors and a received timestamp."""
        received = datetime.now(UTC).isoformat(timespec="milliseconds")
        data = b"".join(
            orjson.dumps({"received_at": received, **item}, default=str) + b"\n" for item in items
        )
        if not data:
            return
        path = self.quarantined / f"{os.getpid()}-{id(self):x}{RAW_SUFFIX}"
        with self._quarantine_lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        log.warning("lake.quarantined", items=data.count(b"\n"))

    # -- compaction ----------------------------------------------------------------------

    def compact(self) -> int:
        """Move every closed raw segment into Parquet; the number of events moved.

        This writer's own open segment is rolled first. Segments still open in other
        processes (locked) are left for a later run; they stay queryable raw meanwhile.
        """
        self.roll()
        total = 0
        for path in sorted(self.raw.glob(f"*{RAW_SUFFIX}")):
            total += self._compact_segment(path)
        self._delete_compacted_raw()
        return total

    def _compact_segment(self, path: Path) -> int:
        segment_id = path.name.removesuffix(RAW_SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # deleted by a concurrent compaction
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a live writer or another compaction holds it
            if (self.markers / segment_id).exists() or not path.exists():
                return 0
            count = self._write_parquet(path, segment_id)
            _write_durably(self.markers / segment_id, orjson.dumps({"events": count}))
            log.info("lake.segment_compacted", segment=segment_id, events=count)
            return count
        finally:
            os.close(fd)

    def _write_parquet(self, path: Path, segment_id: str) -> int:
        """Write the segment's Parquet files into place (not yet visible: no marker): one
        file per event date, its rows in :data:`SORT_ORDER` in row groups of
        :data:`ROW_GROUP_ROWS`."""
        self._remove_leftovers(segment_id)
        import duckdb  # here: the ingest worker processes never compact, and start faster

        tmp = self.events / f".tmp-{segment_id}"
        tmp.mkdir()
        scan = f"SELECT {SELECT_LIST} FROM {self._raw_scan([path])} WHERE event_hash IS NOT NULL"
        try:
            with duckdb.connect(config=self._compaction_config(COMPACTION_MEMORY)) as con:
                days, count = _sorted_days(con, scan, tmp)
        except duckdb.OutOfMemoryException:  # a segment far above segment_bytes: no cap
            log.warning("lake.compaction_memory_exceeded", segment=segment_id)
            with duckdb.connect(config=self._compaction_config(None)) as con:
                days, count = _sorted_days(con, scan, tmp)
        for day in days:
            part = tmp / f"{day}.parquet"
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())
            target = self.events / f"date={day}"
            target.mkdir(exist_ok=True)
            os.rename(part, target / f"part-{segment_id}.0.parquet")
            fsync_dir(target)
        shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(self.events)
        return count

    def _compaction_config(self, memory: str | None) -> dict[str, DuckConfigValue]:
        """DuckDB's settings for a compaction: one thread (it runs beside the API and the
        exports), ``memory`` capped and spilling under the lake. Uncapped, compacting one
        100 MB segment took ~720 MB of the process; capped at 256 MB, 289 MB."""
        spill = self.root / ".compaction-spill"
        spill.mkdir(exist_ok=True)
        config: dict[str, DuckConfigValue] = {
            "temp_directory": str(spill), "threads": 1,
        }  # fmt: skip
        if memory is not None:
            config["memory_limit"] = memory
        return config

    def _remove_leftovers(self, segment_id: str) -> None:
        """Undo an interrupted compaction of ``segment_id`` (its marker is missing)."""
        shutil.rmtree(self.events / f".tmp-{segment_id}", ignore_errors=True)
        for stale in self.events.glob(f"date=*/part-{segment_id}.*.parquet"):
            log.warning("lake.leftover_removed", segment=segment_id, file=stale.name)
            stale.unlink()

    def _delete_compacted_raw(self) -> None:
        now = time.time()
        for path in self.raw.glob(f"*{RAW_SUFFIX}"):
            marker = self.markers / path.name.removesuffix(RAW_SUFFIX)
            try:
                if now - marker.stat().st_mtime >= self.grace_seconds:
                    path.unlink()
            except FileNotFoundError:
                continue

    # -- reading -------------------------------------------------------------------------

    def _raw_scan(self, paths: Sequence[Path]) -> str:
        # A torn last line (a crash mid-write, never acknowledged) reads as a row of NULLs.
        return (
            f"read_json({_file_list(paths)}, format='newline_delimited', "
            f"columns={JSON_COLUMNS}, ignore_errors=true)"
        )

    def _files(
        self, first_day: date | None, last_day: date | None
    ) -> tuple[list[Path], list[Path]]:
        """(parquet files, raw segments) to read; markers are listed first (see module doc)."""
        committed = set(os.listdir(self.markers))
        raw = sorted(
            p for p in self.raw.glob(f"*{RAW_SUFFIX}")
            if p.name.removesuffix(RAW_SUFFIX) not in committed
        )  # fmt: skip
        low = f"date={first_day.isoformat()}" if first_day else ""
        high = f"date={last_day.isoformat()}" if last_day else "date=\uffff"
        parquet: list[Path] = []
        for folder in sorted(os.listdir(self.events)):
            if folder.startswith("date=") and low <= folder <= high:
                parquet.extend(
                    self.events / folder / name
                    for name in sorted(os.listdir(self.events / folder))
                    if name.endswith(".parquet") and _segment_of(name) in committed
                )
        return parquet, raw

    def events_sql(
        self,
        first_day: date | None = None,
        last_day: date | None = None,
        where: str = "true",
        *,
        dedup: bool = True,
    ) -> str:
        """A parenthesised subquery over every event, deduplicated, for ``FROM <sql> AS e``.

        Days are UTC calendar days of ``ets`` (the partitioning), inclusive; a caller working
        in another time zone widens the range by a day and filters on ``ets``. ``where`` is a
        predicate over the columns of :data:`COLUMNS` and may use ``$name`` parameters.
        Duplicates are dropped only when both ``mid`` and ``event_hash`` match (two different
        chatbot replies can share a ``mid``). The file lists are fixed when this is called.

        ``dedup=False`` leaves duplicates in, for a caller that sorts by ``mid, event_hash``
        (within equal ``ets``) and drops them while streaming with
        ``datasets.dedup.drop_adjacent_duplicates``: ``DISTINCT ON`` holds every row.
        """
        parquet, raw = self._files(first_day, last_day)
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        distinct = "DISTINCT ON (mid, event_hash) " if dedup else ""
        scan = f"read_parquet({_file_list(parquet)}, hive_partitioning=false)"
        if parquet and not raw:  # compacted files already have the lake's types: no union
            return f"(SELECT {distinct}{names} FROM {scan} AS lake_rows WHERE ({where}))"
        parts = [f"SELECT {EMPTY_SELECT} WHERE false"]  # the empty lake still has the columns
        if parquet:
            parts.append(f"SELECT {SELECT_LIST} FROM {scan}")
        if raw:
            days = ["event_hash IS NOT NULL"]
            if first_day:
                days.append(f"date >= {_quote(first_day.isoformat())}")
            if last_day:
                days.append(f"date <= {_quote(last_day.isoformat())}")
            parts.append(
                f"SELECT {SELECT_LIST} FROM {self._raw_scan(raw)} WHERE {' AND '.join(days)}"
            )
        union = " UNION ALL ".join(parts)
        return f"(SELECT {distinct}{names} FROM ({union}) AS lake_rows WHERE ({where}))"

    def stats(self) -> dict[str, int]:
        """Cheap counts for /health and ``exhaust lake``: no file is opened but quarantine."""
        committed = set(os.listdir(self.markers))
        raw = [p for p in self.raw.glob(f"*{RAW_SUFFIX}")]
        pending = [p for p in raw if p.name.removesuffix(RAW_SUFFIX) not in committed]
        quarantined = 0
        for path in self.quarantined.glob(f"*{RAW_SUFFIX}"):
            with open(path, "rb") as handle:
                quarantined += sum(
                    chunk.count(b"\n") for chunk in iter(lambda: handle.read(MB), b"")
                )
        return {
            "raw_segments": len(pending),
            "raw_bytes": sum(p.stat().st_size for p in pending if p.exists()),
            "parquet_files": sum(1 for _ in self.events.glob("date=*/*.parquet")),
            "compacted_segments": len(committed),
            "quarantined": quarantined,
        }


def _sorted_days(con: Any, scan: str, folder: Path) -> tuple[list[str], int]:
    """``<folder>/<date>.parquet`` for every event date of ``scan`` (a SELECT of lake rows),
    each in :data:`SORT_ORDER`; the dates and the number of rows written.

    The raw JSON is parsed once, streamed into ``<folder>/all.parquet``, which one ``COPY``
    per date then reads (DuckDB's ``PARTITION_BY`` does not keep an ``ORDER BY`` within each
    file). Parsing the JSON again for each date had made a segment's compaction as many times
    slower as it had dates; a temporary table instead held the whole segment in memory."""
    staged = _quote(str(folder / "all.parquet"))
    # small row groups: the writer buffers one (a default one of these rows was ~100 MB)
    options = f"FORMAT parquet, COMPRESSION lz4_raw, ROW_GROUP_SIZE {ROW_GROUP_ROWS}"
    con.execute(f"COPY ({scan}) TO {staged} ({options})")
    rows = f"read_parquet({staged})"
    days = [str(day) for (day,) in con.execute(
        f"SELECT DISTINCT date FROM {rows} ORDER BY date"
    ).fetchall()]  # fmt: skip
    count = 0
    for day in days:
        row = con.execute(
            f"COPY (SELECT * FROM {rows} WHERE date = {_quote(day)} ORDER BY {SORT_ORDER}) "
            f"TO {_quote(str(folder / f'{day}.parquet'))} "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
        ).fetchone()
        count += int(row[0]) if row else 0
    return days, count
