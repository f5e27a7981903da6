"""Telemetry events: validate v3 events and flatten them into lake rows (see ingest.py).

The ingest path has to keep up with tens of thousands of events per second on one core, so the
validation is plain Python over dicts (no schema library per event) and every event is
serialised exactly once: its canonical JSON (sorted keys, compact, via orjson) is both the
``event`` column and the input of ``event_hash``, so the hash can be re-checked from the stored
row and duplicates (a retried batch) compare equal whatever key order the client used.

"""

from __future__ import annotations

import json
import re
from datetime import date
from hashlib import sha256
from typing import TYPE_CHECKING, Any

import orjson
import structlog

if TYPE_CHECKING:  # SQLAlchemy is imported where used: ingest_file's worker processes start
    pass

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
        if cdata is not None:  # plain loops: all() over a generator costs ~1 µs a call
            if type(cdata) is not list:
                return False
            for c in cdata:
                kind, ident = c["type"], c["id"]
                if not (type(kind) is str and kind and type(ident) is str and ident):
                    return False
        if obj is not None and not (
            type(obj["id"]) is str and obj["id"] and type(obj["type"]) is str and obj["type"]
        ):
            return False
        if tags is not None:
            if type(tags) is not list:
                return False
            for tag in tags:
                if type(tag) is not str:
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
    if b"e-" in out and _SHORT_EXPONENT.search(out):  # `in` first: far cheaper than a regex
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


def conversation_of(context: dict[str, Any], rollup: dict[str, Any]) -> str | None:
    """The conversation of an event: its ``cdata`` entry of type conversation (any case),
    else ``rollup.l2``."""
    for entry in context.get("cdata") or ():
        if isinstance(entry, dict) and str(entry.get("type", "")).lower() == "conversation":
            return _str(entry.get("id"))
    return _str(rollup.get("l2"))


_DAYS: dict[int, str] = {}


def utc_day(ets: int) -> str:
    """``YYYY-MM-DD`` of epoch milliseconds, in UTC (the lake's partition)."""
    day = ets // DAY_MS
    text = _DAYS.get(day)
    if text is None:
        text = _DAYS[day] = date.fromordinal(EPOCH_ORDINAL + day).isoformat()
    return text


def flatten(event: dict[str, Any], canonical: bytes | None = None) -> dict[str, Any]:
    """One raw segment line (the columns of :data:`data_exhaust.lake.RAW_COLUMNS`).

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
        "conversation_id": conversation_of(context, rollup),
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
        "date": utc_day(ets),
    }
