"""`exhaust --help` must stay fast: the CLI module imports none of the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

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
