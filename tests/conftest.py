"""Shared fixtures: real databases (SQLite files, and Postgres databases cloned from a migrated
template), settings in a temporary data dir, and a service stack over them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from data_exhaust.db import migrate
from data_exhaust.services import Services, build_services
from data_exhaust.settings import Settings

pytest_plugins = ["tests.pii_guard"]

# No timed assertions: Hypothesis's default 200 ms deadline per example failed a property test
# on a slow 2-core machine (284 ms on its first call, 40 ms on the next) with nothing wrong.
hypothesis_settings.register_profile("exhaust", deadline=None)
hypothesis_settings.load_profile("exhaust")

PG_HOST = os.environ.get("EXHAUST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI") == "true"
#: How long a service may take to answer when a test needs it: in CI a minute (a broker back
#: from a restart, a busy database), locally one try (then the test is skipped).
SERVICE_PATIENCE = 60.0 if IN_CI else 0.0

T = TypeVar("T")


def patiently(attempt: Callable[[], T | None], patience: float = SERVICE_PATIENCE) -> T | None:
    """``attempt()``'s first result that is not None, tried every 0.5 s for ``patience`` s."""
    deadline = time.monotonic() + patience
    while (result := attempt()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``predicate`` holds (a deadline guards against hangs; not a timing test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def need(service: str, available: bool) -> None:
    """Skip locally when a service is absent; in CI that is a failure, never a skip."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{service} is not running; CI must test against it")
    pytest.skip(f"{service} is not running")


def _pg_connect() -> psycopg.Connection[tuple[object, ...]] | None:
    try:
        return psycopg.connect(f"{PG_HOST}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None


def _pg_admin() -> psycopg.Connection[tuple[object, ...]] | None:
    return patiently(_pg_connect)


def sa_url(database: str) -> str:
    return f"{PG_HOST.replace('postgresql://', 'postgresql+psycopg://')}/{database}"


@contextmanager
def new_database(name: str, template: str | None = None) -> Iterator[str]:
    """A Postgres database ``name`` (a copy of ``template``, else empty), dropped afterwards."""
    admin = _pg_admin()
    need("PostgreSQL", admin is not None)
    assert admin is not None
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        copy = f' TEMPLATE "{template}"' if template else ""
        admin.execute(f'CREATE DATABASE "{name}"{copy}')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated once per test session; each test clones it (fast, isolated)."""
    with new_database(f"exhaust_tpl_{os.getpid()}") as name:
        migrate(sa_url(name))
        yield name


@pytest.fixture
def postgres_url(pg_template: str) -> Iterator[str]:
    with new_database(f"exhaust_t_{uuid.uuid4().hex[:12]}", pg_template) as name:
        yield sa_url(name)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A new, empty Postgres database (a state's own database in the client-sync tests)."""
    with new_database(f"exhaust_state_{uuid.uuid4().hex[:12]}") as name:
        yield sa_url(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'exhaust.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test using this runs on SQLite and on Postgres."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "secret_key": "test-secret",
        "lease_seconds": 3.0,
        "poll_seconds": 0.2,
        "retry_backoff_seconds": 0.0,
        "compact_interval_seconds": 0,
        "plugins": ["tests.plugins:CountingDataset"],
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings)
    yield built
    built.close()
