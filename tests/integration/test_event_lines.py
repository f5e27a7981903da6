"""Raw segments of event lines read as the lake's rows, by real DuckDB: every column equal to
``flatten``'s, raw and after compaction, whatever shape the event's values take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from data_exhaust.event_lines import EVENTS_SUFFIX, event_line
from data_exhaust.ingest import split_events
from data_exhaust.lake import RAW_COLUMNS, Lake
from data_exhaust.telemetry import check_event, flatten
from tests.factories import DELETE, assess_event, ftp_event

#: Events whose values SQL could read differently from ``flatten`` (see event_lines.HARD).
EDGE_EVENTS: list[dict[str, Any]] = [
    assess_event(),
    ftp_event(**{"edata.resvalues": [{"ans1": "मेरा नाम राम है"}]}),
    assess_event(**{"edata.item.id": 42, "context.did": DELETE, "actor.id": "u-7"}),
    assess_event(**{"edata.item.id": 4.5, "edata.item.title": 1e16}),
    assess_event(**{"edata.item.title": {"b": 1, "a": [True, None]}, "edata.item.desc": False}),
    assess_event(**{"edata.item.maxscore": "2"}),
    assess_event(**{"edata.item.maxscore": "n/a"}),
    assess_event(**{"edata.item.maxscore": True, "edata.duration": 2**64 - 1, "edata.score": 7}),
    assess_event(**{"context.rollup.l4": True}),
    assess_event(**{"context.rollup.l4": "FALSE"}),
    assess_event(**{"context.rollup.l4": 1, "context.rollup.l3": 2.0}),
    assess_event(
        **{
            "context.cdata": [
                {"type": "ConversationOwner", "id": "o"},
                {"type": "conversation", "id": "c-9"},
            ]
        }
    ),
    assess_event(**{"context.cdata": DELETE, "context.rollup.l2": 17}),
    assess_event(
        **{"context.cdata": [{"type": "CONVERSATİON", "id": "c-i"}], "context.rollup.l2": "c-2"}
    ),
    assess_event(**{"context.cdata": [], "context.rollup": DELETE}),
    assess_event(ets=1655855999999.75),
    assess_event(
        **{
            "edata.item.params": [{"x": 1e-7}, {"b": 1, "a": 1e16}, 2**64 - 1, -(2**63)],
            "edata.item.title": 'गणित, "विज्ञान"\tor\nEnglish?\u2028\x00',
        }
    ),
    assess_event(eid="INTERACT", edata={"type": "TOUCH", "item": "not an object"}),
    assess_event(**{"edata.item.params": DELETE, "edata.resvalues": []}),
]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake", grace_seconds=0)


def lines_of(events: list[dict[str, Any]]) -> bytes:
    made = []
    for event in events:
        canonical = check_event(event)[1]
        assert canonical is not None, check_event(event)[0]
        made.append(event_line(event, canonical))
    return b"".join(made)


def read(lake: Lake, scan: str) -> list[dict[str, Any]]:
    names = ", ".join(f'"{name}"' for name in RAW_COLUMNS)
    with duckdb.connect() as con:
        result = con.execute(f"SELECT {names} FROM {scan} ORDER BY event_hash")
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def expected(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((flatten(event) for event in events), key=lambda row: row["event_hash"])


def test_every_column_of_a_raw_event_line_is_flattens(lake: Lake) -> None:
    lake.append_encoded(lines_of(EDGE_EVENTS), EVENTS_SUFFIX)
    (segment,) = lake.raw_segments()
    assert read(lake, lake._raw_scan([segment])) == expected(EDGE_EVENTS)


def test_compacted_event_lines_keep_every_column(lake: Lake) -> None:
    lake.append_encoded(lines_of(EDGE_EVENTS), EVENTS_SUFFIX)
    assert lake.compact() == len(EDGE_EVENTS)
    scan = lake.parquet_scan(lake.parquet_files())
    assert read(lake, f"(SELECT * FROM {scan})") == expected(EDGE_EVENTS)


def test_segments_of_rows_and_of_events_read_together(lake: Lake) -> None:
    old, new = EDGE_EVENTS[:5], EDGE_EVENTS[5:]
    lake.append([flatten(event) for event in old])  # a segment as ingest wrote before
    lake.append_encoded(lines_of(new), EVENTS_SUFFIX)
    assert sorted(p.suffix for p in lake.raw_segments()) == [".events", ".jsonl"]
    assert read(lake, lake._raw_scan(lake.raw_segments())) == expected(EDGE_EVENTS)
    assert lake.compact() == len(EDGE_EVENTS)
    assert lake.raw_segments() == []


@pytest.mark.parametrize("cut", [10, 100, 300, -30, -2])
def test_a_torn_last_line_is_skipped_not_an_error(lake: Lake, cut: int) -> None:
    # cut in the hash, in the keys, in the options, in the event, and before its last brace
    whole = lines_of(EDGE_EVENTS[:3])
    last = lines_of(EDGE_EVENTS[3:4])
    lake.append_encoded(whole + last[:cut], EVENTS_SUFFIX)  # a crash mid-write
    (segment,) = lake.raw_segments()
    assert read(lake, lake._raw_scan([segment])) == expected(EDGE_EVENTS[:3])


def test_split_events_writes_event_lines() -> None:
    events: list[Any] = [assess_event(), "junk"]
    line = lines_of([events[0]])
    split = split_events(events)
    assert (split.encoded, split.accepted, len(split.rejected)) == (line, 1, 1)


def test_an_event_line_has_six_fields_and_no_raw_tab_or_newline() -> None:
    made = lines_of(EDGE_EVENTS)
    assert made.count(b"\n") == len(EDGE_EVENTS)
    assert all(line.count(b"\t") == 5 for line in made.splitlines())
