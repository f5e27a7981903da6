"""The Alembic migrations produce exactly the models' schema, on SQLite and on Postgres."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from data_exhaust.db import make_engine, migrate
from data_exhaust.models import Base


def test_migrations_equal_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_migrate_is_idempotent(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)


def test_head_constant_is_alembics_head(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    from data_exhaust.db import HEAD, alembic_config, current_revision

    assert ScriptDirectory.from_config(alembic_config(database_url)).get_current_head() == HEAD
    assert current_revision(database_url) == HEAD
