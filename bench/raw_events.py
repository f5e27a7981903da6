"""Probe (not part of the suite): what an event costs, at ingest and at compaction, if raw
segments held the checked events instead of the lake's flattened rows.

``python -m bench.raw_events [--scale S] [--events N] [--runs R]`` takes the first ``N`` events
of the suite's data and, alternated over ``R`` rounds, times on one process:

* *rows* (today): ``check_event`` + ``flatten`` + the row's JSON line per event (CPU), then the
  compaction's own ``_sorted_days`` over a file of those lines (``read_json`` of the lake's
  columns → the day files: CPU of this process and DuckDB's threads);
* *events*: ``check_event`` + SHA-256 + a line of the hash and the canonical JSON per event,
  then the same ``_sorted_days`` over the columns extracted in SQL (:data:`EXTRACT`, one JSON
  parse per line) from a tab-separated read of those lines;
* *events+json*: the same with the options' and response's JSON made in Python
  (``compact_json``, exactly as the lake's rows have them) and written in the line.

It also counts the rows whose extracted columns differ from ``flatten``'s: :data:`EXTRACT`
follows ``flatten`` for valid events but formats some JSON values its own way (a number in a
string column, a float's exponent in the options' JSON), so it is a measure of cost, not a
drop-in replacement.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bench.data import dataset
from bench.ingest import read_lines
from data_exhaust.compaction import _sorted_days
from data_exhaust.lake import JSON_COLUMNS, RAW_COLUMNS, SELECT_LIST
from data_exhaust.telemetry import check_event, compact_json, flatten

PATHS = (
    "$.eid", "$.ets", "$.mid", "$.context.channel", "$.context.pdata.id", "$.context.cdata",
    "$.context.rollup.l2", "$.context.did", "$.actor.id", "$.context.sid", "$.edata.item.id",
    "$.edata.item.type", "$.edata.item.title", "$.edata.item.desc", "$.edata.duration",
    "$.edata.score", "$.edata.item.maxscore", "$.edata.item.params", "$.edata.resvalues",
    "$.context.rollup.l3", "$.context.rollup.l4",
)  # fmt: skip
_V = {path: f"v[{n}]" for n, path in enumerate(PATHS, start=1)}
_CONVERSATION = (
    f"coalesce(list_filter(from_json({_V['$.context.cdata']}, "
    '\'[{"type": "VARCHAR", "id": "VARCHAR"}]\'), '
    "lambda c: lower(c.type) = 'conversation')[1].id, "
    f"{_V['$.context.rollup.l2']} ->> '$')"
)
_COLUMNS = {
    "eid": "v[1] ->> '$'", "ets": "CAST(v[2] AS BIGINT)", "mid": "v[3] ->> '$'",
    "channel": "v[4] ->> '$'", "pdata_id": "v[5] ->> '$'", "conversation_id": _CONVERSATION,
    "device_id": "coalesce(v[8] ->> '$', v[9] ->> '$')", "session_id": "v[10] ->> '$'",
    "actor_id": "v[9] ->> '$'", "item_id": "v[11] ->> '$'", "item_type": "v[12] ->> '$'",
    "item_title": "v[13] ->> '$'", "item_desc": "v[14] ->> '$'",
    "duration": "TRY_CAST(v[15] AS DOUBLE)", "score": "TRY_CAST(v[16] AS DOUBLE)",
    "max_score": "TRY_CAST(v[17] ->> '$' AS DOUBLE)", "options": "CAST(v[18] AS VARCHAR)",
    "response": "CAST(v[19] AS VARCHAR)", "xpath": "v[20] ->> '$'", "eof": "v[21] ->> '$'",
    "event_hash": "event_hash", "event": "event",
    "date": "strftime(epoch_ms(CAST(v[2] AS BIGINT)), '%Y-%m-%d')",
}  # fmt: skip
assert list(_COLUMNS) == list(RAW_COLUMNS)


def extract(csv_columns: tuple[str, ...], made: tuple[str, ...] = ()) -> str:
    """The lake's raw columns from tab-separated lines of ``csv_columns`` (``event_hash``,
    ``event`` and the columns ``made`` in Python), ``{files}`` to replace."""
    columns = {name: (name if name in made else sql) for name, sql in _COLUMNS.items()}
    types = ", ".join(f"'{name}': 'VARCHAR'" for name in csv_columns)
    return (
        "SELECT " + ", ".join(f'{sql} AS "{name}"' for name, sql in columns.items())
        + f" FROM (SELECT {', '.join(csv_columns)}, json_extract(event, ["
        + ", ".join(f"'{path}'" for path in PATHS) + "]) AS v FROM read_csv({files}, "
        f"delim='\\t', quote='', escape='', header=false, columns={{{types}}}, "
        "ignore_errors=true))"
    )  # fmt: skip


#: ``hash<TAB>canonical JSON`` lines: every column but those two extracted by DuckDB.
EXTRACT = extract(("event_hash", "event"))
#: ``hash<TAB>options<TAB>response<TAB>canonical JSON``: the options' and response's JSON
#: made in Python (``compact_json``, as the lake's rows have them), the rest extracted.
EXTRACT_JSON_MADE = extract(("event_hash", "options", "response", "event"), ("options", "response"))


def row_lines(events: list[bytes]) -> tuple[bytes, float]:
    cpu = time.process_time()
    out = []
    for line in events:
        event = orjson.loads(line)
        canonical = check_event(event)[1]
        out.append(orjson.dumps(flatten(event, canonical), option=orjson.OPT_APPEND_NEWLINE))
    return b"".join(out), time.process_time() - cpu


def event_lines(events: list[bytes]) -> tuple[bytes, float]:
    cpu = time.process_time()
    out = []
    for line in events:
        canonical = check_event(orjson.loads(line))[1] or b"null"
        out.append(b"%s\t%s\n" % (sha256(canonical).hexdigest().encode(), canonical))
    return b"".join(out), time.process_time() - cpu


def event_json_lines(events: list[bytes]) -> tuple[bytes, float]:
    cpu = time.process_time()
    out = []
    for line in events:
        event = orjson.loads(line)
        canonical = check_event(event)[1] or b"null"
        edata: dict[str, Any] = event.get("edata") or {}
        item = edata.get("item")
        item = item if type(item) is dict else {}
        options, response = compact_json(item.get("params")), compact_json(edata.get("resvalues"))
        out.append(b"%s\t%s\t%s\t%s\n" % (
            sha256(canonical).hexdigest().encode(), (options or "").encode(),
            (response or "").encode(), canonical,
        ))  # fmt: skip
    return b"".join(out), time.process_time() - cpu


def compacted(scan: str, folder: Path) -> tuple[int, float]:
    folder.mkdir()
    cpu = time.process_time()
    with duckdb.connect() as con:
        _, count = _sorted_days(con, f"SELECT {SELECT_LIST} FROM ({scan}) AS raw", folder)
    return count, time.process_time() - cpu


def differing(rows_file: Path, events_file: Path, name: str) -> int:
    """Rows whose columns differ between ``flatten`` and the extraction (joined on the hash)."""
    a = f"read_json('{rows_file}', format='newline_delimited', columns={JSON_COLUMNS})"
    sql = EXTRACT if name == "events" else EXTRACT_JSON_MADE
    b = sql.replace("{files}", f"'{events_file}'")
    same = " AND ".join(f'a."{n}" IS NOT DISTINCT FROM b."{n}"' for n in RAW_COLUMNS)
    query = f"SELECT count(*) FROM ({a}) a JOIN ({b}) b USING (event_hash) WHERE NOT ({same})"
    with duckdb.connect() as con:
        row = con.execute(query).fetchone()
    return int(row[0]) if row else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--events", type=int, default=75_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    events = read_lines(dataset(args.scale).jsonl, args.events)
    work = Path(tempfile.mkdtemp(prefix="raw-events-"))
    found: dict[str, list[float]] = {}
    try:
        for n in range(args.runs):
            for name, make, scan in (
                ("rows", row_lines, "SELECT * FROM read_json('{f}', format='newline_delimited', "
                 f"columns={JSON_COLUMNS})"),
                ("events", event_lines, EXTRACT.replace("{files}", "'{f}'")),
                ("events+json", event_json_lines, EXTRACT_JSON_MADE.replace("{files}", "'{f}'")),
            ):  # fmt: skip
                data, ingest_cpu = make(events)
                path = work / f"{name}-{n}.lines"
                path.write_bytes(data)
                count, compact_cpu = compacted(scan.replace("{f}", str(path)), work / f"{name}-{n}")
                assert count == len(events), (name, count)
                found.setdefault(f"{name} ingest", []).append(ingest_cpu / count * 1e6)
                found.setdefault(f"{name} compaction", []).append(compact_cpu / count * 1e6)
        print(f"{len(events):,} events; µs of CPU per event, median (min-max) of {args.runs}:")
        for key, values in found.items():
            middle, low, high = statistics.median(values), min(values), max(values)
            print(f"  {key:20s} {middle:6.1f} ({low:.1f}-{high:.1f})")
        for name in ("events", "events+json"):
            print(f"rows differing from flatten's, {name}:",
                  differing(work / "rows-0.lines", work / f"{name}-0.lines", name))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
