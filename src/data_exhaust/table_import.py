"""CSV imports of the data-collection tables (seed 003): ``teams`` and ``form-responses``.

Both only insert: every row gets the task id, so :func:`rollback_teams` /
:func:`rollback_form_responses` remove exactly what one task created and nothing else.

- teams: ``name,description,manager,members`` (``name`` 1–600 characters, ``manager`` at
  most 20), checked column-wise and written with one ``COPY … (FORMAT csv)`` per batch on
  Postgres (:func:`data_exhaust.import_core.run_plan`);
- form-responses: the export's columns (datasets.md §6), ``timestamp`` ISO-8601 (a time
  without a zone is in ``EXHAUST_TIMEZONE``), latitude/longitude decimal degrees or empty,
  ``mobile_no`` digits with an optional leading ``+`` (at most 20 characters).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import structlog
from sqlalchemy import Connection, Engine, delete, insert, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from data_exhaust.csv_lines import Source
from data_exhaust.import_core import BatchCallback, ImportResult, Plan, rowcount, run_plan
from data_exhaust.models import FormResponse, Team, task_index_name

if TYPE_CHECKING:
    from psycopg.sql import Composed

TEAMS = ("name", "description", "manager", "members")
FORM_RESPONSES = (
    "timestamp",
    "user",
    "name_of_respondent",
    "gender_of_respondent",
    "reading_books",
    "listening_music",
    "mobile_no",
    "record_latitude",
    "record_longitude",
)
TEAM_LIMITS = {"name": 600, "description": 10_000, "manager": 20, "members": 10_000}
FORM_LIMITS = {
    "timestamp": 40,
    "user": 200,
    "name_of_respondent": 200,
    "gender_of_respondent": 20,
    "reading_books": 100,
    "listening_music": 100,
    "mobile_no": 20,
    "record_latitude": 40,
    "record_longitude": 40,
}
log = structlog.get_logger(__name__)
Model = type[Team] | type[FormResponse]
NAME_REQUIRED = "name is required (1 to 600 characters)"
CSV_OUT = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
MOBILE = re.compile(r"\+?[0-9]{3,19}")


def import_teams(
    engine: Engine, source: Source, task_id: str, *, strict: bool = False,
    batch_rows: int = 1000, on_batch: BatchCallback | None = None, writers: int = 1,
) -> ImportResult:  # fmt: skip
    """Insert one team per line (validated column-wise: lengths, ``name`` not empty); on
    Postgres ``writers`` connections commit batches at once (see ``EXHAUST_IMPORT_WRITERS``)."""
    plan = teams_plan(engine, task_id, batch_rows, on_batch, writers=writers)
    with summarized(engine, Team):
        return run_plan(plan, source, strict)


def teams_plan(
    engine: Engine, task_id: str, batch_rows: int = 1000, on_batch: BatchCallback | None = None,
    *, columnar: bool = True, block_bytes: int = 1 << 20, writers: int = 1,
) -> Plan:  # fmt: skip
    """The teams import; ``columnar=False`` is the row-by-row path (the reference the tests
    compare the column-wise path with)."""
    return Plan(
        "teams", engine, task_id, lambda _header: _team, partial(_insert, Team, task_id),
        (TEAMS,), TEAM_LIMITS, rollback_teams, batch_rows, on_batch=on_batch,
        write_table=partial(_write_table, Team, task_id) if columnar else None,
        required={"name": NAME_REQUIRED}, block_bytes=block_bytes, writers=writers,
    )  # fmt: skip


def import_form_responses(
    engine: Engine, source: Source, task_id: str, *, tz: tzinfo, strict: bool = False,
    batch_rows: int = 1000, on_batch: BatchCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Insert one form response per line."""
    plan = Plan(
        "form-responses", engine, task_id, lambda _header: partial(_form_response, tz),
        partial(_insert, FormResponse, task_id), (FORM_RESPONSES,), FORM_LIMITS,
        rollback_form_responses, batch_rows, on_batch=on_batch,
    )  # fmt: skip
    with summarized(engine, FormResponse):
        return run_plan(plan, source, strict)


def rollback_teams(engine: Engine, task_id: str) -> int:
    return _delete(engine, Team, task_id)


def rollback_form_responses(engine: Engine, task_id: str) -> int:
    return _delete(engine, FormResponse, task_id)


def _delete(engine: Engine, model: Model, task_id: str) -> int:
    """Delete one task's rows. On Postgres through the BRIN task index (``models.task_index``)
    even where the planner's statistics, not yet updated after a large import, would pick a
    scan of the whole table: the index reads the summarised ranges that may hold the task
    and the ranges not summarised yet (the newest rows, :func:`summarized`), so the cost
    follows the task's rows, not the table's (5 M rows: 11 ms with no row to delete, 99 ms for
    200,000, where the planner's table scan took 514 ms)."""
    if not task_id:
        raise ValueError("task_id is required")
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.execute(text("SET LOCAL enable_seqscan = off"))
        return rowcount(session.execute(delete(model).where(model.task_id == task_id)))


@contextmanager
def summarized(engine: Engine, model: Model) -> Iterator[None]:
    """On Postgres, once the import ends (done, stopped or failed), summarise the task
    index's new page ranges (26-29 ms for a 200,000-row task) rather than wait for
    autovacuum: until then a rollback or an import's undo of an earlier attempt reads them
    all (:func:`_delete`). Only an optimisation: if it fails (the database went away, which
    fails the import anyway), the import's own outcome stands and autovacuum summarises later."""
    try:
        yield
    finally:
        if engine.dialect.name == "postgresql":
            index = task_index_name(model.__tablename__)
            try:
                with engine.begin() as connection:
                    summarize = "SELECT brin_summarize_new_values(CAST(:index AS regclass))"
                    connection.execute(text(summarize), {"index": index})
            except SQLAlchemyError as exc:
                log.warning("import.summarize_failed", index=index, error=str(exc))


def _insert(
    model: Model, task_id: str, session: Session,
    batch: list[tuple[int, Any]], result: ImportResult, write: bool,
) -> None:  # fmt: skip
    result.accepted += len(batch)
    if not write:
        return
    rows = [{**row, "task_id": task_id} for _, row in batch]
    if rows and session.get_bind().dialect.name == "postgresql":
        _copy(session, model.__tablename__, rows)
    elif rows:
        session.execute(insert(model), rows)
    result.inserted += len(batch)


def _copy(session: Session, table: str, rows: list[dict[str, Any]]) -> None:
    """Postgres: stream the batch with ``COPY … FROM STDIN`` inside the batch's transaction
    (several times faster than multi-row INSERTs; rollback by task id is unchanged)."""
    columns = list(rows[0])
    statement = _copy_statement(table, columns)
    raw = session.connection().connection.driver_connection
    assert raw is not None  # a checked-out connection always has its DBAPI connection
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[column] for column in columns])


def _copy_statement(table: str, columns: list[str], options: str = "") -> Composed:
    """``COPY table (columns) FROM STDIN<options>`` with quoted identifiers. psycopg is
    imported here, not with the module: the SQLite default never loads it (~26 MB of RSS)."""
    from psycopg import sql

    return sql.SQL("COPY {} ({}) FROM STDIN" + options).format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def _write_table(model: Model, task_id: str, connection: Connection, table: pa.Table) -> None:
    """Insert a validated batch tagged with ``task_id``; on Postgres one ``COPY … FROM STDIN
    (FORMAT csv)`` of the batch written by pyarrow (every value quoted: never NULL)."""
    table = table.combine_chunks()  # pyarrow 26's CSV writer garbles some chunked slices
    table = table.append_column("task_id", pa.nulls(table.num_rows, pa.string()).fill_null(task_id))
    if connection.dialect.name != "postgresql":
        connection.execute(insert(model), table.to_pylist())
        return
    statement = _copy_statement(model.__tablename__, table.column_names, " (FORMAT csv)")
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, CSV_OUT)
    raw = connection.connection.driver_connection
    assert raw is not None  # a checked-out connection always has its DBAPI connection
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(sink.getvalue().to_pybytes())


def _team(values: list[str]) -> dict[str, Any]:
    name, description, manager, members = values
    if not name:
        raise ValueError(NAME_REQUIRED)
    return {"name": name, "description": description, "manager": manager, "members": members}


def _form_response(tz: tzinfo, values: list[str]) -> dict[str, Any]:
    row = dict(zip(FORM_RESPONSES, values, strict=True))
    if row["mobile_no"] and not MOBILE.fullmatch(row["mobile_no"]):
        raise ValueError("mobile_no must be digits with an optional leading +")
    return {
        **row,
        "timestamp": parse_moment(row["timestamp"], tz, "timestamp"),
        "record_latitude": _degrees(row["record_latitude"], "record_latitude", 90),
        "record_longitude": _degrees(row["record_longitude"], "record_longitude", 180),
    }


def parse_moment(value: str, tz: tzinfo, name: str) -> datetime:
    """An ISO-8601 date or date-time (``2020-05-15 00:00`` too); no zone: in ``tz``."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be an ISO-8601 date-time like 2020-05-15T10:30") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def _degrees(value: str, name: str, limit: int) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a decimal number of degrees") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise ValueError(f"{name} must be between -{limit} and {limit}")
    return number
