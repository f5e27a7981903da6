"""Database engines and migrations (SQLite by default, Postgres by URL)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest migration. A test checks it is Alembic's head, so it cannot fall behind.
HEAD = "0005"


#: Connections an engine keeps open, and how many more it opens in a burst. The API runs its
#: database calls in up to 40 threads (AnyIO's default): with SQLAlchemy's default 5 + 10, every
#: call beyond the fifteenth waited and those beyond the fifth opened and closed a connection
#: (on Postgres a new server process each time).
POOL_SIZE = {"pool_size": 20, "max_overflow": 20}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the settings this service relies on (WAL and busy timeout on SQLite).

    JSON columns are read with orjson: the job table has four, and stdlib ``json`` was the
    largest single cost of turning a listed job's row into a job (4.1 µs against 0.9 µs per
    column value on the bench machine)."""
    kwargs.setdefault("json_deserializer", orjson.loads)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        in_memory = not parsed.database or parsed.database == ":memory:"
        if not in_memory:
            Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # an in-memory database keeps the pool SQLAlchemy gives it (one connection)
            **{**({} if in_memory else POOL_SIZE), **kwargs},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **{**POOL_SIZE, **kwargs})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent).

    Alembic (slow to import) only runs when the schema is not already at :data:`HEAD`, so
    every CLI command can afford to call this.
    """
    if current_revision(url) == HEAD:
        return
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def current_revision(url: str) -> str | None:
    """The revision recorded in ``alembic_version`` (None for a new database)."""
    engine = make_engine(url)  # also creates the SQLite file's directory
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None
    finally:
        engine.dispose()
