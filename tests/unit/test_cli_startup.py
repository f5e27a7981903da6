"""`exhaust --help` must stay fast: the CLI module imports none of the heavy libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("sqlalchemy", "duckdb", "pyarrow", "httpx", "fastapi", "celery", "data_exhaust.sync.steps")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = "import sys, data_exhaust.cli; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    assert "typer" in loaded  # the check sees real imports


def test_one_sync_module_does_not_load_the_others() -> None:
    code = "import sys, data_exhaust.sync.control; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert "data_exhaust.sync.steps" not in loaded and "httpx" not in loaded
    assert "sqlalchemy" in loaded


def test_the_embedded_server_loads_no_library_it_may_never_use(tmp_path: Path) -> None:
    """On the SQLite default, psycopg (~26 MB of a worker's RSS) stays out of the process, and
    so do ``pyarrow.parquet`` with its cloud filesystems (~5 MB) until a Parquet export and
    ``cryptography`` (~9 MB) until a value is sealed or opened."""
    code = (
        "import sys\n"
        "from data_exhaust.cli.admin import services\n"
        "from data_exhaust.api.app import create_app\n"
        "create_app(services())\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "EXHAUST_DATA_DIR": str(tmp_path), "EXHAUST_SECRET_KEY": "k" * 32}
    env = {k: v for k, v in env.items() if k != "EXHAUST_DATABASE_URL"}
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True, env=env).split())
    assert "data_exhaust.api.tasks" in loaded and "sqlalchemy" in loaded
    assert not {name for name in loaded if name.startswith("psycopg")}
    assert "pyarrow.csv" in loaded and "pyarrow.parquet" not in loaded
    assert "data_exhaust.secrets_box" in loaded and "data_exhaust.uci" in loaded
    assert not {name for name in loaded if name.startswith("cryptography")}
