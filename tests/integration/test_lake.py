"""The lake on real files with real DuckDB: append, compaction, queries, ingest paths."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from data_exhaust import compaction as lake_module
from data_exhaust.api.errors import ApiError
from data_exhaust.db import make_engine
from data_exhaust.ingest import FileChanged, Ingestor, ingest_file
from data_exhaust.lake import COLUMNS, Lake
from data_exhaust.models import TelemetryBatch
from data_exhaust.telemetry import flatten
from tests.factories import batch, ftp_event

DAY1, DAY2, DAY3 = 1655769600000, 1655856000000, 1655942400000  # 2022-06-21/22/23 00:00 UTC


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake", grace_seconds=0)


def rows(n: int, ets: int = DAY1 + 1000, **overrides: Any) -> list[dict[str, Any]]:
    return [flatten(ftp_event(ets=ets + i, **overrides)) for i in range(n)]


def query(lake: Lake, sql: str = "SELECT count(*) FROM {e} AS e", **kwargs: Any) -> list[Any]:
    first, last = kwargs.pop("first", None), kwargs.pop("last", None)
    where = kwargs.pop("where", "true")
    with duckdb.connect() as con:
        return con.execute(sql.format(e=lake.events_sql(first, last, where)), kwargs).fetchall()


def count(lake: Lake, **kwargs: Any) -> int:
    return int(query(lake, **kwargs)[0][0])


def test_empty_lake_is_an_empty_relation_with_the_columns(lake: Lake) -> None:
    assert count(lake) == 0
    described = query(lake, "DESCRIBE SELECT * FROM {e} AS e")
    assert {name: kind for name, kind, *_ in described} == COLUMNS
    assert lake.stats()["raw_segments"] == 0


def test_appended_rows_are_queryable_at_once(lake: Lake) -> None:
    appended = rows(3)
    lake.append(appended)
    (got,) = query(lake, "SELECT * FROM {e} AS e WHERE ets = $ets", ets=appended[1]["ets"])
    key = int(appended[1]["event_hash"][:16], 16)  # the dedup key: the hash's first 64 bits
    assert dict(zip(COLUMNS, got, strict=True)) == {**appended[1], "event_key": key}


def test_compaction_moves_rows_to_date_partitions(lake: Lake) -> None:
    lake.append(rows(2, DAY2) + rows(3, DAY1))  # one segment of two dates, later one first
    assert lake.compact() == 5
    assert sorted(p.parent.name for p in lake.events.glob("*/*.parquet")) == [
        "date=2022-06-21",
        "date=2022-06-22",
    ]
    with duckdb.connect() as con:  # each date's file holds that date's rows, and only those
        for day, start, expected in (("2022-06-21", DAY1, 3), ("2022-06-22", DAY2, 2)):
            (file,) = lake.events.glob(f"date={day}/*.parquet")
            found = con.execute(
                f"SELECT count(*), min(ets), max(ets) FROM read_parquet('{file}')"
            ).fetchone()
            assert found is not None and found[0] == expected
            assert start <= found[1] <= found[2] < start + 86_400_000
    assert lake.stats()["raw_segments"] == 0
    assert not list(lake.raw.glob("*.jsonl"))
    assert count(lake) == 5
    assert query(lake, "SELECT max(typeof(ets)), max(typeof(score)) FROM {e} AS e") == [
        ("BIGINT", "DOUBLE")
    ]
    assert lake.compact() == 0  # nothing left to do


def test_raw_and_parquet_together_count_each_event_once(lake: Lake) -> None:
    lake.append(rows(4))
    lake.compact()
    lake.append(rows(3, DAY1 + 50_000))
    assert lake.stats()["parquet_files"] == 1
    assert lake.stats()["raw_segments"] == 1
    assert count(lake) == 7


def test_a_compacted_segment_kept_for_grace_is_not_read_twice(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake", grace_seconds=3600)
    lake.append(rows(4))
    assert lake.compact() == 4
    assert len(list(lake.raw.glob("*.jsonl"))) == 1  # still there for running queries
    assert count(lake) == 4


def test_date_range_prunes_partitions_and_raw_rows(lake: Lake) -> None:
    lake.append(rows(2, DAY1) + rows(3, DAY2) + rows(4, DAY3))
    lake.compact()
    lake.append(rows(1, DAY1 + 9000) + rows(5, DAY2 + 9000))
    day2 = date(2022, 6, 22)
    assert count(lake, first=day2, last=day2) == 8
    assert count(lake, first=day2) == 12
    assert count(lake, last=day2) == 11
    sql = lake.events_sql(day2, day2)
    assert "date=2022-06-22" in sql
    assert "date=2022-06-21" not in sql
    assert "date=2022-06-23" not in sql


def test_where_predicate_with_parameters(lake: Lake) -> None:
    lake.append(rows(2, conversation_id="c-1") + rows(3, DAY1 + 9000, conversation_id="c-2"))
    assert count(lake, where="conversation_id = $c", c="c-2") == 3


def test_dedup_drops_retries_but_keeps_different_events_sharing_a_mid(lake: Lake) -> None:
    same_mid = [flatten(ftp_event(mid="m-1")), flatten(ftp_event(mid="m-1"))]
    lake.append(same_mid)
    lake.compact()
    lake.append(same_mid)  # a retried batch, now raw next to its compacted copy
    lake.append(same_mid[:1])
    assert count(lake) == 2
    assert query(lake, "SELECT count(DISTINCT event_hash), min(mid) FROM {e} AS e") == [(2, "m-1")]


def test_a_hand_made_line_whose_hash_is_not_hex_is_compacted_and_kept(lake: Lake) -> None:
    """Its dedup key is NULL: the compaction does not fail on it, and it is never dropped."""
    odd = {**flatten(ftp_event(mid="m-odd")), "event_hash": "not-a-sha256"}
    lake.append([odd, flatten(ftp_event(mid="m-2"))])
    lake.compact()
    assert lake.stats()["raw_segments"] == 0 and len(lake.parquet_files()) == 1
    got = query(lake, "SELECT mid, event_key FROM {e} AS e ORDER BY mid")
    assert got[0][0] == "m-2" and got[1] == ("m-odd", None)


def test_interrupted_compaction_is_redone_without_loss_or_double_count(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.append(rows(3, DAY1) + rows(2, DAY2))

    def crash(path: Path, data: bytes) -> None:
        raise OSError("power cut before the marker")

    monkeypatch.setattr(lake_module, "_write_durably", crash)
    with pytest.raises(OSError, match="power cut"):
        lake.compact()
    assert len(list(lake.events.glob("*/*.parquet"))) == 2  # renamed into place ...
    assert count(lake) == 5  # ... but invisible: no marker, the raw segment counts
    monkeypatch.undo()
    assert lake.compact() == 5
    assert len(list(lake.events.glob("*/*.parquet"))) == 2  # leftovers replaced, not added
    assert count(lake) == 5
    assert query(lake, "SELECT count(*) FROM (SELECT DISTINCT mid FROM {e} AS e)") == [(5,)]


def test_torn_last_line_of_a_crashed_writer_is_skipped(lake: Lake) -> None:
    lake.append(rows(2))
    lake.roll()
    (segment,) = lake.raw.glob("*.jsonl")
    with open(segment, "ab") as handle:
        handle.write(orjson.dumps(rows(1, DAY2)[0])[:100])
    assert count(lake) == 2
    assert lake.compact() == 2
    assert count(lake) == 2


def test_a_live_segment_of_another_writer_is_not_compacted(tmp_path: Path) -> None:
    writer, compactor = Lake(tmp_path / "lake"), Lake(tmp_path / "lake", grace_seconds=0)
    writer.append(rows(3))
    assert compactor.compact() == 0
    assert count(compactor) == 3
    writer.roll()
    assert compactor.compact() == 3
    writer.append(rows(1, DAY2))  # the writer carries on in a new segment
    assert count(compactor) == 4


def test_segments_roll_by_size_and_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake", segment_bytes=64 * 1024, grace_seconds=0)

    def work(thread: int) -> None:
        for n in range(20):
            lake.append(rows(10, DAY1 + thread * 1_000_000 + n * 100))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(lake.raw.glob("*.jsonl"))) > 1
    for segment in lake.raw.glob("*.jsonl"):
        assert all(orjson.loads(line) for line in segment.read_bytes().splitlines())
    assert count(lake) == 1200
    assert lake.compact() == 1200
    assert count(lake) == 1200


def test_from_url_accepts_only_file_urls(tmp_path: Path) -> None:
    assert Lake.from_url((tmp_path / "my lake").as_uri()).root == tmp_path / "my lake"
    with pytest.raises(ValueError, match="only file:// URLs"):
        Lake.from_url("s3://bucket/lake")


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(("workers", "chunk_bytes"), [(1, 1), (2, 1), (2, 100), (2, 10**6)])
def test_ingest_file_quarantines_bad_lines_with_their_numbers(
    lake: Lake, tmp_path: Path, workers: int, chunk_bytes: int
) -> None:
    # chunks of one line, of lines cut anywhere (100 bytes), and of the whole file
    good = [orjson.dumps(ftp_event(ets=DAY1 + i)) for i in range(7)]
    lines = [*good[:3], b"{not json", b"", orjson.dumps(ftp_event(ets=1655822756))]
    lines += [orjson.dumps(batch([ftp_event(ets=DAY2), ftp_event(ets=DAY2 + 1)])), *good[3:]]
    progress: list[tuple[int, int]] = []
    source = write_lines(tmp_path / "events.jsonl", lines)
    done = ingest_file(
        source,
        lake,
        chunk_bytes=chunk_bytes,
        workers=workers,
        on_progress=lambda b, n: progress.append((b, n)),
    )
    assert (done.lines, done.accepted, done.rejected) == (11, 9, 2)
    assert progress[-1] == (source.stat().st_size, 9)
    assert [b for b, _ in progress] == sorted(b for b, _ in progress)
    assert count(lake) == 9
    quarantined = [
        orjson.loads(line)
        for f in lake.quarantined.glob("*.jsonl")
        for line in f.read_bytes().splitlines()
    ]
    by_line = {item["line"]: item for item in quarantined}
    assert by_line[4]["text"] == "{not json"
    assert by_line[4]["errors"][0].startswith("line 4: not valid JSON")
    assert by_line[6]["errors"] == [
        "line 6: ets must be epoch milliseconds (got 1655822756, which looks like seconds)"
    ]
    assert all("received_at" in item for item in quarantined)
    assert lake.stats()["quarantined"] == 2


def test_a_file_that_shrinks_while_workers_read_it_stops_the_ingest(
    lake: Lake, tmp_path: Path
) -> None:
    lines = [orjson.dumps(ftp_event(ets=DAY1 + i, mid=f"m-{i}")) for i in range(20)]
    source = write_lines(tmp_path / "events.jsonl", lines)

    def truncate(done: int, accepted: int) -> None:  # a writer rewrites the file meanwhile
        source.write_bytes(b"")

    with pytest.raises(FileChanged, match="got shorter while it was ingested"):
        ingest_file(source, lake, chunk_bytes=1, workers=2, on_progress=truncate)
    assert 1 <= count(lake) < 20  # what was read before is stored, nothing invented


def test_the_last_line_needs_no_newline(lake: Lake, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(orjson.dumps(ftp_event(ets=DAY1)) + b"\n" + orjson.dumps(ftp_event()))
    done = ingest_file(source, lake, chunk_bytes=10, workers=2)
    assert (done.lines, done.accepted, done.rejected) == (2, 2, 0)


def test_a_long_chunk_with_a_bad_line_keeps_every_event_once(lake: Lake, tmp_path: Path) -> None:
    total = 519
    lines = [orjson.dumps(ftp_event(ets=DAY1 + i, mid=f"m-{i}")) for i in range(total)]
    lines.insert(256, b"{not json")
    done = ingest_file(write_lines(tmp_path / "events.jsonl", lines), lake, workers=1)
    assert (done.accepted, done.rejected) == (total, 1)
    mids = query(lake, "SELECT mid FROM {e} AS e")
    assert sorted(mid for (mid,) in mids) == sorted(f"m-{i}" for i in range(total))


def test_ingestor_stores_a_batch_once_per_msgid(lake: Lake, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    ingestor = Ingestor(lake, engine)
    events = [ftp_event(), ftp_event(), ftp_event(mid="bad", ver="2.0")]
    first = ingestor.ingest(batch(events, msgid="msg-1"))
    assert (first.accepted, first.duplicate_batch) == (2, False)
    assert first.rejected == [
        {"index": 2, "mid": "bad", "errors": ['ver must be "3.0" or "3.1" (got \'2.0\')']}
    ]
    again = ingestor.ingest(batch(events, msgid="msg-1"))
    assert (again.accepted, again.rejected, again.duplicate_batch) == (2, first.rejected, True)
    raw_lines = sum(len(f.read_bytes().splitlines()) for f in lake.raw_segments())
    assert raw_lines == 2
    assert lake.stats()["quarantined"] == 1
    with Session(engine) as session:
        recorded = session.get(TelemetryBatch, "msg-1")
        assert recorded is not None
        assert (recorded.accepted, recorded.rejected) == (2, 1)
        assert recorded.received_at.tzinfo is not None
    assert ingestor.ingest(batch([ftp_event()], msgid=None)).accepted == 1
    engine.dispose()


def test_concurrent_retries_of_one_batch_do_not_fail(lake: Lake, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    ingestor = Ingestor(lake, engine)
    body = batch([ftp_event() for _ in range(5)], msgid="msg-race")
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(ingestor.ingest(body).accepted))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [5, 5, 5, 5]
    assert count(lake) == 5  # stored more than once at worst, counted once
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(TelemetryBatch)) == 1
    engine.dispose()


@pytest.mark.parametrize("body", [{}, {"events": "x"}, {"events": {"eid": "ASSESS"}}])
def test_ingestor_needs_an_events_array(lake: Lake, sqlite_url: str, body: dict[str, Any]) -> None:
    engine = make_engine(sqlite_url)
    with pytest.raises(ApiError, match='"events" array') as caught:
        Ingestor(lake, engine).ingest(body)
    assert caught.value.code == "CLIENT_ERROR"
    engine.dispose()


def test_adjacent_duplicates_are_dropped_while_streaming() -> None:
    import pyarrow as pa

    from data_exhaust.datasets.dedup import drop_adjacent_duplicates

    mids = ["a", "a", "a", "b", "b", "c"]
    digests = ["h1", "h1", "h2", "h3", "h3", "h4"]  # rows 2 and 5 repeat their predecessor
    table = pa.table({"mid": mids, "digest": digests, "n": list(range(6))})
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))
    kept = drop_adjacent_duplicates(reader, "mid", "digest").read_all()
    assert kept.column_names == ["mid", "n"]
    assert kept.column("n").to_pylist() == [0, 2, 3, 5]  # a repeat across a batch edge too


def interleaved(conversations: list[str], each: int) -> list[dict[str, Any]]:
    """``each`` rows per conversation, arriving in turn (as a live chatbot platform sends)."""
    return [
        flatten(
            ftp_event(ets=DAY1 + 1000 + i, conversation_id=conversations[i % len(conversations)])
        )
        for i in range(each * len(conversations))
    ]


def test_compacted_rows_are_sorted_by_conversation_and_time_in_small_row_groups(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One file per date, its rows ordered by conversation then time: a query for one
    conversation reads only the row groups that hold it (DuckDB skips the others by their
    statistics), whatever order the events arrived in."""
    monkeypatch.setattr(lake_module, "ROW_GROUP_ROWS", 2048)  # DuckDB's smallest row group
    lake.append(interleaved(["c-4", "c-2", "c-1", "c-3"], 2048))
    assert lake.compact() == 4 * 2048
    (file,) = lake.events.glob("date=2022-06-21/*.parquet")
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT conversation_id, ets FROM read_parquet('{file}')").fetchall()
        groups = con.execute(
            f"SELECT count(DISTINCT row_group_id) FROM parquet_metadata('{file}')"
        ).fetchone()
        profile = tmp_path / "profile.json"
        con.execute("SET enable_profiling = 'json'")
        con.execute(f"SET profiling_output = '{profile}'")
        found = con.execute(
            f"SELECT count(*) FROM {lake.events_sql(where='conversation_id = $c')} AS e",
            {"c": "c-2"},
        ).fetchall()
    assert stored == sorted(stored) and len(stored) == 4 * 2048
    assert groups == (4,) and found == [(2048,)]
    profiled = orjson.loads(profile.read_bytes())
    assert profiled["query"]["total_row_groups_scanned"] == 1  # c-2's alone


def test_a_compaction_over_its_memory_cap_runs_again_without_one(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap keeps a usual compaction near 300 MB of RSS; a segment too big for it (here a
    cap of 1 MB) is still compacted, rather than left raw for ever."""
    monkeypatch.setattr(lake_module, "COMPACTION_MEMORY", "1MB")
    lake.append(rows(2000, DAY1) + rows(10, DAY2))
    assert lake.compact() == 2010
    assert count(lake) == 2010
    assert lake.stats()["raw_segments"] == 0
