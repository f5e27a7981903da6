"""The telemetry lake: raw segments, compacted into date-partitioned Parquet.

Layout under the root::

    raw/<segment>.events                      event lines (event_lines.py), fsync'd per batch
    raw/<segment>.jsonl                       flattened rows as JSON (ingest before event lines)
    events/date=YYYY-MM-DD/part-<segment>.<n>.parquet   compacted rows (plain Hive layout)
    events/date=YYYY-MM-DD/part-merge-<id>.0.parquet    a finished day's files, merged
    compacted/<segment>                       commit marker: the segment now lives in Parquet
    compacted/merge-<id>                      commit marker of a day merge, naming what it replaces
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
* A day merge (:mod:`data_exhaust.compaction`) commits the same way: its marker names the files
  it replaces; readers that see the marker read the merged file instead of those, and those
  are deleted ``grace_seconds`` later.
"""

from __future__ import annotations

import fcntl
import functools
import os
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

from data_exhaust.event_lines import EVENTS_SUFFIX, events_scan
from data_exhaust.fsutil import fsync_dir

log = structlog.get_logger(__name__)

#: The columns of a raw segment's lines (names and DuckDB types), in order: ``telemetry.flatten``
#: rows.
RAW_COLUMNS: dict[str, str] = {
    "eid": "VARCHAR", "ets": "BIGINT", "mid": "VARCHAR", "channel": "VARCHAR",
    "pdata_id": "VARCHAR", "conversation_id": "VARCHAR", "device_id": "VARCHAR",
    "session_id": "VARCHAR", "actor_id": "VARCHAR", "item_id": "VARCHAR",
    "item_type": "VARCHAR", "item_title": "VARCHAR", "item_desc": "VARCHAR",
    "duration": "DOUBLE", "score": "DOUBLE", "max_score": "DOUBLE", "options": "VARCHAR",
    "response": "VARCHAR", "xpath": "VARCHAR", "eof": "VARCHAR", "event_hash": "VARCHAR",
    "event": "VARCHAR", "date": "VARCHAR",
}  # fmt: skip
#: ``event_key``, the dedup key: the first 64 bits of ``event_hash`` (a SHA-256 in hex), stored
#: by compaction and derived by this where it is not stored (raw segments, older files). A
#: query that deduplicates compares it instead of the 64-character hash, which it then never
#: reads: that took 24-31 % off a small export's query (bench/HISTORY.md, seventh sitting).
#: Two events collide only with equal ``mid`` and a 2^-64 chance. ``flatten`` always writes a
#: hex hash; one that is not (a hand-made line) gives NULL rather than failing a compaction.
EVENT_KEY_SQL = "TRY_CAST('0x' || left(event_hash, 16) AS UBIGINT)"
#: The lake's column contract (names and DuckDB types), in order: what every query sees.
#: ``event_key`` follows ``event_hash``.
COLUMNS: dict[str, str] = dict(
    column
    for name, kind in RAW_COLUMNS.items()
    for column in [(name, kind), *([("event_key", "UBIGINT")] if name == "event_hash" else [])]
)
NAMES = ", ".join(f'"{name}"' for name in COLUMNS)


def _lake_value(name: str, kind: str) -> str:
    return EVENT_KEY_SQL if name == "event_key" else f'CAST("{name}" AS {kind})'


#: Raw lines (and older Parquet files) as lake rows: the lake's types, the derived key.
SELECT_LIST = ", ".join(f'{_lake_value(*column)} AS "{column[0]}"' for column in COLUMNS.items())
EMPTY_SELECT = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in COLUMNS.items())
JSON_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in RAW_COLUMNS.items()) + "}"
RAW_SUFFIX = ".jsonl"
MB = 1024 * 1024
DuckConfigValue = str | bool | int | float | list[str]
#: The id prefix of a day merge's file and marker (``data_exhaust.compaction``).
MERGE_PREFIX = "merge-"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(_quote(str(p)) for p in paths) + "]"


@functools.lru_cache(maxsize=100_000)  # a path and a bool each; ~10 years of hourly files
def _has_event_key(path: Path) -> bool:
    """Whether the compacted file stores ``event_key`` (see :meth:`Lake.parquet_scan`)."""
    import pyarrow.parquet as pq  # not imported by the ingest workers, which never read

    return "event_key" in pq.read_schema(path).names


#: The suffixes of raw segments: flattened rows (before event lines), and event lines.
SEGMENT_SUFFIXES = (RAW_SUFFIX, EVENTS_SUFFIX)


def _is_segment(name: str) -> bool:
    """Whether a file of ``raw/`` is a segment (a hidden one is still being created)."""
    return not name.startswith(".") and name.endswith(SEGMENT_SUFFIXES)


def segment_id(path: Path) -> str:
    """The id of a raw segment (:meth:`Lake.raw_segments`): its name without its suffix."""
    return path.name.rsplit(".", 1)[0]


def _segment_of(parquet_name: str) -> str:
    """``part-<id>.<n>.parquet`` → ``<id>``, a segment's or a merge's (ids hold no dots)."""
    return parquet_name.removeprefix("part-").split(".", 1)[0]


@dataclass
class _Segment:
    fd: int
    path: Path
    opened_at: float
    size: int
    pid: int
    suffix: str = RAW_SUFFIX


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
        merge_files: int = 2,
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
        #: A finished day with this many visible files or more is merged into one (0: never).
        self.merge_files = merge_files
        self._merges: dict[str, tuple[str, frozenset[str]]] = {}  # markers never change
        self.cleaned: set[str] = set()  # merges whose replaced files are deleted
        self._lock = threading.Lock()
        self._segment: _Segment | None = None
        self._quarantine_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, merge_files: int = 2) -> Lake:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ValueError(
                f"unsupported lake URL {url!r}: only file:// URLs are supported "
                "(e.g. file:///var/lib/exhaust/lake)"
            )
        return cls(Path(unquote(parsed.path)), merge_files=merge_files)

    # -- writing -------------------------------------------------------------------------

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append flattened rows to this writer's segment: one write, one fsync, then return."""
        self.append_encoded(encode_rows(rows), RAW_SUFFIX)

    def append_encoded(self, data: bytes, suffix: str) -> None:
        """Append whole lines already encoded, of the kind ``suffix`` names: event lines
        (:func:`~data_exhaust.event_lines.event_line`) with
        :data:`~data_exhaust.event_lines.EVENTS_SUFFIX`, or rows (:func:`encode_rows`) with
        :data:`RAW_SUFFIX`, as :meth:`append` does. A segment holds lines of one kind."""
        if not data:
            return
        with self._lock:
            segment = self._current(suffix)
            os.write(segment.fd, data)  # O_APPEND: one call, whole lines, at the end
            os.fsync(segment.fd)
            segment.size += len(data)
            if segment.size >= self.segment_bytes:
                self._close()

    def _current(self, suffix: str) -> _Segment:
        segment = self._segment
        if segment is not None and segment.pid != os.getpid():
            # Inherited across fork: the parent owns it. Our copy of the fd would keep the
            # parent's flock alive (and the segment uncompactable) until we exit.
            os.close(segment.fd)
            self._segment = segment = None
        if segment is not None and (
            time.monotonic() - segment.opened_at > self.segment_seconds or segment.suffix != suffix
        ):
            self._close()
            segment = None
        if segment is None:
            segment = self._segment = self._open_segment(suffix)
        return segment

    def _open_segment(self, suffix: str) -> _Segment:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        hidden = self.raw / f".{name}.open"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before it is visible: never compactable while open
        path = self.raw / f"{name}{suffix}"
        os.rename(hidden, path)
        fsync_dir(self.raw)
        log.debug("lake.segment_opened", segment=name)
        return _Segment(fd, path, time.monotonic(), 0, os.getpid(), suffix)

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

    # -- compaction (data_exhaust.compaction) -----------------------------------------

    def compact(self, today: date | None = None) -> int:
        """Move every closed raw segment into Parquet and merge the finished days' files
        (before ``today``, UTC by default); the number of events moved out of raw segments.

        This writer's own open segment is rolled first. Segments still open in other
        processes (locked) are left for a later run; they stay queryable raw meanwhile.
        """
        from data_exhaust import compaction  # the ingest workers never compact: no DuckDB

        self.roll()
        return compaction.compact(self, today)

    # -- reading -------------------------------------------------------------------------

    def _raw_scan(self, paths: Sequence[Path]) -> str:
        """The lake's raw columns over segments of either kind (flattened rows, events)."""
        rows = [path for path in paths if path.name.endswith(RAW_SUFFIX)]
        events = [path for path in paths if path.name.endswith(EVENTS_SUFFIX)]
        # A torn last line (a crash mid-write, never acknowledged) reads as a row of NULLs.
        scans = [f"read_json({_file_list(rows)}, format='newline_delimited', "
                 f"columns={JSON_COLUMNS}, ignore_errors=true)"] if rows else []  # fmt: skip
        scans += [events_scan(_file_list(events))] if events else []
        if len(scans) == 1:
            return scans[0]
        return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {scan}" for scan in scans) + ")"

    def raw_segments(self) -> list[Path]:
        """Every raw segment file, of either kind, sorted by name (compacted ones included)."""
        return sorted(p for p in self.raw.iterdir() if _is_segment(p.name))

    file_id = staticmethod(_segment_of)

    def merges(self, committed: set[str] | None = None) -> dict[str, tuple[str, frozenset[str]]]:
        """Every committed day merge: its id → (its date, the ids of the files it replaces)."""
        names = os.listdir(self.markers) if committed is None else committed
        for name in names:
            if name.startswith(MERGE_PREFIX) and name not in self._merges:
                marker = orjson.loads((self.markers / name).read_bytes())
                self._merges[name] = (marker["date"], frozenset(marker["replaces"]))
        return {name: self._merges[name] for name in names if name in self._merges}

    def visible_files_by_day(
        self, committed: set[str], low: str = "", high: str = "date=\uffff"
    ) -> dict[str, list[Path]]:
        """The Parquet files a query reads, by date: committed, and not replaced by a merge."""
        replaced = {
            (day, file_id)
            for day, replaces in self.merges(committed).values()
            for file_id in replaces
        }
        found: dict[str, list[Path]] = {}
        for folder in sorted(os.listdir(self.events)):
            if not (folder.startswith("date=") and low <= folder <= high):
                continue
            day = folder.removeprefix("date=")
            files = [
                self.events / folder / name
                for name in sorted(os.listdir(self.events / folder))
                if name.endswith(".parquet")
                and (segment := _segment_of(name)) in committed
                and (day, segment) not in replaced
            ]
            if files:
                found[day] = files
        return found

    def _files(
        self, first_day: date | None, last_day: date | None
    ) -> tuple[list[Path], list[Path]]:
        """(parquet files, raw segments) to read; markers are listed first (see module doc)."""
        committed = set(os.listdir(self.markers))
        raw = [p for p in self.raw_segments() if segment_id(p) not in committed]
        low = f"date={first_day.isoformat()}" if first_day else ""
        high = f"date={last_day.isoformat()}" if last_day else "date=\uffff"
        by_day = self.visible_files_by_day(committed, low, high)
        return [path for files in by_day.values() for path in files], raw

    def parquet_files(
        self, first_day: date | None = None, last_day: date | None = None
    ) -> list[Path]:
        """The Parquet files a query of these days reads now (for tools and benchmarks)."""
        return self._files(first_day, last_day)[0]

    def parquet_scan(self, files: Sequence[Path]) -> str:
        """A table expression of lake rows (:data:`COLUMNS`, in order) over compacted files.

        Files written before ``event_key`` was stored get it derived (:data:`EVENT_KEY_SQL`);
        a day merge rewrites them with it. Whether a file has it is read from its footer once
        per process: committed files never change."""
        has_key = {path: _has_event_key(path) for path in files}
        keyed = [path for path in files if has_key[path]]
        legacy = [path for path in files if not has_key[path]]
        keyed_scan, legacy_scan = (
            f"read_parquet({_file_list(group)}, hive_partitioning=false)"
            for group in (keyed, legacy)
        )
        if not legacy:
            return keyed_scan
        parts = [f"SELECT {SELECT_LIST} FROM {legacy_scan}"]
        parts += [f"SELECT {NAMES} FROM {keyed_scan}"] if keyed else []
        return f"({' UNION ALL '.join(parts)})"

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
        Duplicates are dropped only when both ``mid`` and ``event_key`` match (two different
        chatbot replies can share a ``mid``). The file lists are fixed when this is called.

        ``dedup=False`` leaves duplicates in, for a caller that sorts by ``mid, event_key``
        (within equal ``ets``) and drops them while streaming with
        ``datasets.dedup.drop_adjacent_duplicates``: ``DISTINCT ON`` holds every row.
        """
        parquet, raw = self._files(first_day, last_day)
        distinct = "DISTINCT ON (mid, event_key) " if dedup else ""
        if parquet and not raw:  # compacted files already have the lake's types: no raw union
            scan = self.parquet_scan(parquet)
            return f"(SELECT {distinct}{NAMES} FROM {scan} AS lake_rows WHERE ({where}))"
        parts = [f"SELECT {EMPTY_SELECT} WHERE false"]  # the empty lake still has the columns
        if parquet:
            parts.append(f"SELECT {NAMES} FROM {self.parquet_scan(parquet)}")
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
        return f"(SELECT {distinct}{NAMES} FROM ({union}) AS lake_rows WHERE ({where}))"

    def stats(self) -> dict[str, int]:
        """Cheap counts for /health and ``exhaust lake``: no file is opened but quarantine
        and the day merges' markers (read once per process)."""
        committed = set(os.listdir(self.markers))
        pending = [p for p in self.raw_segments() if segment_id(p) not in committed]
        quarantined = 0
        for path in self.quarantined.glob(f"*{RAW_SUFFIX}"):
            with open(path, "rb") as handle:
                quarantined += sum(
                    chunk.count(b"\n") for chunk in iter(lambda: handle.read(MB), b"")
                )
        visible = self.visible_files_by_day(committed)
        return {
            "raw_segments": len(pending),
            "raw_bytes": sum(p.stat().st_size for p in pending if p.exists()),
            "parquet_files": sum(len(files) for files in visible.values()),
            "compacted_segments": sum(1 for n in committed if not n.startswith(MERGE_PREFIX)),
            "merged_days": len(self.merges(committed)),
            "quarantined": quarantined,
        }
