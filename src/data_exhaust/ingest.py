"""Storing telemetry: API batches (:class:`Ingestor`) and bulk files (:func:`ingest_file`).

Nothing is ever dropped: valid events go to the lake's raw segments, invalid ones to its
quarantine with their errors, and both are fsync'd before :meth:`Ingestor.ingest` answers.
An ``ingest`` key may only store events of its own channels (an admin key, any channel).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from data_exhaust.api.errors import ApiError
from data_exhaust.event_lines import EVENTS_SUFFIX, event_line
from data_exhaust.heap import freeze_heap, keep_freed_memory
from data_exhaust.lake import Lake
from data_exhaust.telemetry import EVENTS_HINT, check_event

if TYPE_CHECKING:  # SQLAlchemy is imported where used: ingest_file's worker processes start
    from sqlalchemy import Engine  # faster without it

log = structlog.get_logger(__name__)


@dataclass
class IngestResult:
    """The answer to one batch. ``rejected`` items are ``{"index", "mid", "errors"}``."""

    accepted: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicate_batch: bool = False


@dataclass
class SplitBatch:
    """A batch's events sorted out: the raw segment lines of the valid ones
    (:func:`~data_exhaust.event_lines.event_line`), the answer's rejections
    (``{"index", "mid", "errors"}``) and the quarantine's records."""

    encoded: bytes
    accepted: int
    rejected: list[dict[str, Any]]
    bad: list[dict[str, Any]]


def split_events(events: list[Any], channels: Collection[str] | None = None) -> SplitBatch:
    """Check and encode a list of events as raw segment lines, one at a time.

    With ``channels``, an event of another channel is rejected: a key may only write
    telemetry for the tenants it is bound to. ``events`` is emptied as it is read (each item
    set to None once its line is encoded), so that the next event takes the memory the last
    one freed while it is still in the CPU's caches: a batch of 1,000 took 27-31 µs of CPU
    per event that way, against 38-42 µs when every event and row stayed alive until the
    whole batch was encoded (bench/HISTORY.md, tenth sitting).
    """
    lines: list[bytes] = []
    rejected: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        events[index] = None
        errors, canonical = check_event(event)
        if canonical is not None:
            channel = event["context"]["channel"]
            if channels is None or channel in channels:
                lines.append(event_line(event, canonical))
                continue
            errors = [f"context.channel '{channel}' is not allowed for this API key"]
        mid = event.get("mid") if isinstance(event, dict) else None
        rejected.append(
            {"index": index, "mid": mid if isinstance(mid, str) else None, "errors": errors}
        )
        bad.append({"index": index, "errors": errors, "event": event})
    return SplitBatch(b"".join(lines), len(lines), rejected, bad)


class Ingestor:
    """Stores telemetry batches from the API, acknowledging a retried ``msgid`` only once.

    Order matters for crash safety: events are made durable first and the ``msgid`` recorded
    after. A crash in between only means a retried batch is stored again, which the lake's
    query-time dedup on ``(mid, event_key)`` makes invisible; the reverse order could
    acknowledge a batch that was never stored.
    """

    def __init__(self, lake: Lake, engine: Engine) -> None:
        self.lake = lake
        self.engine = engine

    @staticmethod
    def parse(raw: bytes) -> dict[str, Any]:
        """An API request body as a batch object, or a ``CLIENT_ERROR`` saying how to fix it."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            message = f"the request body is not valid JSON ({exc}); {EVENTS_HINT}"
            raise ApiError("CLIENT_ERROR", message) from None
        if not isinstance(body, dict):
            raise ApiError("CLIENT_ERROR", EVENTS_HINT)
        return body

    def ingest(
        self, body: dict[str, Any], channels: Collection[str] | None = None, *,
        consume: bool = False,
    ) -> IngestResult:  # fmt: skip
        """Store one API batch; ``channels`` limits the tenants its events may belong to.

        ``consume=True`` lets it empty ``body["events"]`` as it goes (:func:`split_events`),
        for a body no one reads afterwards (the API's, just parsed): it takes a quarter off
        the batch's CPU. Otherwise the caller's list is left as it was."""
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise ApiError("CLIENT_ERROR", EVENTS_HINT)
        events = events if consume else list(events)
        params = body.get("params")
        msgid = params.get("msgid") if isinstance(params, dict) else None
        msgid = msgid if isinstance(msgid, str) and msgid else None
        if msgid is not None and (seen := self._recorded(msgid)) is not None:
            # The retry carries the same events: re-validating (nothing stored) re-lists the
            # rejected ones, which the table does not keep.
            rejected = split_events(events, channels).rejected
            log.info("telemetry.duplicate_batch", msgid=msgid, accepted=seen)
            return IngestResult(seen, rejected, duplicate_batch=True)
        split = split_events(events, channels)
        self.lake.append_encoded(split.encoded, EVENTS_SUFFIX)
        if split.bad:
            self.lake.quarantine([{**item, "source": "api", "msgid": msgid} for item in split.bad])
        if msgid is not None:
            self._record(msgid, split.accepted, len(split.rejected))
        log.info(
            "telemetry.ingested", msgid=msgid, accepted=split.accepted,
            rejected=len(split.rejected),
        )  # fmt: skip
        return IngestResult(split.accepted, split.rejected)

    def _recorded(self, msgid: str) -> int | None:
        """How many events the batch ``msgid`` had accepted, or None if it is new. Core, not
        an ORM session: with the record below, 231-339 µs of CPU per batch against 712-1,044
        (bench/HISTORY.md, fourteenth sitting)."""
        from sqlalchemy import select

        from data_exhaust.models import TELEMETRY_BATCHES as BATCHES

        with self.engine.connect() as connection:
            query = select(BATCHES.c.accepted).where(BATCHES.c.msgid == msgid)
            accepted: int | None = connection.execute(query).scalar_one_or_none()
            return accepted

    def _record(self, msgid: str, accepted: int, rejected: int) -> None:
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError

        from data_exhaust.models import TELEMETRY_BATCHES as BATCHES

        row = {"msgid": msgid, "accepted": accepted, "rejected": rejected,
               "received_at": datetime.now(UTC)}  # fmt: skip
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(BATCHES), row)
        except IntegrityError:  # a concurrent retry of the same batch recorded it first
            log.info("telemetry.batch_recorded_concurrently", msgid=msgid)


@dataclass
class FileIngest:
    """Counts of one ``exhaust ingest FILE`` run."""

    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    bytes_read: int = 0


ProgressCallback = Callable[[int, int], None]
_worker_lake: Lake | None = None


def _line_events(line: bytes, number: int) -> Iterator[tuple[object, dict[str, Any]]]:
    """(event, where-from) pairs of one line: an event, or a whole batch with ``events``."""
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        yield None, {"line": number, "errors": [f"line {number}: not valid JSON ({exc})"]}
        return
    if isinstance(parsed, dict) and isinstance(parsed.get("events"), list):
        for index, event in enumerate(parsed["events"]):
            yield event, {"line": number, "index": index}
    else:
        yield parsed, {"line": number}


def _ingest_blob(lake: Lake, blob: bytes, first_line: int, source: str) -> tuple[int, int]:
    """Store the lines of ``blob`` (line ``first_line`` onwards); (accepted, rejected)."""
    encoded: list[bytes] = []
    bad: list[dict[str, Any]] = []
    for number, line in enumerate(blob.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        for event, where in _line_events(line, number):
            if "errors" in where:  # the line itself is not JSON: keep its text
                bad.append({**where, "source": source, "text": line.decode("utf-8", "replace")})
                continue
            errors, canonical = check_event(event)
            if canonical is not None:
                encoded.append(event_line(event, canonical))  # type: ignore[arg-type]
            else:
                errors = [f"line {number}: {message}" for message in errors]
                bad.append({**where, "source": source, "errors": errors, "event": event})
    lake.append_encoded(b"".join(encoded), EVENTS_SUFFIX)
    lake.quarantine(bad)
    return len(encoded), len(bad)


def _worker_start(root: str, segment_bytes: int) -> None:
    global _worker_lake
    _worker_lake = Lake(Path(root), segment_bytes=segment_bytes)
    keep_freed_memory()
    freeze_heap()


def _worker_ingest(chunk: Chunk, source: str) -> tuple[int, int]:
    assert _worker_lake is not None
    return _ingest_blob(_worker_lake, chunk.read(source), chunk.first_line, source)


class FileChanged(Exception):
    """The file being ingested got shorter while worker processes were reading it."""


#: The bytes of a file a chunk takes at least, up to the end of the line they end in: ~5,000
#: of the suite's 1.4 KB events.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    """Consecutive whole lines of a file: ``size`` bytes from byte ``start``, the first of
    them line ``first_line`` (1-based) of the file."""

    start: int
    size: int
    first_line: int
    lines: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def read(self, path: str | Path) -> bytes:
        """The chunk's bytes, read again from ``path`` (by a worker process: sending them
        through a pipe cost ~10 % of a bulk ingest's CPU)."""
        with open(path, "rb") as handle:
            handle.seek(self.start)
            blob = handle.read(self.size)
        if len(blob) != self.size:
            raise FileChanged(
                f"{path} got shorter while it was ingested; the lines before byte "
                f"{self.start:,} are stored. Ingest a finished file (events stored twice are "
                "exported once)"
            )
        return blob


def _chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[Chunk, bytes]]:
    """Consecutive chunks of whole lines with their bytes (the last line may lack its
    newline); each line is counted, blank ones included, so numbers are the file's."""
    start, first = 0, 1
    with open(path, "rb") as handle:
        while blob := handle.read(chunk_bytes):
            if not blob.endswith(b"\n"):
                blob += handle.readline()  # to the end of the line (or of the file)
            lines = blob.count(b"\n") + (not blob.endswith(b"\n"))
            yield Chunk(start, len(blob), first, lines), blob
            start, first = start + len(blob), first + lines


def ingest_file(
    path: str | Path,
    lake: Lake,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> FileIngest:
    """Stream a JSON-lines file into ``lake`` in chunks, never holding the whole file.

    Each line is one event or one whole batch object (``{"events": [...]}``). Bad lines are
    quarantined with their 1-based line numbers. ``on_progress(bytes_read, events_accepted)``
    is called after each chunk is durable, so a progress bar never runs ahead of the data.

    Parsing and validation are CPU-bound, so big files are spread over ``workers`` processes
    (default: up to 4, one per core; 1 under 64 MB, where starting them costs more). Each
    worker appends to its own segments, which is what the lake is designed for, and reads its
    chunks (of ``chunk_bytes``, to the end of a line) from the file itself; at most two chunks
    per worker are in flight, so memory stays bounded.
    """
    path = Path(path)
    if workers is None:
        small = path.stat().st_size < 64 * 1024 * 1024
        workers = 1 if small else max(1, min(os.cpu_count() or 1, 4))
    counts = FileIngest()
    chunks = _chunks(path, chunk_bytes)
    if workers == 1:
        for chunk, blob in chunks:
            done = _ingest_blob(lake, blob, chunk.first_line, str(path))
            _count(counts, done, chunk, on_progress)
    else:
        _ingest_parallel(lake, path, chunks, workers, counts, on_progress)
    log.info(
        "telemetry.file_ingested", lines=counts.lines, accepted=counts.accepted,
        rejected=counts.rejected, workers=workers,
    )  # fmt: skip
    return counts


def _count(
    counts: FileIngest, done: tuple[int, int], chunk: Chunk, on_progress: ProgressCallback | None
) -> None:
    counts.accepted += done[0]
    counts.rejected += done[1]
    counts.lines += chunk.lines
    counts.bytes_read = chunk.end
    if on_progress is not None:
        on_progress(chunk.end, counts.accepted)


def _ingest_parallel(
    lake: Lake, path: Path, chunks: Iterator[tuple[Chunk, bytes]], workers: int,
    counts: FileIngest, on_progress: ProgressCallback | None,
) -> None:  # fmt: skip
    """Each worker reads its chunks from the file itself: only their places are sent."""
    # "spawn": forking a process that may run DuckDB or SQLAlchemy threads is unsafe.
    context = multiprocessing.get_context("spawn")
    initargs = (str(lake.root), lake.segment_bytes)
    pending: deque[tuple[Future[tuple[int, int]], Chunk]] = deque()
    with ProcessPoolExecutor(workers, context, _worker_start, initargs) as pool:
        for chunk, _ in chunks:
            pending.append((pool.submit(_worker_ingest, chunk, str(path)), chunk))
            while len(pending) >= 2 * workers or (pending and pending[0][0].done()):
                done, at = pending.popleft()
                _count(counts, done.result(), at, on_progress)
        while pending:
            done, at = pending.popleft()
            _count(counts, done.result(), at, on_progress)
