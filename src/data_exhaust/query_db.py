"""The one DuckDB database a worker process runs every job's queries in.

Opening and closing a DuckDB database cost ~45 ms, a third of a small export's time when each
job opened its own. A process now opens one in-memory database
the first time a job needs it, and each job gets its own connection to it (``cursor()``, well
under a millisecond). Connections are what DuckDB interrupts, closes and keeps temp tables in,
so a job's stop, its temp tables and its close still concern that job alone.

One database also means one memory cap: ``EXHAUST_DUCKDB_MEMORY_LIMIT`` bounds the DuckDB
memory of all the jobs running in the process together, and a sort beyond it spills to
``<data dir>/spill``. Parquet footers are cached across jobs (``parquet_metadata_cache``):
lake files are immutable once written (a compaction writes new names).

A forked child (Celery's prefork pool) must not use its parent's database: the database is
keyed by the process id and a child opens its own.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb


class QueryDatabase:
    """A lazily opened DuckDB database shared by the jobs of this process."""

    def __init__(self, memory_limit: str, spill_dir: Path) -> None:
        self.memory_limit, self.spill_dir = memory_limit, spill_dir
        self._database: duckdb.DuckDBPyConnection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new connection of this process's database (the caller closes it)."""
        return self._open().cursor()

    def _open(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._database is None or self._pid != os.getpid():
                config: dict[str, str | bool | int | float | list[str]] = {
                    "memory_limit": self.memory_limit,
                    "temp_directory": str(self.spill_dir),
                }
                self._database = duckdb.connect(config=config)
                self._database.execute("SET parquet_metadata_cache = true")
                self._pid = os.getpid()
            return self._database

    def close(self) -> None:
        """Close the database (connections still open fail from then on)."""
        with self._lock:
            if self._database is not None and self._pid == os.getpid():
                self._database.close()
            self._database = None
