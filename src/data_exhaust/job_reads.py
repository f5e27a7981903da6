"""Job reads from the API's event loop, without a thread hop (the read and list routes).

Clients poll ``read`` and ``list``; each poll is one or two rows. Through the blocking store in
AnyIO's thread pool a read cost ~3 ms of the server's single core, of which the thread hop
alone (GIL hand-over both ways) was ~0.6 ms and SQLAlchemy's connection checkout and Core
execution ~0.4 ms (SQLite; on Postgres the pool's pre-ping adds a round trip), against ~20 µs
for the query itself through the DB-API (bench/README.md, API). A :class:`LoopReads` therefore
runs these two statements itself, from the event loop:

* :class:`SqliteLoopReads`: one ``sqlite3`` connection of the loop's thread, with
  ``busy_timeout = 0`` and ``query_only``. In WAL mode (which :func:`data_exhaust.db.make_engine`
  sets) a reader never waits for a writer, and a primary-key read takes tens of microseconds, so
  the loop is not held up; if SQLite ever answers "database is locked" (no WAL, a recovery in
  progress), the read is retried in the thread pool, where waiting is allowed.
* :class:`PostgresLoopReads`: a pool of psycopg async connections (autocommit: no transaction
  is left open between polls), not pinged before each read; a read on a connection the
  server dropped is redone in the thread pool, through the engine, whose pool pre-pings.

The statements are the SQLAlchemy ones of :mod:`data_exhaust.store`, compiled once for the
dialect, and their rows go through the same type processors as Core's, so a job read here is
equal to one read by :meth:`~data_exhaust.store.SqlJobStore.get` (the store contract tests
check it). Reads are opened in the loop that uses them (the app's lifespan,
:meth:`JobStore.open_loop_reads`) and closed there.
"""

from __future__ import annotations

import itertools
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import Engine, Select, bindparam, select

from data_exhaust.jobs import Job
from data_exhaust.models import JOBS

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

#: Numbers the SQLite loop connections of this process, so that a version of one never
#: equals a version of another (``data_version`` counts per connection).
_CONNECTIONS = itertools.count()


def by_id(columns: Select[Any]) -> Select[Any]:
    return columns.where(JOBS.c.request_id == bindparam("request_id"))


def by_tag(columns: Select[Any]) -> Select[Any]:
    """A tag's page, newest first (the index on ``(tag, dt_job_submitted)`` serves it)."""
    return (
        columns.where(JOBS.c.tag == bindparam("tag"))
        .order_by(JOBS.c.dt_job_submitted.desc(), JOBS.c.request_id)
        .limit(bindparam("limit"))
    )


@dataclass(frozen=True)
class JobBuilder:
    """How the store makes a job of a row: (job field, column) pairs and the function taking
    the processed values by field (``store.JOB_COLUMNS`` and ``store.job_of``)."""

    columns: Sequence[tuple[str, str]]
    build: Callable[[dict[str, Any]], Job]


class ReadInThread(Exception):
    """The loop's read cannot be answered here: SQLite would make it wait for a lock, or
    Postgres dropped its connection (a restart, a failover, an idle timeout). The store reads
    in the thread pool instead, where waiting is allowed and the engine's pool pre-pings."""


class _Statement:
    """A SELECT of the job's columns (in :class:`JobBuilder` order) compiled for one dialect;
    its raw rows become jobs through the column types' own result processors (those Core
    applies), only where a column has one."""

    def __init__(
        self, where: Callable[[Select[Any]], Select[Any]], engine: Engine, jobs: JobBuilder
    ) -> None:
        dialect = engine.dialect
        columns = [JOBS.c[column] for _, column in jobs.columns]
        compiled = where(select(*columns)).compile(dialect=dialect)
        self.sql = str(compiled)
        self.order = list(compiled.positiontup or [])  # qmark: the parameters' order
        self.defaults = dict(compiled.params)  # e.g. SQLite's OFFSET that LIMIT brings
        self.names = [name for name, _ in jobs.columns]
        processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        self.processed = [
            (name, process)
            for name, process in zip(self.names, processors, strict=True)
            if process is not None
        ]
        self.build = jobs.build

    def parameters(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = {**self.defaults, **values}
        return [values[name] for name in self.order] if self.order else values

    def jobs(self, raw: Sequence[Sequence[Any]]) -> list[Job]:
        found = []
        for row in raw:
            values = dict(zip(self.names, row, strict=True))
            for name, process in self.processed:
                if values[name] is not None:
                    values[name] = process(values[name])
            found.append(self.build(values))
        return found


class LoopReads(ABC):
    """The API's two hot reads, run from the event loop they were opened in."""

    def __init__(self, engine: Engine, jobs: JobBuilder) -> None:
        self.by_id = _Statement(by_id, engine, jobs)
        self.by_tag = _Statement(by_tag, engine, jobs)

    async def get(self, request_id: str) -> Job | None:
        found = await self.fetch(self.by_id, {"request_id": request_id})
        return found[0] if found else None

    async def tag_page(self, tag: str, limit: int) -> list[Job]:
        return await self.fetch(self.by_tag, {"tag": tag, "limit": limit})

    @abstractmethod
    async def fetch(self, statement: _Statement, values: dict[str, Any]) -> list[Job]:
        """The jobs of ``statement``; raises :class:`ReadInThread` when it cannot answer."""

    def version(self) -> tuple[int, int] | None:
        """A value that stays the same exactly while no job changes, read in microseconds;
        None where the database cannot tell that cheaply (then polls reuse nothing)."""
        return None

    @abstractmethod
    async def close(self) -> None: ...


class SqliteLoopReads(LoopReads):
    """One connection of the event loop's thread; it never waits for a lock (see module)."""

    def __init__(self, engine: Engine, jobs: JobBuilder) -> None:
        super().__init__(engine, jobs)
        path = engine.url.database or ""
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self.connection.execute("PRAGMA busy_timeout = 0")
        self.connection.execute("PRAGMA query_only = ON")
        self.number = next(_CONNECTIONS)

    def version(self) -> tuple[int, int] | None:
        """This connection's number and SQLite's ``data_version``, which changes whenever
        another connection (of this process or any other) commits to the database: this one
        only reads. ``PRAGMA data_version`` opens a read transaction, so it sees every commit
        made before it was asked. None if the database is locked (no WAL)."""
        try:
            row = self.connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.OperationalError:
            return None
        return self.number, int(row[0])

    async def fetch(self, statement: _Statement, values: dict[str, Any]) -> list[Job]:
        try:
            cursor = self.connection.execute(statement.sql, statement.parameters(values))
            try:  # fetch every row: an unfinished statement would keep its old snapshot
                raw = cursor.fetchall()
            finally:
                cursor.close()
        except sqlite3.OperationalError as exc:  # "database is locked": no WAL, or a recovery
            log.debug("job_reads.sqlite_locked", error=str(exc))
            raise ReadInThread from exc
        return statement.jobs(raw)

    async def close(self) -> None:
        self.connection.close()


class PostgresLoopReads(LoopReads):
    """A psycopg async pool, opened in the running loop by :meth:`open`."""

    def __init__(self, engine: Engine, jobs: JobBuilder, pool: AsyncConnectionPool) -> None:
        super().__init__(engine, jobs)
        self.pool = pool

    @classmethod
    async def open(cls, engine: Engine, jobs: JobBuilder, size: int) -> PostgresLoopReads:
        from psycopg_pool import AsyncConnectionPool  # here: the SQLite server never loads it

        url = engine.url.set(drivername="postgresql")
        pool = AsyncConnectionPool(
            url.render_as_string(hide_password=False), min_size=1, max_size=size,
            kwargs={"autocommit": True}, configure=_configure, open=False,
            name="exhaust-api-reads",
        )  # fmt: skip
        await pool.open(wait=True, timeout=30)
        return cls(engine, jobs, pool)

    async def fetch(self, statement: _Statement, values: dict[str, Any]) -> list[Job]:
        from psycopg import OperationalError

        try:
            async with self.pool.connection() as connection:
                cursor = await connection.execute(statement.sql, statement.parameters(values))
                raw = await cursor.fetchall()
        except OperationalError as exc:  # the pool discards the broken connection itself
            log.warning("job_reads.postgres_connection_lost", error=str(exc))
            raise ReadInThread from exc
        return statement.jobs(raw)

    async def close(self) -> None:
        await self.pool.close()


async def _configure(connection: AsyncConnection[Any]) -> None:
    from psycopg.types.json import set_json_loads

    set_json_loads(orjson.loads, connection)  # as fast as the engine's (db.make_engine)


async def open_loop_reads(engine: Engine, jobs: JobBuilder, pool_size: int) -> LoopReads | None:
    """The loop reads for ``engine``'s database, or None where there are none (an in-memory
    SQLite database is one connection's own: a second connection would see another one)."""
    if engine.dialect.name == "postgresql":
        return await PostgresLoopReads.open(engine, jobs, pool_size)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return SqliteLoopReads(engine, jobs)
    return None
