"""Telemetry ingest: validate v3 events, flatten them into lake rows, store them durably.

The ingest path has to keep up with tens of thousands of events per second on one core, so the
validation is plain Python over dicts (no schema library per event) and every event is
serialised exactly once: its canonical JSON (sorted keys, compact, via orjson) is both the
``event`` column and the input of ``event_hash``, so the hash can be re-checked from the stored
row and duplicates (a retried batch) compare equal whatever key order the client used.

Nothing is ever dropped: valid events go to the lake's raw segments, invalid ones to its
quarantine with their errors, and both are fsync'd before :meth:`Ingestor.ingest` answers.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from data_exhaust.api.errors import ApiError
from data_exhaust.lake import Lake

if TYPE_CHECKING:  # SQLAlchemy is imported where used: ingest_file's worker processes start
    from sqlalchemy import Engine  # faster without it

    from data_exhaust.models import TelemetryBatch

log = structlog.get_logger(__name__)

MAX_EVENT_BYTES = 1024 * 1024
VERSIONS = ("3.0", "3.1")
SECONDS_LIMIT = 10**11  # below: epoch seconds (year 5138 in ms is 10**14)
MICROS_LIMIT = 10**14
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
DAY_MS = 86_400_000
# orjson writes "1e-7" where json.dumps writes "1e-07": such output is redone with json.
_SHORT_EXPONENT = re.compile(rb"\de-\d")

EVENTS_HINT = (
    'the request body must be a JSON object with an "events" array, e.g. '
    '{"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": "..."}, "events": [...]}'
)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nonempty_str(obj: dict[str, Any], key: str, path: str, errors: list[str]) -> None:
    value = obj.get(key)
    if value is None:
        errors.append(f"{path} is required")
    elif not isinstance(value, str) or not value:
        errors.append(f"{path} must be a non-empty string")


def _object(obj: dict[str, Any], key: str, path: str, errors: list[str]) -> dict[str, Any] | None:
    """``obj[key]`` when it is an object; otherwise records why not (required) and gives None."""
    value = obj.get(key)
    if isinstance(value, dict):
        return value
    errors.append(f"{path} is required" if value is None else f"{path} must be an object")
    return None


def _check_header(event: dict[str, Any], errors: list[str]) -> None:
    eid = event.get("eid")
    _nonempty_str(event, "eid", "eid", errors)
    if isinstance(eid, str) and eid and eid != eid.upper():
        errors.append(f"eid must be upper-case (got {eid!r})")
    ets = event.get("ets")
    if ets is None:
        errors.append("ets is required")
    elif not _is_number(ets):
        errors.append("ets must be a number (epoch milliseconds)")
    elif ets < SECONDS_LIMIT:
        errors.append(f"ets must be epoch milliseconds (got {ets}, which looks like seconds)")
    elif ets >= MICROS_LIMIT:
        errors.append(f"ets must be epoch milliseconds (got {ets}, which looks like microseconds)")
    ver = event.get("ver")
    if ver is None:
        errors.append("ver is required")
    elif ver not in VERSIONS:
        errors.append(f'ver must be "3.0" or "3.1" (got {ver!r})')
    _nonempty_str(event, "mid", "mid", errors)


def _check_context(event: dict[str, Any], errors: list[str]) -> None:
    context = _object(event, "context", "context", errors)
    if context is None:
        return
    _nonempty_str(context, "channel", "context.channel", errors)
    env = context.get("env")
    if env is None:
        errors.append("context.env is required")
    elif not isinstance(env, str):
        errors.append("context.env must be a string")
    pdata = _object(context, "pdata", "context.pdata", errors)
    if pdata is not None:
        _nonempty_str(pdata, "id", "context.pdata.id", errors)
    for key in ("sid", "did"):
        if context.get(key) is not None and not isinstance(context[key], str):
            errors.append(f"context.{key} must be a string")
    cdata = context.get("cdata")
    if cdata is not None:
        if not isinstance(cdata, list):
            errors.append("context.cdata must be an array of {type, id} objects")
        else:
            for i, entry in enumerate(cdata):
                if not isinstance(entry, dict):
                    errors.append(f"context.cdata[{i}] must be an object with type and id")
                    continue
                _nonempty_str(entry, "type", f"context.cdata[{i}].type", errors)
                _nonempty_str(entry, "id", f"context.cdata[{i}].id", errors)
    if context.get("rollup") is not None and not isinstance(context["rollup"], dict):
        errors.append("context.rollup must be an object")


def _check_body(event: dict[str, Any], errors: list[str]) -> None:
    actor = _object(event, "actor", "actor", errors)
    if actor is not None:
        _nonempty_str(actor, "id", "actor.id", errors)
        _nonempty_str(actor, "type", "actor.type", errors)
    edata = _object(event, "edata", "edata", errors)
    if event.get("object") is not None:
        obj = _object(event, "object", "object", errors)
        if obj is not None:
            _nonempty_str(obj, "id", "object.id", errors)
            _nonempty_str(obj, "type", "object.type", errors)
    tags = event.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        errors.append("tags must be an array of strings")
    if edata is not None and event.get("eid") == "ASSESS":
        _check_assess(edata, errors)


def _check_assess(edata: dict[str, Any], errors: list[str]) -> None:
    item = _object(edata, "item", "edata.item", errors)
    if item is not None:
        item_id = item.get("id")
        if item_id is None:
            errors.append("edata.item.id is required")
        elif not (isinstance(item_id, str) and item_id) and not _is_number(item_id):
            errors.append("edata.item.id must be a non-empty string")
    resvalues = edata.get("resvalues")
    if resvalues is None:
        errors.append("edata.resvalues is required")
    elif not isinstance(resvalues, list):
        errors.append("edata.resvalues must be an array")
    for key in ("duration", "score"):
        if edata.get(key) is None:
            errors.append(f"edata.{key} is required")
        elif not _is_number(edata[key]):
            errors.append(f"edata.{key} must be a number")
    if "pass" not in edata:
        errors.append("edata.pass is required")


def _quick_valid(e: dict[str, Any]) -> bool:
    """True only for a valid event, in one pass with no allocation (the hot path).

    False means "not sure": the full checks then run to find and explain the errors. A wrong
    True would be a bug, so the unit tests send every invalid case through this path.
    """
    try:
        eid, ets, mid, ctx, actor, edata = (
            e["eid"],
            e["ets"],
            e["mid"],
            e["context"],
            e["actor"],
            e["edata"],
        )
        if not (
            type(eid) is str
            and eid
            and eid == eid.upper()
            and type(mid) is str
            and mid
            and type(ets) is int
            and SECONDS_LIMIT <= ets < MICROS_LIMIT
            and e.get("ver") in VERSIONS
            and type(ctx) is dict
            and type(actor) is dict
            and type(edata) is dict
        ):
            return False
        pdata, channel, env = ctx["pdata"], ctx["channel"], ctx["env"]
        if not (
            type(channel) is str
            and channel
            and type(env) is str
            and type(pdata) is dict
            and type(pdata["id"]) is str
            and pdata["id"]
            and type(actor["id"]) is str
            and actor["id"]
            and type(actor["type"]) is str
            and actor["type"]
            and type(ctx.get("sid", "")) in (str, type(None))
            and type(ctx.get("did", "")) in (str, type(None))
            and type(ctx.get("rollup", {})) in (dict, type(None))
        ):
            return False
        cdata, obj, tags = ctx.get("cdata", ()), e.get("object"), e.get("tags", ())
        if cdata is not None and not (
            type(cdata) is list
            and all(
                type(c["type"]) is str and c["type"] and type(c["id"]) is str and c["id"]
                for c in cdata
            )
        ):
            return False
        if obj is not None and not (
            type(obj["id"]) is str and obj["id"] and type(obj["type"]) is str and obj["type"]
        ):
            return False
        if tags is not None and not (type(tags) is list and all(type(t) is str for t in tags)):
            return False
        if eid != "ASSESS":
            return True
        item, duration, score = edata["item"], edata["duration"], edata["score"]
        return (
            type(item["id"]) is str
            and item["id"] != ""
            and type(edata["resvalues"]) is list
            and type(duration) in (int, float)
            and type(score) in (int, float)
            and "pass" in edata
        )
    except (KeyError, TypeError, IndexError):
        return False


def check_event(event: object) -> tuple[list[str], bytes | None]:
    """The errors of ``event`` and, when it is valid, its canonical JSON (to be reused)."""
    if not isinstance(event, dict):
        return ["event must be a JSON object"], None
    if not _quick_valid(event):
        errors: list[str] = []
        _check_header(event, errors)
        _check_context(event, errors)
        _check_body(event, errors)
        if errors:
            return errors, None
    try:
        canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return [f"event is not serialisable as JSON ({exc})"], None
    if len(canonical) > MAX_EVENT_BYTES:
        size = len(canonical)
        return [f"event is {size:,} bytes as JSON; the limit is 1 MB ({MAX_EVENT_BYTES:,})"], None
    return [], canonical


def validate_event(event: object) -> list[str]:
    """Every way ``event`` breaks the telemetry v3 rules (datasets.md §1); empty when valid.

    Messages name the field path (``context.channel is required``) so a client can fix its
    emitter from the ingest answer alone. Booleans are not numbers (``True`` is an ``int`` in
    Python, a classic way for ``"ets": true`` to slip through).
    """
    return check_event(event)[0]


def compact_json(value: object) -> str | None:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, at orjson's speed."""
    if value is None:
        return None
    try:
        out = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if _SHORT_EXPONENT.search(out):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return out.decode()


def _str(value: object) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _float(value: object) -> float | None:
    kind = type(value)
    return float(value) if kind is float or kind is int else None  # type: ignore[arg-type]


def _numeric(value: object) -> float | None:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return _float(value)


def _eof(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def _conversation(context: dict[str, Any], rollup: dict[str, Any]) -> str | None:
    for entry in context.get("cdata") or ():
        if isinstance(entry, dict) and str(entry.get("type", "")).lower() == "conversation":
            return _str(entry.get("id"))
    return _str(rollup.get("l2"))


_DAYS: dict[int, str] = {}


def _utc_day(ets: int) -> str:
    day = ets // DAY_MS
    text = _DAYS.get(day)
    if text is None:
        text = _DAYS[day] = date.fromordinal(EPOCH_ORDINAL + day).isoformat()
    return text


def flatten(event: dict[str, Any], canonical: bytes | None = None) -> dict[str, Any]:
    """One lake row (the lake's column contract; see :data:`data_exhaust.lake.COLUMNS`).

    ``event`` must be valid. String columns holding a non-string JSON value (a numeric question
    id, a numeric ``did``) get ``str(value)``; number columns take only JSON numbers, except
    ``max_score`` which also accepts a numeric string. ``canonical`` is the sorted compact JSON
    when the caller already has it (``check_event`` gives it), to avoid serialising twice.
    This runs once per event on the ingest path, hence the flat, call-light style.
    """
    if canonical is None:
        canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    get = event.get
    context: dict[str, Any] = get("context") or {}
    rollup: dict[str, Any] = context.get("rollup") or {}
    actor: dict[str, Any] = get("actor") or {}
    edata: dict[str, Any] = get("edata") or {}
    item = edata.get("item")
    item = item if type(item) is dict else {}
    ets = int(event["ets"])
    did = context.get("did")
    actor_id = _str(actor.get("id"))
    params, resvalues, l4 = item.get("params"), edata.get("resvalues"), rollup.get("l4")
    return {
        "eid": event["eid"],
        "ets": ets,
        "mid": event["mid"],
        "channel": context.get("channel"),
        "pdata_id": _str((context.get("pdata") or {}).get("id")),
        "conversation_id": _conversation(context, rollup),
        "device_id": actor_id if did is None else _str(did),
        "session_id": _str(context.get("sid")),
        "actor_id": actor_id,
        "item_id": _str(item.get("id")),
        "item_type": _str(item.get("type")),
        "item_title": _str(item.get("title")),
        "item_desc": _str(item.get("desc")),
        "duration": _float(edata.get("duration")),
        "score": _float(edata.get("score")),
        "max_score": _numeric(item.get("maxscore")),
        "options": None if params is None else compact_json(params),
        "response": None if resvalues is None else compact_json(resvalues),
        "xpath": _str(rollup.get("l3")),
        "eof": l4 if l4 == "true" or l4 == "false" else _eof(l4),
        "event_hash": sha256(canonical).hexdigest(),
        "event": canonical.decode(),
        "date": _utc_day(ets),
    }


@dataclass
class IngestResult:
    """The answer to one batch. ``rejected`` items are ``{"index", "mid", "errors"}``."""

    accepted: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicate_batch: bool = False


def split_events(
    events: list[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(lake rows, rejections for the answer, quarantine records) of a list of events."""
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        errors, canonical = check_event(event)
        if canonical is not None:
            rows.append(flatten(event, canonical))
            continue
        mid = event.get("mid") if isinstance(event, dict) else None
        rejected.append(
            {"index": index, "mid": mid if isinstance(mid, str) else None, "errors": errors}
        )
        bad.append({"index": index, "errors": errors, "event": event})
    return rows, rejected, bad


class Ingestor:
    """Stores telemetry batches from the API, acknowledging a retried ``msgid`` only once.

    Order matters for crash safety: events are made durable first and the ``msgid`` recorded
    after. A crash in between only means a retried batch is stored again, which the lake's
    query-time dedup on ``(mid, event_hash)`` makes invisible; the reverse order could
    acknowledge a batch that was never stored.
    """

    def __init__(self, lake: Lake, engine: Engine) -> None:
        self.lake = lake
        self.engine = engine

    def ingest(self, body: dict[str, Any]) -> IngestResult:
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise ApiError("CLIENT_ERROR", EVENTS_HINT)
        params = body.get("params")
        msgid = params.get("msgid") if isinstance(params, dict) else None
        msgid = msgid if isinstance(msgid, str) and msgid else None
        if msgid is not None and (seen := self._recorded(msgid)) is not None:
            # The retry carries the same events: re-validating (nothing stored) re-lists the
            # rejected ones, which the table does not keep.
            _, rejected, _ = split_events(events)
            log.info("telemetry.duplicate_batch", msgid=msgid, accepted=seen.accepted)
            return IngestResult(seen.accepted, rejected, duplicate_batch=True)
        rows, rejected, bad = split_events(events)
        self.lake.append(rows)
        if bad:
            self.lake.quarantine([{**item, "source": "api", "msgid": msgid} for item in bad])
        if msgid is not None:
            self._record(msgid, len(rows), len(rejected))
        log.info("telemetry.ingested", msgid=msgid, accepted=len(rows), rejected=len(rejected))
        return IngestResult(len(rows), rejected)

    def _recorded(self, msgid: str) -> TelemetryBatch | None:
        from sqlalchemy.orm import Session

        from data_exhaust.models import TelemetryBatch

        with Session(self.engine) as session:
            return session.get(TelemetryBatch, msgid)

    def _record(self, msgid: str, accepted: int, rejected: int) -> None:
        from sqlalchemy.exc import IntegrityError
        from sqlalchemy.orm import Session

        from data_exhaust.models import TelemetryBatch

        batch = TelemetryBatch(
            msgid=msgid, accepted=accepted, rejected=rejected, received_at=datetime.now(UTC)
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(batch)
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
    rows: list[dict[str, Any]] = []
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
                rows.append(flatten(event, canonical))  # type: ignore[arg-type]
            else:
                errors = [f"line {number}: {message}" for message in errors]
                bad.append({**where, "source": source, "errors": errors, "event": event})
    lake.append(rows)
    lake.quarantine(bad)
    return len(rows), len(bad)


def _worker_start(root: str, segment_bytes: int) -> None:
    global _worker_lake
    _worker_lake = Lake(Path(root), segment_bytes=segment_bytes)


def _worker_ingest(blob: bytes, first_line: int, source: str) -> tuple[int, int]:
    assert _worker_lake is not None
    return _ingest_blob(_worker_lake, blob, first_line, source)


def _chunks(path: Path, chunk_lines: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(blob, first line number, line count, bytes read so far) for consecutive chunks."""
    bytes_read, first = 0, 1
    with open(path, "rb") as handle:
        while lines := list(itertools.islice(handle, chunk_lines)):
            blob = b"".join(lines)
            bytes_read += len(blob)
            yield blob, first, len(lines), bytes_read
            first += len(lines)


def ingest_file(
    path: str | Path,
    lake: Lake,
    *,
    chunk_events: int = 5000,
    on_progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> FileIngest:
    """Stream a JSON-lines file into ``lake`` in chunks, never holding the whole file.

    Each line is one event or one whole batch object (``{"events": [...]}``). Bad lines are
    quarantined with their 1-based line numbers. ``on_progress(bytes_read, events_accepted)``
    is called after each chunk is durable, so a progress bar never runs ahead of the data.

    Parsing and validation are CPU-bound, so big files are spread over ``workers`` processes
    (default: up to 4, one per core; 1 under 64 MB, where starting them costs more). Each
    worker appends to its own segments, which is what the lake is designed for; at most two
    chunks per worker are in flight, so memory stays bounded.
    """
    path = Path(path)
    if workers is None:
        small = path.stat().st_size < 64 * 1024 * 1024
        workers = 1 if small else max(1, min(os.cpu_count() or 1, 4))
    counts = FileIngest()
    chunks = _chunks(path, chunk_events)
    if workers == 1:
        for blob, first, lines, bytes_read in chunks:
            done = _ingest_blob(lake, blob, first, str(path))
            _count(counts, done, lines, bytes_read, on_progress)
    else:
        _ingest_parallel(lake, path, chunks, workers, counts, on_progress)
    log.info(
        "telemetry.file_ingested", lines=counts.lines, accepted=counts.accepted,
        rejected=counts.rejected, workers=workers,
    )  # fmt: skip
    return counts


def _count(
    counts: FileIngest, done: tuple[int, int], lines: int, bytes_read: int,
    on_progress: ProgressCallback | None,
) -> None:  # fmt: skip
    counts.accepted += done[0]
    counts.rejected += done[1]
    counts.lines += lines
    counts.bytes_read = bytes_read
    if on_progress is not None:
        on_progress(bytes_read, counts.accepted)


def _ingest_parallel(
    lake: Lake, path: Path, chunks: Iterator[tuple[bytes, int, int, int]], workers: int,
    counts: FileIngest, on_progress: ProgressCallback | None,
) -> None:  # fmt: skip
    # "spawn": forking a process that may run DuckDB or SQLAlchemy threads is unsafe.
    context = multiprocessing.get_context("spawn")
    initargs = (str(lake.root), lake.segment_bytes)
    pending: deque[tuple[Future[tuple[int, int]], int, int]] = deque()
    with ProcessPoolExecutor(workers, context, _worker_start, initargs) as pool:
        for blob, first, lines, bytes_read in chunks:
            future = pool.submit(_worker_ingest, blob, first, str(path))
            pending.append((future, lines, bytes_read))
            while len(pending) >= 2 * workers or (pending and pending[0][0].done()):
                done, n, at = pending.popleft()
                _count(counts, done.result(), n, at, on_progress)
        while pending:
            done, n, at = pending.popleft()
            _count(counts, done.result(), n, at, on_progress)
