"""Day merges on real files with real DuckDB: a finished day's Parquet files become one,
atomically, without changing what any query returns."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from data_exhaust import compaction
from data_exhaust.lake import Lake
from tests.integration.test_lake import DAY1, DAY2, count, query, rows


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake", grace_seconds=0)


AFTER = date(2022, 7, 1)  # "today" for these tests: 2022-06-21 and -22 are finished days


def three_segments(lake: Lake, day: int = DAY1) -> None:
    """Three compacted segments with rows of ``day``, compacted as if on that day (no merge)."""
    for i in range(3):
        lake.append(rows(4, day + 1000 + i * 10, conversation_id=f"c-{3 - i}"))
        lake.compact(today=date(2022, 6, 21))


def files_of(lake: Lake, day: str) -> list[str]:
    return sorted(p.name for p in (lake.events / f"date={day}").glob("*.parquet"))


def test_a_finished_day_s_files_are_merged_into_one_sorted_file(lake: Lake) -> None:
    three_segments(lake)
    assert len(files_of(lake, "2022-06-21")) == 3  # the day was not over yet
    before = query(lake, "SELECT * FROM {e} AS e ORDER BY mid")
    lake.compact(today=AFTER)
    (merged,) = files_of(lake, "2022-06-21")  # grace 0: the replaced files are gone
    assert merged.startswith("part-merge-")
    assert query(lake, "SELECT * FROM {e} AS e ORDER BY mid") == before
    with duckdb.connect() as con:
        stored = con.execute(
            f"SELECT conversation_id, ets FROM '{lake.events / 'date=2022-06-21' / merged}'"
        ).fetchall()
    assert stored == sorted(stored) and len(stored) == 12
    stats = lake.stats()
    assert (stats["parquet_files"], stats["merged_days"], stats["compacted_segments"]) == (1, 1, 3)


def test_today_is_not_merged_and_merging_can_be_switched_off(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake", grace_seconds=0, merge_files=0)
    three_segments(lake)
    lake.compact(today=AFTER)
    assert len(files_of(lake, "2022-06-21")) == 3
    lake.merge_files = 4  # more files than the day has
    lake.compact(today=AFTER)
    assert len(files_of(lake, "2022-06-21")) == 3
    lake.merge_files = 2
    lake.compact(today=date(2022, 6, 21))  # the day is today: still being written
    assert len(files_of(lake, "2022-06-21")) == 3
    assert count(lake) == 12


def test_replaced_files_stay_for_the_grace_period_and_are_read_once(tmp_path: Path) -> None:
    """A query that listed the files before the merge's marker can still open them; one that
    lists after it reads the merged file and skips them."""
    lake = Lake(tmp_path / "lake", grace_seconds=3600)
    three_segments(lake)
    listed_before = lake.parquet_files()
    lake.compact(today=AFTER)
    assert len(files_of(lake, "2022-06-21")) == 4  # three kept for running queries + merged
    assert all(path.exists() for path in listed_before)
    assert [p.name for p in lake.parquet_files()] == [
        n for n in files_of(lake, "2022-06-21") if n.startswith("part-merge-")
    ]
    assert count(lake) == 12
    lake.grace_seconds = 0
    lake.compact(today=AFTER)
    assert len(files_of(lake, "2022-06-21")) == 1
    assert count(lake) == 12


def test_a_late_event_is_merged_into_its_day_again(lake: Lake) -> None:
    three_segments(lake)
    lake.append(rows(2, DAY2))
    lake.compact(today=AFTER)
    first = files_of(lake, "2022-06-21")
    lake.append(rows(1, DAY1 + 5000, conversation_id="c-late"))
    lake.compact(today=AFTER)
    (again,) = files_of(lake, "2022-06-21")
    assert again != first[0]
    assert files_of(lake, "2022-06-22") == [
        p.name for p in lake.parquet_files(date(2022, 6, 22), date(2022, 6, 22))
    ]  # one file: left as it was
    assert count(lake) == 15
    assert count(lake, where="conversation_id = 'c-late'") == 1


def test_an_interrupted_merge_changes_nothing_and_is_redone(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_segments(lake)

    def crash(path: Path, data: bytes) -> None:
        raise OSError("power cut before the merge's marker")

    monkeypatch.setattr(compaction, "_write_durably", crash)
    with pytest.raises(OSError, match="power cut"):
        compaction.merge_days(lake, AFTER)  # in this process, where the crash is patched in
    assert len(files_of(lake, "2022-06-21")) == 4  # the merged file is in place, invisible
    assert len(lake.parquet_files()) == 3 and count(lake) == 12
    monkeypatch.undo()
    lake.compact(today=AFTER)
    (merged,) = files_of(lake, "2022-06-21")  # the leftover removed, the day merged again
    assert merged.startswith("part-merge-") and lake.stats()["merged_days"] == 1
    assert count(lake) == 12


def test_duplicates_across_merged_files_are_still_dropped_by_queries(lake: Lake) -> None:
    """A retried batch lands in two segments; the merge keeps both copies and the query's
    dedup (mid + event_key) still returns the event once."""
    batch = rows(5)
    lake.append(batch)
    lake.compact(today=date(2022, 6, 21))
    lake.append(batch)
    lake.compact(today=AFTER)
    assert len(files_of(lake, "2022-06-21")) == 1
    assert count(lake) == 5


def test_a_day_is_merged_a_range_of_conversations_at_a_time(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded memory: each range of whole conversations is sorted on its own, rows without
    a conversation last, all streamed into one file in the order of a sort of the whole day."""
    monkeypatch.setattr(compaction, "MERGE_RANGE_ROWS", 3)
    for i, conversation in enumerate(["c-5", "c-1", None, "c-3", "c-2", "c-4"]):
        segment = rows(2, DAY1 + 1000 + i, conversation_id=conversation)
        lake.append(segment + rows(1, DAY1 + 90_000 - i, conversation_id="c-1"))
        lake.compact(today=date(2022, 6, 21))
    before = query(lake, "SELECT * FROM {e} AS e ORDER BY conversation_id NULLS LAST, ets, mid")
    assert compaction.merge_days(lake, AFTER) == 1  # in this process, with the small ranges
    (merged,) = lake.parquet_files()
    with duckdb.connect() as con:
        stored = con.execute(f"SELECT * FROM '{merged}'").fetchall()
    assert len(stored) == 18
    assert [row[5] for row in stored] == [row[5] for row in before]  # conversation order
    assert stored == con_sorted(stored)
    assert (
        query(lake, "SELECT * FROM {e} AS e ORDER BY conversation_id NULLS LAST, ets, mid")
        == before
    )


def con_sorted(stored: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The rows in SORT_ORDER (conversation_id NULLS LAST, ets, mid, event_key)."""
    return sorted(stored, key=lambda r: (r[5] is None, r[5] or "", r[1], r[2], r[21]))


def test_a_day_too_big_for_the_memory_cap_is_merged_without_one(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the merge would fail at every compaction and the day stay in many files."""
    monkeypatch.setattr(compaction, "COMPACTION_MEMORY", "1MB")
    for i in range(2):
        lake.append(rows(1500, DAY1 + 1000 + i * 2000))
        lake.compact(today=date(2022, 6, 21))
    assert compaction.merge_days(lake, AFTER) == 1  # in this process, with the patched cap
    assert len(lake.parquet_files()) == 1
    assert count(lake) == 3000


def test_a_failed_merge_loses_nothing_and_compaction_goes_on(lake: Lake) -> None:
    """The merge runs in a child process; when it fails (here a file it cannot read) the
    compaction still moves the raw segments and every query reads what it read before."""
    three_segments(lake)
    broken = lake.parquet_files()[0]
    good = broken.read_bytes()
    broken.write_bytes(b"not parquet")
    lake.append(rows(2, DAY2))
    assert lake.compact(today=AFTER) == 2  # no exception; the merge's failure is logged
    assert len(files_of(lake, "2022-06-21")) == 3  # left as it was
    broken.write_bytes(good)
    assert count(lake) == 14
    lake.compact(today=AFTER)  # the next compaction merges the day
    assert len(files_of(lake, "2022-06-21")) == 1 and count(lake) == 14


def strip_event_key(path: Path) -> None:
    """Rewrite a compacted file as releases before ``event_key`` wrote it (no such column)."""
    old = path.with_name(".old.parquet")
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * EXCLUDE (event_key) FROM '{path}') TO '{old}' (FORMAT parquet)"
        )
    old.replace(path)


def test_files_from_before_event_key_are_deduplicated_and_upgraded_by_a_merge(lake: Lake) -> None:
    """A lake compacted by an older release keeps working: its files get the key derived
    from the hash, so a batch retried across the upgrade is still dropped, and the day's
    merge stores the key."""
    batch, later = rows(5), rows(2, DAY1 + 5000)
    lake.append(batch)
    lake.compact(today=date(2022, 6, 21))
    (old,) = lake.parquet_files()
    assert "event_key" in pq.read_schema(old).names
    strip_event_key(old)  # before this process first reads its footer
    assert "event_key" not in pq.read_schema(old).names
    expected = {row["event_hash"]: int(row["event_hash"][:16], 16) for row in batch + later}
    keys = "SELECT event_hash, event_key FROM {e} AS e"
    lake.append(batch + later)  # retried, raw beside the old file
    assert count(lake) == 7 and dict(query(lake, keys)) == expected
    lake.compact(today=date(2022, 6, 21))  # now also in a file that stores the key
    assert len(lake.parquet_files()) == 2
    assert count(lake) == 7 and dict(query(lake, keys)) == expected
    lake.compact(today=AFTER)
    (merged,) = lake.parquet_files()
    assert "event_key" in pq.read_schema(merged).names
    assert count(lake) == 7 and dict(query(lake, keys)) == expected
