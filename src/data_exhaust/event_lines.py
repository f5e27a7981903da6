"""Raw segment lines of checked events, and the SQL that reads them as lake rows.

Since the fourteenth benchmark sitting the ingest writes, for each accepted event, one line of
six tab-separated fields instead of the lake's flattened row as JSON::

    event_hash  keys  options  response  extra  event

``keys`` is a small JSON object of the columns queries filter on (``eid``, ``ets``, ``mid``,
``channel``, ``conversation_id``, ``date``, as ``flatten`` makes them): a query over raw
segments tests them before DuckDB parses the event, which only the rows that pass need.
``event`` is the canonical JSON (:func:`data_exhaust.telemetry.check_event`), ``event_hash``
its SHA-256, ``options`` and ``response`` the compact JSON of ``edata.item.params`` and
``edata.resvalues`` as :func:`~data_exhaust.telemetry.flatten` makes them (Python's
formatting, the client's key order), empty when absent. DuckDB extracts every other column
from ``event`` with one ``json_extract`` per line (:func:`events_scan`), at compaction and
in queries over segments not yet compacted. Where an event holds a value that SQL would turn
into text differently from ``flatten`` (a float, a boolean or an object in a text column, an
``eof`` or ``maxscore`` string), ``extra`` carries ``flatten``'s
own values of those columns (:data:`HARD`) as JSON; it is empty otherwise. None of the
fields can hold a tab or a newline: JSON escapes them and the hash is hex.

Measured on the bench's events (``python -m bench.raw_events``): 43 µs of CPU per event at
ingest and 26 at compaction with the flattened rows, 24 and 33 with these lines.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

import orjson

from data_exhaust.telemetry import compact_json, conversation_of, flatten, utc_day

#: Suffix of a raw segment of event lines (segments of flattened rows end in ``.jsonl``).
EVENTS_SUFFIX = ".events"
#: Columns whose value ``extra`` carries when the event's own would not extract the same.
HARD = ("item_id", "item_type", "item_title", "item_desc", "max_score", "xpath", "eof")
_INT64 = 2**63
_PATHS = (
    "$.context.pdata.id", "$.context.did", "$.actor.id", "$.context.sid", "$.edata.item.id",
    "$.edata.item.type", "$.edata.item.title", "$.edata.item.desc", "$.edata.duration",
    "$.edata.score", "$.edata.item.maxscore", "$.context.rollup.l3", "$.context.rollup.l4",
)  # fmt: skip


def _plain(value: object) -> bool:
    """Whether SQL's text of this JSON value equals ``flatten``'s ``str()`` of it."""
    kind = type(value)
    return value is None or kind is str or (isinstance(value, int) and kind is int
                                            and -_INT64 <= value < _INT64)  # fmt: skip


def _is_plain(event: dict[str, Any]) -> bool:
    """Whether every :data:`HARD` column of ``event`` extracts as ``flatten`` makes it."""
    rollup = event["context"].get("rollup") or {}
    edata = event["edata"]
    item = edata.get("item")
    item = item if type(item) is dict else {}
    l4, maxscore = rollup.get("l4"), item.get("maxscore")
    return (
        (l4 is None or type(l4) is bool or l4 == "true" or l4 == "false")
        and (maxscore is None or type(maxscore) in (int, float))
        and _plain(rollup.get("l3"))
        and _plain(item.get("id"))
        and _plain(item.get("type"))
        and _plain(item.get("title"))
        and _plain(item.get("desc"))
    )


def event_line(event: dict[str, Any], canonical: bytes) -> bytes:
    """The raw segment line of a valid ``event`` whose canonical JSON is ``canonical``."""
    edata = event["edata"]
    item = edata.get("item")
    params = item.get("params") if type(item) is dict else None
    resvalues = edata.get("resvalues")
    options = b"" if params is None else (compact_json(params) or "").encode()
    response = b"" if resvalues is None else (compact_json(resvalues) or "").encode()
    extra = b""
    if not _is_plain(event):
        row = flatten(event, canonical)
        extra = orjson.dumps({name: row[name] for name in HARD})
    context = event["context"]
    ets = int(event["ets"])
    keys = orjson.dumps({
        "eid": event["eid"], "ets": ets, "mid": event["mid"], "channel": context["channel"],
        "conversation_id": conversation_of(context, context.get("rollup") or {}),
        "date": utc_day(ets),
    })  # fmt: skip
    digest = sha256(canonical).hexdigest().encode()
    return b"%s\t%s\t%s\t%s\t%s\t%s\n" % (digest, keys, options, response, extra, canonical)


def _text(n: int) -> str:
    return f"(v[{n}] ->> '$')"


def _hard(name: str, sql: str) -> str:
    """``sql``, or the column's value from ``extra`` where the line has one."""
    value = f"CAST(extra -> '$.{name}' AS DOUBLE)" if name == "max_score" else (
        f"(extra ->> '$.{name}')"
    )  # fmt: skip
    return f"CASE WHEN extra IS NULL THEN {sql} ELSE {value} END"


_NUMBER = (
    "CASE WHEN json_type(v[{n}]) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN CAST(v[{n}] AS DOUBLE) END"
)
_KEYS = (
    'from_json(keys, \'{"eid": "VARCHAR", "ets": "BIGINT", "mid": "VARCHAR", '
    '"channel": "VARCHAR", "conversation_id": "VARCHAR", "date": "VARCHAR"}\')'
)
#: Each column of :data:`data_exhaust.lake.RAW_COLUMNS`, in order, from a line's fields,
#: ``k`` (its keys) and ``v`` (the values of :data:`_PATHS` in its event).
COLUMNS_SQL: dict[str, str] = {
    "eid": "k.eid", "ets": "k.ets", "mid": "k.mid", "channel": "k.channel",
    "pdata_id": _text(1), "conversation_id": "k.conversation_id",
    "device_id": f"coalesce({_text(2)}, {_text(3)})", "session_id": _text(4),
    "actor_id": _text(3), "item_id": _hard("item_id", _text(5)),
    "item_type": _hard("item_type", _text(6)), "item_title": _hard("item_title", _text(7)),
    "item_desc": _hard("item_desc", _text(8)), "duration": _NUMBER.format(n=9),
    "score": _NUMBER.format(n=10), "max_score": _hard("max_score", _NUMBER.format(n=11)),
    "options": "options", "response": "response", "xpath": _hard("xpath", _text(12)),
    "eof": _hard("eof", f"lower({_text(13)})"), "event_hash": "event_hash", "event": "event",
    "date": "k.date",
}  # fmt: skip
_FIELDS = ("event_hash", "keys", "options", "response", "extra", "event")
#: A line may be as long as a 1 MB event with its options and response beside it.
MAX_LINE_BYTES = 8 * 1024 * 1024


def events_scan(file_list: str) -> str:
    """A table expression of the lake's raw columns over segments of event lines
    (``file_list``, a DuckDB list of their paths). A torn last line (a crash mid-write, never
    acknowledged) has too few fields, or an event that is not whole JSON: it is skipped.
    Filters on the keys' columns run before the event is parsed (DuckDB pushes them below
    the projection that parses it)."""
    types = ", ".join(f"'{name}': 'VARCHAR'" for name in _FIELDS)
    select = ", ".join(f'{sql} AS "{name}"' for name, sql in COLUMNS_SQL.items())
    paths_sql = ", ".join(f"'{path}'" for path in _PATHS)
    read = (
        f"read_csv({file_list}, delim='\\t', quote='', escape='', header=false, "
        f"columns={{{types}}}, ignore_errors=true, max_line_size={MAX_LINE_BYTES})"
    )
    keyed = f"SELECT *, {_KEYS} AS k FROM {read}"
    parsed = f"SELECT *, try(json_extract(event, [{paths_sql}])) AS v FROM ({keyed})"
    return f"(SELECT {select} FROM ({parsed}) WHERE v IS NOT NULL)"
