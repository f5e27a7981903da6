"""Loading exhaust CSVs into a state's database (Postgres through COPY, SQLite in batches):
cell-for-cell equal, typed, idempotent, atomic."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from data_exhaust.sync import loader
from data_exhaust.sync.loader import PRIVATE_HEADER, RESPONSE_HEADER, Loaded, LoadError

TRICKY = [
    "Which subject, of all, do you like?",
    'Did the teacher say "well done", twice: ""?',
    "Line one\nline two\r\nline three",
    "आपका पसंदीदा विषय कौन सा है? (हिन्दी, मराठी)",
    "'=1+1 guarded by the server",
    "",
    " leading and trailing spaces ",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = str(request.getfixturevalue("empty_postgres_url"))
    engine = sa.create_engine(url)
    loader.ensure_tables(engine)
    yield engine
    engine.dispose()


def response_row(n: int, title: str) -> list[str]:
    return [
        f"mid-{n}",
        "bot-1",
        "Quiz, the first",
        f"dev-{n % 3}",
        f"sid-{n}",
        f"q{n}",
        "mcq",
        title,
        f"desc of {title}",
        str(n),
        "0.5" if n % 2 else "1",
        "1",
        json.dumps([{"1": {"text": '1 गणित, "maths"'}}], ensure_ascii=False),
        "" if n % 4 == 0 else json.dumps([{"ans1": f"answer, {n}"}]),
        "/data/q",
        "true" if n % 5 == 4 else "false",
        f"2026-10-05T09:{n % 60:02}:07.{n % 1000:03}Z",
    ]


def csv_bytes(header: list[str], rows: list[list[str]], bom: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return ("\ufeff" if bom else "").encode() + out.getvalue().encode()


def load(
    engine: sa.Engine, data: bytes, dataset: str = "uci-response-exhaust", **kw: Any
) -> Loaded:
    target = loader.target_for(dataset, "up", "bot-1", kw.pop("request_id", "REQ1"))
    return loader.load(engine, io.BytesIO(data), target=target, batch_rows=3, chunk_bytes=1024)


def table(engine: sa.Engine, name: str) -> list[dict[str, Any]]:
    order = "device_uuid" if name.endswith("private") else "message_id"
    with engine.connect() as conn:
        found = conn.execute(sa.text(f"SELECT * FROM {name} ORDER BY {order}"))
        return [dict(r._mapping) for r in found]


def as_cells(row: dict[str, Any]) -> list[str]:
    """A loaded row written back the way the CSV writes it."""
    stamp = row["timestamp"]
    stamp = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
    stamp = stamp.replace(tzinfo=stamp.tzinfo or UTC).astimezone(UTC)

    def number(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else repr(value)

    def compact(value: Any) -> str:
        if value is None:
            return ""
        parsed = json.loads(value) if isinstance(value, str) else value
        return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))

    names = [loader.snake(h) for h in RESPONSE_HEADER]
    cells = {n: row[n] for n in names}
    cells.update(
        question_duration=str(row["question_duration"]),
        question_score=number(row["question_score"]),
        question_max_score=number(row["question_max_score"]),
        question_options=compact(row["question_options"]),
        question_response=compact(row["question_response"]),
        eof="true" if row["eof"] else "false",
        timestamp=stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    )
    return [cells[n] for n in names]


def compact_json(cells: list[str]) -> list[str]:
    """The JSON cells of a CSV row in compact form (how the server writes them)."""
    fixed = list(cells)
    for i in (12, 13):
        if fixed[i]:
            fixed[i] = json.dumps(json.loads(fixed[i]), ensure_ascii=False, separators=(",", ":"))
    return fixed


def test_tricky_text_loads_cell_for_cell_equal_and_reloading_adds_nothing(
    state_db: sa.Engine,
) -> None:
    rows = [response_row(n, TRICKY[n % len(TRICKY)]) for n in range(1, 15)]
    data = csv_bytes(RESPONSE_HEADER, rows, bom=True)
    assert load(state_db, data) == Loaded(rows=14, written=14)
    loaded = table(state_db, "exhaust_report_response")
    assert sorted(as_cells(r) for r in loaded) == sorted(compact_json(r) for r in rows)
    for row in loaded:  # the key's hash is the one the spec defines, on both databases
        cells = next(c for c in rows if c[0] == row["message_id"])
        assert row["row_hash"] == hashlib.sha256("\x1f".join(cells).encode()).hexdigest()
        assert (row["state_id"], row["bot_id"], row["request_id"]) == ("up", "bot-1", "REQ1")

    assert load(state_db, data, request_id="REQ2") == Loaded(rows=14, written=0)
    assert len(table(state_db, "exhaust_report_response")) == 14


def test_columns_are_typed(state_db: sa.Engine) -> None:
    load(state_db, csv_bytes(RESPONSE_HEADER, [response_row(4, "t")]))
    (row,) = table(state_db, "exhaust_report_response")
    assert row["question_duration"] == 4 and row["question_score"] == 1.0
    assert row["eof"] in (True, 1) and row["question_response"] is None
    if state_db.dialect.name == "postgresql":
        assert isinstance(row["timestamp"], datetime) and row["timestamp"].tzinfo is not None
        assert row["question_options"] == [{"1": {"text": '1 गणित, "maths"'}}]  # JSONB
        with state_db.connect() as conn:
            kinds: dict[str, str] = dict(
                conn.execute(
                    sa.text(
                        "SELECT column_name, data_type FROM information_schema.columns"
                        " WHERE table_name = 'exhaust_report_response'"
                    )
                ).all()
            )
        assert kinds["timestamp"] == "timestamp with time zone" and kinds["eof"] == "boolean"
        assert kinds["question_options"] == "jsonb" and kinds["question_duration"] == "integer"


def test_a_bad_value_half_way_loads_nothing_of_the_file(state_db: sa.Engine) -> None:
    rows = [response_row(n, "t") for n in range(1, 20)]
    rows[12][16] = "yesterday-ish"
    with pytest.raises(LoadError, match="yesterday-ish"):
        load(state_db, csv_bytes(RESPONSE_HEADER, rows))
    assert table(state_db, "exhaust_report_response") == []


def test_a_file_with_another_header_is_refused_with_both_headers(state_db: sa.Engine) -> None:
    header = [*RESPONSE_HEADER[:-1], "When"]
    with pytest.raises(LoadError, match=r"expected 'Message ID,.*Timestamp'; is the server newer"):
        load(state_db, csv_bytes(header, [response_row(1, "t")]))
    assert table(state_db, "exhaust_report_response") == []


def test_private_rows_are_one_per_device_and_the_newest_file_wins(state_db: sa.Engine) -> None:
    def private(decrypted: str) -> bytes:
        rows = [["bot-1", "Quiz", decrypted if d == 1 else f"dev-{d}", "b64==", f"dev-{d}"]
                for d in range(1, 4)]  # fmt: skip
        return csv_bytes(PRIVATE_HEADER, rows)

    assert load(state_db, private("dev-1"), "uci-private-exhaust") == Loaded(3, 3)
    assert load(state_db, private("dev-1"), "uci-private-exhaust", request_id="R2") == Loaded(3, 0)
    assert load(state_db, private("phone:+10000000000"), "uci-private-exhaust") == Loaded(3, 1)
    loaded = table(state_db, "exhaust_report_private")
    assert [r["device_uuid"] for r in loaded] == ["dev-1", "dev-2", "dev-3"]
    assert loaded[0]["decrypted_device_id"] == "phone:+10000000000"


def test_only_postgres_and_sqlite_state_databases_are_accepted() -> None:
    engine = sa.create_mock_engine("mysql+pymysql://nobody@127.0.0.1/none", lambda *_: None)
    with pytest.raises(LoadError, match="PostgreSQL or SQLite, not mysql"):
        loader.ensure_tables(engine)  # type: ignore[arg-type]  # a mock: only its dialect is read
