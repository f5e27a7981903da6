"""Lake compaction: closed raw segments into date-partitioned Parquet, then each finished
day's files merged into one.

**Segments.** A closed segment (one no writer holds the ``flock`` of) becomes one Parquet file
per event date, ``events/date=D/part-<segment>.0.parquet``, its rows in :data:`SORT_ORDER`;
``compacted/<segment>`` commits them all at once (see :mod:`data_exhaust.lake`).

**Day merges.** Segments roll every 64 MB or 10 minutes, so a busy day ends with dozens of
files, and a query for one conversation opens every one of them and decompresses a row group
of each. Once a day is over (its UTC date is before today's) and has at least ``merge_files``
visible files, they are rewritten as one file in :data:`SORT_ORDER`,
``events/date=D/part-merge-<id>.0.parquet``, committed by the marker ``compacted/merge-<id>``,
whose JSON names the files it replaces (``{"date": D, "replaces": [ids], "events": n}``).
Readers that listed the markers before it read the old files; readers after it read the new
file and skip the replaced ones. The replaced files are deleted ``grace_seconds`` after the
marker, as compacted raw segments are. A late event makes its day mergeable again: the next
merge rewrites the merged file with the new one. One process merges at a time (an exclusive
``flock`` on ``.merge.lock`` in the lake); the file of a merge that has no marker is the
leftover of an interrupted one and is removed by the next.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import structlog

from data_exhaust.fsutil import fsync_dir
from data_exhaust.lake import MERGE_PREFIX, SELECT_LIST, Lake, _quote, segment_id
from data_exhaust.logs import configure, configured_level

if TYPE_CHECKING:
    from data_exhaust.lake import DuckConfigValue

log = structlog.get_logger(__name__)

#: How compacted rows are ordered in each Parquet file: one conversation's rows are together
#: and in time order, so min/max statistics let a query skip the row groups of other
#: conversations and other hours (a 1-of-50 conversation export reads ~1/10 of a file), and an
#: export sorts rows that are already nearly in order.
SORT_ORDER = "conversation_id, ets, mid, event_key"
#: Rows per Parquet row group: the unit a query skips (DuckDB's default is 122,880).
ROW_GROUP_ROWS = 10_240
#: DuckDB memory cap of a compaction (the server compacts in its maintenance thread).
COMPACTION_MEMORY = "256MB"
#: Rows a day merge sorts at once (whole conversations; see ``_write_merged``).
MERGE_RANGE_ROWS = 40_000


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def compact(lake: Lake, today: date | None = None) -> int:
    """Move every closed raw segment into Parquet, then merge the finished days (before
    ``today``, UTC by default); the number of events moved out of raw segments."""
    total = 0
    for path in lake.raw_segments():
        total += _compact_segment(lake, path)
    _delete_compacted_raw(lake)
    if lake.merge_files:
        merge_in_child(lake, today or datetime.now(UTC).date())
    _delete_replaced(lake)  # also of merges made before the grace period ended
    return total


def _compact_segment(lake: Lake, path: Path) -> int:
    segment = segment_id(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # deleted by a concurrent compaction
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live writer or another compaction holds it
        if (lake.markers / segment).exists() or not path.exists():
            return 0
        count = _write_parquet(lake, path, segment)
        _write_durably(lake.markers / segment, orjson.dumps({"events": count}))
        log.info("lake.segment_compacted", segment=segment, events=count)
        return count
    finally:
        os.close(fd)


def _write_parquet(lake: Lake, path: Path, segment_id: str) -> int:
    """Write the segment's Parquet files into place (not yet visible: no marker): one file
    per event date, its rows in :data:`SORT_ORDER` in row groups of :data:`ROW_GROUP_ROWS`."""
    _remove_leftovers(lake, segment_id)
    tmp = lake.events / f".tmp-{segment_id}"
    tmp.mkdir()
    scan = f"SELECT {SELECT_LIST} FROM {lake._raw_scan([path])} WHERE event_hash IS NOT NULL"
    try:
        with duckdb.connect(config=_config(lake, COMPACTION_MEMORY)) as con:
            days, count = _sorted_days(con, scan, tmp)
    except duckdb.OutOfMemoryException:  # a segment far above segment_bytes: no cap
        log.warning("lake.compaction_memory_exceeded", segment=segment_id)
        with duckdb.connect(config=_config(lake, None)) as con:
            days, count = _sorted_days(con, scan, tmp)
    for day in days:
        _move_into_day(lake, tmp / f"{day}.parquet", day, segment_id)
    shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(lake.events)
    return count


def _move_into_day(lake: Lake, part: Path, day: str, file_id: str) -> None:
    """fsync ``part`` and rename it to ``date=<day>/part-<file_id>.0.parquet``."""
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    target = lake.events / f"date={day}"
    target.mkdir(exist_ok=True)
    os.rename(part, target / f"part-{file_id}.0.parquet")
    fsync_dir(target)


def _config(lake: Lake, memory: str | None) -> dict[str, DuckConfigValue]:
    """DuckDB's settings for a compaction: one thread (it runs beside the API and the
    exports), ``memory`` capped and spilling under the lake. Uncapped, compacting one
    100 MB segment took ~720 MB of the process; capped at 256 MB, 289 MB."""
    spill = lake.root / ".compaction-spill"
    spill.mkdir(exist_ok=True)
    config: dict[str, DuckConfigValue] = {"temp_directory": str(spill), "threads": 1}
    if memory is not None:
        config["memory_limit"] = memory
    return config


def _remove_leftovers(lake: Lake, file_id: str) -> None:
    """Undo an interrupted compaction or merge of ``file_id`` (its marker is missing)."""
    shutil.rmtree(lake.events / f".tmp-{file_id}", ignore_errors=True)
    for stale in lake.events.glob(f"date=*/part-{file_id}.*.parquet"):
        log.warning("lake.leftover_removed", segment=file_id, file=stale.name)
        stale.unlink()


def _delete_compacted_raw(lake: Lake) -> None:
    now = time.time()
    for path in lake.raw_segments():
        marker = lake.markers / segment_id(path)
        try:
            if now - marker.stat().st_mtime >= lake.grace_seconds:
                path.unlink()
        except FileNotFoundError:
            continue


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
        count += _copy_sorted(
            con, f"SELECT * FROM {rows} WHERE date = {_quote(day)}", folder / f"{day}.parquet"
        )
    return days, count


def _copy_sorted(con: Any, select: str, out: Path) -> int:
    """``select`` in :data:`SORT_ORDER` into the Parquet file ``out``; the rows written."""
    row = con.execute(
        f"COPY ({select} ORDER BY {SORT_ORDER}) TO {_quote(str(out))} "
        f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
    ).fetchone()
    return int(row[0]) if row else 0


# -- day merges ------------------------------------------------------------------------------


def merge_in_child(lake: Lake, today: date) -> None:
    """Run :func:`merge_days` in a child process when a day is due: a merge's DuckDB sort and
    Parquet readers peak at ~450 MB (a 167 k-event day in 5 files) and DuckDB's allocator keeps
    what it freed, so a server that merged in its own process would stay that size. A child
    that fails is logged; its work is redone by the next compaction (see the module doc)."""
    if not _due_days(lake, set(os.listdir(lake.markers)), today):
        return
    # "spawn": forking a process that may run DuckDB or SQLAlchemy threads is unsafe.
    context = multiprocessing.get_context("spawn")
    args = (
        str(lake.root),
        lake.grace_seconds,
        lake.merge_files,
        today.isoformat(),
        configured_level(),
    )
    child = context.Process(target=_merge_child, args=args, name="exhaust-lake-merge")
    child.start()
    child.join()
    if child.exitcode != 0:
        log.error("lake.merge_failed", exitcode=child.exitcode)


def _merge_child(root: str, grace_seconds: float, merge_files: int, today: str, level: str) -> None:
    configure(level)
    lake = Lake(Path(root), grace_seconds=grace_seconds, merge_files=merge_files)
    merge_days(lake, date.fromisoformat(today))


def merge_days(lake: Lake, today: date) -> int:
    """Merge the files of every day before ``today`` that has ``merge_files`` or more visible
    files into one; the number of days merged (0 when another process is merging)."""
    lock_path = lake.root / ".merge.lock"
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        committed = set(os.listdir(lake.markers))
        _remove_merge_leftovers(lake, committed)
        due = _due_days(lake, committed, today)
        for day, files in due.items():
            _merge_day(lake, day, files)
        return len(due)


def _due_days(lake: Lake, committed: set[str], today: date) -> dict[str, list[Path]]:
    """The visible files of every day before ``today`` that has ``merge_files`` or more."""
    before = lake.visible_files_by_day(committed, high=f"date={today - timedelta(days=1)}")
    return {day: files for day, files in before.items() if len(files) >= lake.merge_files}


def _merge_day(lake: Lake, day: str, files: list[Path]) -> None:
    merge_id = f"{MERGE_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    tmp = lake.events / f".tmp-{merge_id}"
    tmp.mkdir()
    out = tmp / "day.parquet"
    try:
        count = _write_merged(lake, files, out, COMPACTION_MEMORY)
    except duckdb.OutOfMemoryException:  # one conversation's day too big for the cap
        log.warning("lake.merge_memory_exceeded", date=day)
        count = _write_merged(lake, files, out, None)
    _move_into_day(lake, out, day, merge_id)
    shutil.rmtree(tmp, ignore_errors=True)
    replaces = sorted({lake.file_id(path.name) for path in files})
    marker = {"date": day, "replaces": replaces, "events": count}
    _write_durably(lake.markers / merge_id, orjson.dumps(marker))
    log.info("lake.day_merged", date=day, files=len(files), events=count, merge=merge_id)


def _write_merged(lake: Lake, files: list[Path], out: Path, memory: str | None) -> int:
    """``files`` as one Parquet file ``out`` in :data:`SORT_ORDER`; the rows written.

    DuckDB's own sort of a whole day (167 k events, ~300 MB of rows) fails under the 256 MB
    cap and took 578 MB uncapped, so the day is sorted a range of conversations at a time
    (about :data:`MERGE_RANGE_ROWS` rows each; the input files' conversation statistics let
    each range read only its row groups), streamed into one file by pyarrow's writer (which
    replaces ``out`` if an earlier attempt left it)."""
    import pyarrow.parquet as pq

    scan = lake.parquet_scan(files)  # older files get their event_key here
    count = 0
    with duckdb.connect(config=_config(lake, memory)) as con:
        schema = con.sql(f"SELECT * FROM {scan} LIMIT 0").to_arrow_table().schema
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for where, params in _conversation_ranges(con, scan):
                batches = con.sql(
                    f"SELECT * FROM {scan} WHERE {where} ORDER BY {SORT_ORDER}", params=params
                ).to_arrow_reader(ROW_GROUP_ROWS)
                for batch in batches:
                    writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                    count += batch.num_rows
    return count


def _conversation_ranges(con: Any, scan: str) -> list[tuple[str, list[Any]]]:
    """Predicates that split ``scan`` into consecutive ranges of whole conversations of about
    :data:`MERGE_RANGE_ROWS` rows, in sort order (rows without a conversation last)."""
    counts = con.execute(
        f"SELECT conversation_id, count(*) FROM {scan} "
        "WHERE conversation_id IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall()
    ranges: list[tuple[str, list[Any]]] = []
    first, rows = None, 0
    for index, (conversation, n) in enumerate(counts):
        first, rows = (conversation if first is None else first), rows + n
        if rows >= MERGE_RANGE_ROWS or index == len(counts) - 1:
            ranges.append(("conversation_id BETWEEN $1 AND $2", [first, conversation]))
            first, rows = None, 0
    return [*ranges, ("conversation_id IS NULL", [])]


def _remove_merge_leftovers(lake: Lake, committed: set[str]) -> None:
    """Files and folders of merges that never wrote their marker (run under the merge lock)."""
    for folder in lake.events.glob(f".tmp-{MERGE_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)
    for stale in lake.events.glob(f"date=*/part-{MERGE_PREFIX}*.parquet"):
        if lake.file_id(stale.name) not in committed:
            log.warning("lake.leftover_removed", file=stale.name)
            stale.unlink()


def _delete_replaced(lake: Lake) -> None:
    """Delete the files a merge replaced once its marker is ``grace_seconds`` old."""
    now = time.time()
    for merge_id, (day, replaces) in lake.merges().items():
        if merge_id in lake.cleaned:
            continue
        try:
            age = now - (lake.markers / merge_id).stat().st_mtime
        except FileNotFoundError:
            continue
        if age < lake.grace_seconds:
            continue
        for file_id in replaces:
            for path in (lake.events / f"date={day}").glob(f"part-{file_id}.*.parquet"):
                path.unlink(missing_ok=True)
        lake.cleaned.add(merge_id)
