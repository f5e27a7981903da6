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


def test_migrations_give_postgres_indexes_the_models_methods(postgres_url: str) -> None:
    # compare_metadata does not compare index methods: the task indexes must be BRIN, the
    # others B-trees, as the models declare
    expected = {
        index.name: index.dialect_options["postgresql"]["using"] or "btree"
        for table in Base.metadata.tables.values()
        for index in table.indexes
    }
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT i.relname, am.amname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_am am ON am.oid = i.relam JOIN pg_namespace n ON n.oid = i.relnamespace "
            "WHERE n.nspname = 'public' AND NOT x.indisprimary"
        ).all()
    engine.dispose()
    found = {name: method for name, method in rows if name in expected}
    assert found == expected
    assert found["ix_team_task_id"] == found["ix_form_response_task_id"] == "brin"


def test_migrate_is_idempotent(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)


def test_head_constant_is_alembics_head(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    from data_exhaust.db import HEAD, alembic_config, current_revision

    assert ScriptDirectory.from_config(alembic_config(database_url)).get_current_head() == HEAD
    assert current_revision(database_url) == HEAD
