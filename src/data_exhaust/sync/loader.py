"""Loading an exhaust file into a state's database, idempotently and in one transaction.

The tables (created when missing) have the CSV's columns in snake_case, typed (numbers, ``eof``
boolean, ``timestamp`` a timestamp, options/response JSONB on Postgres), plus ``state_id``,
``bot_id``, ``request_id``, ``loaded_at``. Response rows are keyed by ``(state_id, message_id,
row_hash)``, where ``row_hash`` is the sha256 of the row's cells joined by U+001F, and a row
already there is skipped; private rows are keyed by ``(state_id, conversation_id, device_uuid)``
and the newest file's values win. Loading the same file twice therefore writes nothing.

Postgres gets the file's bytes through ``COPY`` into a temporary table and one
``INSERT … SELECT … ON CONFLICT`` (the database parses, casts and hashes); SQLite gets batches of
``executemany``. Either way a file is loaded in a single transaction: a crash half-way leaves
no row of it behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB

from data_exhaust.sync import copy_load

SEPARATOR = "\x1f"
log = structlog.get_logger(__name__)


class LoadError(Exception):
    """The file cannot be loaded (wrong header, a value of the wrong type, a closed zip)."""


def snake(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(JSONB(), "postgresql")


RESPONSE_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "question_duration": sa.Integer(),
    "question_score": sa.Float(),
    "question_max_score": sa.Float(),
    "question_options": _json(),
    "question_response": _json(),
    "eof": sa.Boolean(),
    "timestamp": sa.DateTime(timezone=True),
}
RESPONSE_HEADER = [
    *("Message ID", "Conversation ID", "Conversation Name", "Device ID", "Session ID"),
    *("Question Id", "Question Type", "Question Title", "Question Description"),
    *("Question Duration", "Question Score", "Question Max Score", "Question Options"),
    *("Question Response", "X Path", "Eof", "Timestamp"),
]
PRIVATE_HEADER = [
    *("Conversation ID", "Conversation Name", "Decrypted Device ID", "Encrypted Device ID"),
    "Device UUID",
]

metadata = sa.MetaData()


def _columns(header: list[str], key: tuple[str, ...]) -> list[sa.Column[Any]]:
    names = [snake(h) for h in header]
    cells = [
        sa.Column(n, RESPONSE_TYPES.get(n, sa.Text()), primary_key=n in key, nullable=n not in key)
        for n in names
    ]
    return [
        sa.Column("state_id", sa.String(100), primary_key=True),
        *cells,
        sa.Column("bot_id", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
    ]


response_table = sa.Table(
    "exhaust_report_response",
    metadata,
    *_columns(RESPONSE_HEADER, ("message_id",)),
    sa.Column("row_hash", sa.String(64), primary_key=True),
)
private_table = sa.Table(
    "exhaust_report_private",
    metadata,
    *_columns(PRIVATE_HEADER, ("conversation_id", "device_uuid")),
)


@dataclass(frozen=True)
class Target:
    """Where one file's rows go and what they are tagged with."""

    table: sa.Table
    header: list[str]
    state_id: str
    bot_id: str
    request_id: str

    @property
    def columns(self) -> list[str]:
        return [snake(h) for h in self.header]

    @property
    def hashed(self) -> bool:
        return "row_hash" in self.table.c

    @property
    def conflict_keys(self) -> list[str]:
        return [c.name for c in self.table.primary_key.columns if c.name != "row_hash"]


def target_for(dataset: str, state_id: str, bot_id: str, request_id: str) -> Target:
    if dataset == "uci-private-exhaust":
        return Target(private_table, PRIVATE_HEADER, state_id, bot_id, request_id)
    return Target(response_table, RESPONSE_HEADER, state_id, bot_id, request_id)


def ensure_tables(engine: sa.Engine) -> None:
    """Create the two tables where missing; LoadError for a database other than PG/SQLite."""
    if engine.dialect.name not in ("postgresql", "sqlite"):
        raise LoadError(f"state databases must be PostgreSQL or SQLite, not {engine.dialect.name}")
    metadata.create_all(engine)


@dataclass(frozen=True)
class Loaded:
    rows: int  # rows in the file
    written: int  # rows new to the table, or (private) whose values changed


def read_header(stream: IO[bytes], target: Target) -> None:
    """Consume and check the header line (a BOM is skipped); LoadError when it differs."""
    line = stream.readline().decode("utf-8-sig").rstrip("\r\n")
    found = next(csv.reader([line]), [])
    if found != target.header:
        raise LoadError(
            f"the file's header is {','.join(found)!r}, expected {','.join(target.header)!r}; "
            "is the server newer than this client?"
        )


def load(
    engine: sa.Engine,
    stream: IO[bytes],
    *,
    target: Target,
    batch_rows: int = 5000,
    chunk_bytes: int = 256 * 1024,
) -> Loaded:
    """Load the CSV in ``stream`` into ``target``'s table, in one transaction."""
    read_header(stream, target)
    try:
        if engine.dialect.name == "postgresql":
            return Loaded(*copy_load.load_postgres(engine, stream, target, chunk_bytes))
        return _load_rows(engine, stream, target, batch_rows)
    except (sa.exc.DBAPIError, psycopg.Error) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig else exc
        first = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise LoadError(f"{target.table.name}: {first}") from None


# -- SQLite: batches of executemany in one transaction -------------


def _typed(name: str, cell: str) -> Any:
    if name in ("question_duration",):
        return int(cell) if cell else None
    if name in ("question_score", "question_max_score"):
        return float(cell) if cell else None
    if name == "eof":
        return {"true": True, "false": False}.get(cell)
    if name == "timestamp":
        return datetime.fromisoformat(cell).astimezone(UTC) if cell else None
    if name in ("question_options", "question_response"):
        return cell or None
    return cell


def _rows(stream: IO[bytes], target: Target) -> Iterator[dict[str, Any]]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    names, now = target.columns, datetime.now(UTC)
    extra = {
        "state_id": target.state_id,
        "bot_id": target.bot_id,
        "request_id": target.request_id,
        "loaded_at": now,
    }
    for line, cells in enumerate(csv.reader(text), start=2):
        if len(cells) != len(names):
            raise LoadError(f"line {line}: {len(cells)} cells, the header has {len(names)}")
        try:
            row = {n: _typed(n, c) for n, c in zip(names, cells, strict=True)}
        except ValueError as exc:
            raise LoadError(f"line {line}: {exc}") from None
        if target.hashed:
            row["row_hash"] = hashlib.sha256(SEPARATOR.join(cells).encode()).hexdigest()
        yield {**row, **extra}


def _insert_statement(target: Target) -> Any:
    stmt = sqlite.insert(target.table)
    if target.hashed:
        return stmt.on_conflict_do_nothing()
    keys = set(target.conflict_keys) | {"state_id"}
    updates = {c.name: stmt.excluded[c.name] for c in target.table.c if c.name not in keys}
    changed = [target.table.c[n].is_distinct_from(stmt.excluded[n]) for n in target.columns]
    return stmt.on_conflict_do_update(
        index_elements=sorted(keys), set_=updates, where=sa.or_(*changed)
    )


def _load_rows(engine: sa.Engine, stream: IO[bytes], target: Target, batch_rows: int) -> Loaded:
    """SQLite: ``executemany`` batches; sqlite3's ``total_changes`` counts what was written."""
    stmt, rows, batch = _insert_statement(target), 0, []
    with engine.begin() as conn:
        sqlite_conn = conn.connection.driver_connection
        before = sqlite_conn.total_changes  # type: ignore[union-attr]
        for row in _rows(stream, target):
            batch.append(row)
            if len(batch) >= batch_rows:
                conn.execute(stmt, batch)
                rows, batch = rows + len(batch), []
                log.debug("sync.load.progress", request_id=target.request_id, rows=rows)
        if batch:
            conn.execute(stmt, batch)
            rows += len(batch)
        written = sqlite_conn.total_changes - before  # type: ignore[union-attr]
    return Loaded(rows, written)
