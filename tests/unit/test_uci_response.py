"""uci-response-exhaust: config validation, and run() over a small real Parquet lake."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_exhaust.datasets.base import ConfigError, NoDataFound, RunContext, SubmitContext
from data_exhaust.datasets.uci_response import (
    HEADER,
    MAX_RANGE_DAYS,
    UciResponseExhaust,
    local_day_bounds_ms,
)
from data_exhaust.db import make_engine, migrate
from data_exhaust.jobs import Job, OutputFile, Status
from data_exhaust.lake import COLUMNS
from data_exhaust.output import write_output
from data_exhaust.registry import Registry
from data_exhaust.settings import Settings
from data_exhaust.storage import BlobStore
from data_exhaust.testing import MemoryBlobStore

DATASET = UciResponseExhaust()
HEADER_LINE = (
    "Message ID,Conversation ID,Conversation Name,Device ID,Session ID,Question Id,"
    "Question Type,Question Title,Question Description,Question Duration,Question Score,"
    "Question Max Score,Question Options,Question Response,X Path,Eof,Timestamp"
)
TODAY = date(2022, 6, 23)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, timezone="Asia/Kolkata")


def _submit(settings: Settings, today: date = TODAY) -> SubmitContext:
    return SubmitContext(channel="ch1", today=today, settings=settings)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["conversationId"], "datasetConfig must be an object"),
        (
            {"conversationId": "c", "startdate": "2022-06-01", "foo": 1},
            "unknown datasetConfig field(s): foo, startdate; "
            "allowed: type, conversationId, startDate, endDate",
        ),
        ({"type": "uci-private-exhaust", "conversationId": "c"}, "datasetConfig.type must be"),
        ({}, "Request should have conversationId"),
        ({"conversationId": ""}, "Request should have conversationId"),
        ({"conversationId": "   "}, "Request should have conversationId"),
        ({"conversationId": None}, "Request should have conversationId"),
        ({"conversationId": 42}, "Request should have conversationId"),
        ({"conversationId": "a/../b"}, "conversationId must be at most 128 letters"),
        ({"conversationId": "x" * 129}, "conversationId must be at most 128 letters"),
        ({"startDate": "bad"}, "Request should have conversationId"),  # id is checked first
        ({"conversationId": "c", "startDate": "2022-6-01"}, "startDate must be YYYY-MM-DD"),
        ({"conversationId": "c", "startDate": "20220601"}, "startDate must be YYYY-MM-DD"),
        ({"conversationId": "c", "startDate": "2022-02-30"}, "startDate must be YYYY-MM-DD"),
        ({"conversationId": "c", "startDate": 20220601}, "startDate must be YYYY-MM-DD"),
        ({"conversationId": "c", "startDate": "2022-06-01\n"}, "startDate must be YYYY-MM-DD"),
        (
            {"conversationId": "c", "startDate": "x", "endDate": "y"},
            "startDate must be YYYY-MM-DD",
        ),
        ({"conversationId": "c", "endDate": "2022-13-01"}, "endDate must be YYYY-MM-DD"),
        (
            {"conversationId": "c", "startDate": "2022-06-02", "endDate": "2022-06-01"},
            "endDate must not be before startDate",
        ),
        (
            {"conversationId": "c", "startDate": "2021-01-01", "endDate": "2022-01-02"},
            f"the date range must not exceed {MAX_RANGE_DAYS} days",
        ),
        (
            {"conversationId": "c", "startDate": "2020-01-01"},  # endDate defaults to yesterday
            "the date range must not exceed 366 days (got 904: 2020-01-01..2022-06-22)",
        ),
    ],
)
def test_validation_messages(settings: Settings, config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DATASET.validate(config, _submit(settings))
    assert str(caught.value).startswith(message)


def _dates(settings: Settings, **config: Any) -> tuple[str, str]:
    result = DATASET.validate({"conversationId": "c", **config}, _submit(settings))
    return result["startDate"], result["endDate"]


def test_default_dates_are_yesterday_in_the_configured_calendar(settings: Settings) -> None:
    assert _dates(settings) == ("2022-06-22", "2022-06-22")
    assert _dates(settings, startDate=None, endDate=None) == ("2022-06-22", "2022-06-22")


def test_lone_start_date(settings: Settings) -> None:
    assert _dates(settings, startDate="2022-06-01") == ("2022-06-01", "2022-06-22")
    assert _dates(settings, startDate="2022-06-30") == ("2022-06-30", "2022-06-30")


def test_lone_end_date(settings: Settings) -> None:
    assert _dates(settings, endDate="2022-06-10") == ("2022-06-10", "2022-06-10")
    assert _dates(settings, endDate="2022-07-01") == ("2022-06-22", "2022-07-01")


def test_range_limit_is_inclusive(settings: Settings) -> None:
    assert _dates(settings, startDate="2021-01-01", endDate="2022-01-01") == (
        "2021-01-01",
        "2022-01-01",
    )  # 366 days


def test_normalised_config(settings: Settings) -> None:
    given = {"conversationId": " conv-1 ", "startDate": "2022-06-01", "endDate": "2022-06-02"}
    expected = {
        "type": "uci-response-exhaust",
        "conversationId": "conv-1",
        "startDate": "2022-06-01",
        "endDate": "2022-06-02",
    }
    assert DATASET.validate(given, _submit(settings)) == expected
    typed = {**given, "type": "uci-response-exhaust"}
    assert DATASET.validate(typed, _submit(settings)) == expected


def test_local_day_bounds_in_kolkata() -> None:
    from zoneinfo import ZoneInfo

    start, end = local_day_bounds_ms(date(2022, 6, 22), date(2022, 6, 22), ZoneInfo("Asia/Kolkata"))
    assert start == _ms("2022-06-21T18:30:00.000")
    assert end == _ms("2022-06-22T18:30:00.000")


def test_local_day_bounds_when_midnight_is_skipped() -> None:
    """Santiago skipped 2022-09-11 00:00-01:00 (DST): that day starts at 01:00 -03."""
    from zoneinfo import ZoneInfo

    day = date(2022, 9, 11)
    start, end = local_day_bounds_ms(day, day, ZoneInfo("America/Santiago"))
    assert start == _ms("2022-09-11T04:00:00.000")  # 00:00 -04 == 01:00 -03
    assert end == _ms("2022-09-12T03:00:00.000")


# -- a small real lake ------------------------------------------------------------------------

_ARROW = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "UBIGINT": pa.uint64(),
}
#: The lake's columns (``lake.COLUMNS``) as Arrow types.
LAKE_SCHEMA = pa.schema([(name, _ARROW[kind]) for name, kind in COLUMNS.items()])


def _ms(iso_utc: str) -> int:
    return int(datetime.fromisoformat(iso_utc).replace(tzinfo=UTC).timestamp() * 1000)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lake_row(**overrides: Any) -> dict[str, Any]:
    """One lake row (the columns ``Lake.events_sql`` yields) of an ASSESS event."""
    row: dict[str, Any] = {
        "eid": "ASSESS",
        "ets": _ms("2022-06-22T06:00:00.000"),
        "mid": "m-1",
        "channel": "ch1",
        "pdata_id": "prod.uci",
        "conversation_id": "conv-1",
        "device_id": "dev-1",
        "session_id": "sess-1",
        "actor_id": "dev-1",
        "item_id": "q1",
        "item_type": "mcq",
        "item_title": "Which subject?",
        "item_desc": "Pick one",
        "duration": 4.0,
        "score": 1.0,
        "max_score": 1.0,
        "options": '[{"1":{"text":"1 Maths"}},{"2":{"text":"2 Science"}}]',
        "response": '[{"2":{"text":"2 Science"}}]',
        "xpath": "/form/q1",
        "eof": "false",
    }
    row.update(overrides)
    row.setdefault("event_hash", _hash(f"{row['mid']}-{row['ets']}-{row['channel']}"))
    row.setdefault("event_key", int(row["event_hash"][:16], 16))
    row.setdefault("event", orjson.dumps({"eid": row["eid"], "mid": row["mid"]}).decode())
    row.setdefault("date", datetime.fromtimestamp(row["ets"] / 1000, UTC).date().isoformat())
    return row


@dataclass
class FakeLake:
    """``events_sql`` over one Parquet file, recording the partitions asked for."""

    path: Path
    asked: list[tuple[date | None, date | None]] = field(default_factory=list)

    def events_sql(
        self,
        first_day: date | None,
        last_day: date | None,
        where: str = "true",
        *,
        dedup: bool = True,
    ) -> str:
        """Like Lake.events_sql; this fake never deduplicates (its rows are distinct)."""
        self.asked.append((first_day, last_day))
        lo = first_day.isoformat() if first_day else "0000-00-00"
        hi = last_day.isoformat() if last_day else "9999-99-99"
        return (
            f"(SELECT * FROM read_parquet('{self.path}') "
            f"WHERE date BETWEEN '{lo}' AND '{hi}' AND ({where}))"
        )


def make_lake(tmp_path: Path, rows: Sequence[dict[str, Any]]) -> FakeLake:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(list(rows), schema=LAKE_SCHEMA), path)
    return FakeLake(path)


@dataclass
class FakeRunContext:
    """The engine's side of :class:`RunContext`, writing into a MemoryBlobStore."""

    job: Job
    settings: Settings
    today: date
    lake: Any
    con: duckdb.DuckDBPyConnection
    registry: Registry
    blobs: BlobStore = field(default_factory=MemoryBlobStore)
    details: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)

    def checkpoint(self, rows_done: int, rows_total: int | None = None) -> None:
        self.checkpoints.append(rows_done)
        if rows_total is not None:
            self.totals.append(rows_total)

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        return self.con

    def write(
        self,
        stem: str,
        header: Sequence[str],
        batches: pa.RecordBatchReader,
        rows_total: int | None = None,
    ) -> OutputFile:
        return write_output(
            self.blobs,
            f"{self.job.request_id}",
            stem,
            self.job.output_format,
            header,
            batches,
            bom=self.settings.csv_bom,
            formula_guard=self.settings.csv_formula_guard,
            on_batch=lambda rows: self.checkpoint(rows, rows_total),
        )

    def publish_file(self, name: str, path: Path, rows: int) -> OutputFile:
        raise AssertionError("the response exhaust writes through write(), never a built file")


def _job(config: dict[str, Any], channel: str = "ch1", output_format: str = "csv") -> Job:
    now = datetime(2022, 6, 23, tzinfo=UTC)
    return Job(
        tag=f"t:{channel}",
        request_id="REQ1",
        dataset=DATASET.id,
        status=Status.PROCESSING,
        config=config,
        channel=channel,
        requested_by=None,
        submitted_at=now,
        last_updated=now,
        run_after=now,
        output_format=output_format,
    )


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def _context(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    lake: FakeLake,
    output_format: str = "csv",
    **config: Any,
) -> FakeRunContext:
    base = {"conversationId": "conv-1", "startDate": "2022-06-22", "endDate": "2022-06-22"}
    normalised = DATASET.validate({**base, **config}, _submit(settings))
    job = _job(normalised, output_format=output_format)
    return FakeRunContext(job, settings, TODAY, lake, con, empty_registry(settings))


_TEMPLATE: list[Path] = []


def empty_registry(settings: Settings) -> Registry:
    """A real registry on SQLite (copied from a database migrated once per session)."""
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp()) / "registry.db"
        migrate(f"sqlite:///{template}")
        _TEMPLATE.append(template)
    path = settings.data_dir / "registry.db"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(_TEMPLATE[0], path)
    return Registry(make_engine(f"sqlite:///{path}"), settings.secret_box)


def _run_csv(
    ctx: FakeRunContext, dataset: UciResponseExhaust = DATASET
) -> tuple[OutputFile, list[dict[str, str]], bytes]:
    (out,) = dataset.run(ctx)
    data = b"".join(ctx.blobs.read(out.key))
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    return out, rows, data


def test_run_writes_the_exact_header_and_file_name(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    ctx = _context(settings, con, make_lake(tmp_path, [lake_row()]))
    out, rows, data = _run_csv(ctx)
    assert data.split(b"\n", 1)[0].decode() == HEADER_LINE == ",".join(HEADER)
    assert out.name == "conv-1_response_20220623.csv"
    assert out.key == "REQ1/conv-1_response_20220623.csv"
    assert out.rows == 1 == len(rows)


def test_run_renders_every_column(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    ets = _ms("2022-06-22T14:45:56.892")
    ctx = _context(settings, con, make_lake(tmp_path, [lake_row(ets=ets, duration=2.5)]))
    _, (row,), _ = _run_csv(ctx)
    assert row == {
        "Message ID": "m-1",
        "Conversation ID": "conv-1",
        "Conversation Name": "",
        "Device ID": "dev-1",
        "Session ID": "sess-1",
        "Question Id": "q1",
        "Question Type": "mcq",
        "Question Title": "Which subject?",
        "Question Description": "Pick one",
        "Question Duration": "3",
        "Question Score": "1",
        "Question Max Score": "1",
        "Question Options": '[{"1":{"text":"1 Maths"}},{"2":{"text":"2 Science"}}]',
        "Question Response": '[{"2":{"text":"2 Science"}}]',
        "X Path": "/form/q1",
        "Eof": "false",
        "Timestamp": "2022-06-22T14:45:56.892Z",
    }


def test_duration_rounding_scores_and_missing_values(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    base = _ms("2022-06-22T01:00:00.000")
    cases = [(0.5, "1"), (1.4999, "1"), (1.5, "2"), (2.5, "3"), (7.0, "7"), (None, "")]
    rows = [
        lake_row(mid=f"m{i}", ets=base + i, duration=d, score=0.5, max_score=None)
        for i, (d, _) in enumerate(cases)
    ]
    _, out_rows, _ = _run_csv(_context(settings, con, make_lake(tmp_path, rows)))
    assert [r["Question Duration"] for r in out_rows] == [want for _, want in cases]
    assert {r["Question Score"] for r in out_rows} == {"0.5"}
    assert {r["Question Max Score"] for r in out_rows} == {""}


def test_channel_conversation_and_eid_isolation(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [
        lake_row(mid="mine"),
        lake_row(mid="other-channel", channel="ch2"),
        lake_row(mid="other-conversation", conversation_id="conv-2"),
        lake_row(mid="not-assess", eid="INTERACT"),
    ]
    _, out_rows, _ = _run_csv(_context(settings, con, make_lake(tmp_path, rows)))
    assert [r["Message ID"] for r in out_rows] == ["mine"]


def test_date_range_is_inclusive_local_calendar_days(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    """2022-06-22 in Asia/Kolkata is 2022-06-21T18:30Z up to (excluding) 2022-06-22T18:30Z."""
    rows = [
        lake_row(mid="before", ets=_ms("2022-06-21T18:29:59.999")),
        lake_row(mid="first", ets=_ms("2022-06-21T18:30:00.000")),
        lake_row(mid="evening-utc", ets=_ms("2022-06-21T20:00:00.000")),
        lake_row(mid="last", ets=_ms("2022-06-22T18:29:59.999")),
        lake_row(mid="after", ets=_ms("2022-06-22T18:30:00.000")),
    ]
    lake = make_lake(tmp_path, rows)
    _, out_rows, _ = _run_csv(_context(settings, con, lake))
    assert [r["Message ID"] for r in out_rows] == ["first", "evening-utc", "last"]
    assert out_rows[1]["Timestamp"] == "2022-06-21T20:00:00.000Z"
    # one read of these rows, whole (no count: they fit in a slice), of these partitions
    assert lake.asked == [(date(2022, 6, 21), date(2022, 6, 22))]


def test_multi_day_range(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [lake_row(mid=f"d{d}", ets=_ms(f"2022-06-{d:02d}T12:00:00.000")) for d in range(1, 30)]
    lake = make_lake(tmp_path, rows)
    ctx = _context(settings, con, lake, startDate="2022-06-10", endDate="2022-06-12")
    _, out_rows, _ = _run_csv(ctx)
    assert [r["Message ID"] for r in out_rows] == ["d10", "d11", "d12"]
    assert lake.asked == [(date(2022, 6, 9), date(2022, 6, 12))]


def test_rows_are_ordered_by_ets_then_mid(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    t = _ms("2022-06-22T05:00:00.000")
    rows = [
        lake_row(mid="b", ets=t + 5),
        lake_row(mid="z", ets=t),
        lake_row(mid="a", ets=t + 5),
        lake_row(mid="c", ets=t + 1),
        lake_row(mid="a", ets=t + 5, item_id="q2", event_hash=_hash("h2")),  # another reply
    ]
    _, out_rows, _ = _run_csv(_context(settings, con, make_lake(tmp_path, rows)))
    assert [r["Message ID"] for r in out_rows] == ["z", "c", "a", "a", "b"]
    assert len({r["Question Id"] for r in out_rows if r["Message ID"] == "a"}) == 2


def test_text_survives_and_is_guarded(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    title = 'प्रश्न, "quoted"\nnext line'
    rows = [lake_row(item_title=title, item_desc="=HYPERLINK(1)", response='[{"ans1":"ठीक"}]')]
    _, (row,), _ = _run_csv(_context(settings, con, make_lake(tmp_path, rows)))
    assert row["Question Title"] == title
    assert row["Question Description"] == "'=HYPERLINK(1)"
    assert json.loads(row["Question Response"]) == [{"ans1": "ठीक"}]


def test_jsonl_output_keeps_types(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    ctx = _context(settings, con, make_lake(tmp_path, [lake_row(duration=3.6)]), "jsonl")
    (out,) = DATASET.run(ctx)
    (record,) = [json.loads(x) for x in b"".join(ctx.blobs.read(out.key)).splitlines()]
    assert out.name == "conv-1_response_20220623.jsonl"
    assert list(record) == list(HEADER)
    assert record["Question Duration"] == 4
    assert record["Question Score"] == 1.0
    assert record["Conversation Name"] is None


def test_no_matching_event_is_no_data_found(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    lake = make_lake(tmp_path, [lake_row(channel="ch2"), lake_row(ets=_ms("2022-06-01T00:00"))])
    ctx = _context(settings, con, lake)
    with pytest.raises(NoDataFound, match="No data found"):
        DATASET.run(ctx)
    assert list(ctx.blobs.keys()) == []


def test_progress_is_checkpointed(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [lake_row(mid=f"m{i}", ets=_ms("2022-06-22T01:00:00.000") + i) for i in range(5)]
    ctx = _context(settings, con, make_lake(tmp_path, rows))
    DATASET.run(ctx)
    assert ctx.checkpoints[0] == 0
    assert ctx.checkpoints[-1] == 5


class _SmallSlices(UciResponseExhaust):
    rows_per_slice = 1


def test_a_sliced_export_writes_the_same_file_and_reports_a_total(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    """Rows over ten hours read in slices of one row (so one hour a slice) give byte for byte
    the file of a single query; duplicates are dropped; the percentage has a total to go by."""
    start = _ms("2022-06-21T18:30:00.000")  # local midnight of 2022-06-22 in Kolkata
    rows = [lake_row(mid=f"m{i:02d}", ets=start + (i // 2) * 3_600_000 + i) for i in range(20)]
    rows += [rows[4], rows[11], rows[11]]  # retried batches: the same events again
    lakes = []
    for name in ("whole", "sliced"):
        (tmp_path / name).mkdir()
        lakes.append(make_lake(tmp_path / name, rows))
    _, _, whole_bytes = _run_csv(_context(settings, con, lakes[0]))
    ctx = _context(settings, con, lakes[1])
    out, sliced, sliced_bytes = _run_csv(ctx, _SmallSlices())
    assert sliced_bytes == whole_bytes
    assert [r["Message ID"] for r in sliced] == [f"m{i:02d}" for i in range(20)]
    assert len(lakes[0].asked) == 1  # read whole: 23 rows fit in a slice, no count
    assert len(lakes[1].asked) == 1 + 1 + 10  # the read given up, the count, a slice an hour
    assert ctx.totals[0] == 23  # counted before duplicates are dropped...
    assert (ctx.checkpoints[-1], ctx.totals[-1], out.rows) == (20, 20, 20)  # ...then corrected


class _RegisteredConversation(UciResponseExhaust):
    def conversation_name(self, ctx: RunContext, conversation_id: str) -> str | None:
        return f"Survey {conversation_id}"

    def non_consenting_devices(self, ctx: RunContext, conversation_id: str) -> list[str]:
        return ["dev-2"]


def test_registry_hooks_supply_name_and_blank_responses(
    tmp_path: Path, settings: Settings, con: duckdb.DuckDBPyConnection
) -> None:
    t = _ms("2022-06-22T01:00:00.000")
    rows = [lake_row(mid="m1", ets=t), lake_row(mid="m2", ets=t + 1, device_id="dev-2")]
    ctx = _context(settings, con, make_lake(tmp_path, rows))
    _, out_rows, _ = _run_csv(ctx, _RegisteredConversation())
    assert {r["Conversation Name"] for r in out_rows} == {"Survey conv-1"}
    assert [r["Question Response"] for r in out_rows] == ['[{"2":{"text":"2 Science"}}]', ""]
