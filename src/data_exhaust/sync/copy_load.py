"""Postgres loading: the file's bytes go through ``COPY`` into a temporary table, and one
``INSERT … SELECT … ON CONFLICT`` casts, hashes and merges them, all in one transaction.

Every cell arrives as text (``FORCE_NOT_NULL``: an empty cell is ``''``, as in Python's
``csv``), so the row hash computed here, ``sha256`` of the cells joined by U+001F, is the one
the SQLite path computes in Python.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from psycopg import sql

if TYPE_CHECKING:
    from data_exhaust.sync.loader import Target

log = structlog.get_logger(__name__)
CASTS = {
    "question_duration": "integer",
    "question_score": "double precision",
    "question_max_score": "double precision",
    "question_options": "jsonb",
    "question_response": "jsonb",
    "eof": "boolean",
    "timestamp": "timestamptz",
}


def _cast(name: str) -> sql.Composable:
    column = sql.Identifier("s", name)
    if name in CASTS:
        return sql.SQL("NULLIF({}, '')::{}").format(column, sql.SQL(CASTS[name]))
    return column


def _row_hash(columns: list[str]) -> sql.Composable:
    cells = sql.SQL(", ").join(sql.Identifier("s", n) for n in columns)
    return sql.SQL("encode(sha256(convert_to(concat_ws(chr(31), {}), 'UTF8')), 'hex')").format(
        cells
    )


def _merge(target: Target) -> sql.Composable:
    columns = target.columns
    names = [*columns, "state_id", "bot_id", "request_id", "loaded_at"]
    values = [_cast(n) for n in columns] + [
        sql.Placeholder("state_id"),
        sql.Placeholder("bot_id"),
        sql.Placeholder("request_id"),
        sql.SQL("now()"),
    ]
    if target.hashed:
        names.append("row_hash")
        values.append(_row_hash(columns))
        conflict: sql.Composable = sql.SQL("DO NOTHING")
    else:
        conflict = _upsert(target)
    keys = ["state_id", *target.conflict_keys, *(["row_hash"] if target.hashed else [])]
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM _exhaust_stage AS s ON CONFLICT ({}) {}"
    ).format(
        sql.Identifier(target.table.name),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(values),
        sql.SQL(", ").join(map(sql.Identifier, dict.fromkeys(keys))),
        conflict,
    )


def _upsert(target: Target) -> sql.Composable:
    """Private rows: the newest file's values win, and an unchanged row is not rewritten."""
    keys = {"state_id", *target.conflict_keys}
    updated = [n for n in [*target.columns, "bot_id", "request_id", "loaded_at"] if n not in keys]
    table = sql.Identifier(target.table.name)
    return sql.SQL("DO UPDATE SET {} WHERE {}").format(
        sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n in updated
        ),
        sql.SQL(" OR ").join(
            sql.SQL("{}.{} IS DISTINCT FROM EXCLUDED.{}").format(
                table, sql.Identifier(n), sql.Identifier(n)
            )
            for n in target.columns
            if n not in keys
        ),
    )


def load_postgres(
    engine: sa.Engine, stream: IO[bytes], target: Target, chunk_bytes: int
) -> tuple[int, int]:
    """(rows in the file, rows written) after loading the rest of ``stream`` (header read)."""
    columns = target.columns
    stage = sql.SQL("CREATE TEMP TABLE _exhaust_stage ({}) ON COMMIT DROP").format(
        sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(n)) for n in columns)
    )
    copy = sql.SQL("COPY _exhaust_stage FROM STDIN (FORMAT csv, FORCE_NOT_NULL ({}))").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(stage)
            with cur.copy(copy) as pipe:
                sent = 0
                while chunk := stream.read(chunk_bytes):
                    pipe.write(chunk)
                    sent += len(chunk)
                    log.debug("sync.load.progress", request_id=target.request_id, bytes=sent)
            rows = cur.rowcount
            cur.execute(_merge(target), _params(target))
            return rows, cur.rowcount


def _params(target: Target) -> dict[str, str]:
    return {"state_id": target.state_id, "bot_id": target.bot_id, "request_id": target.request_id}
