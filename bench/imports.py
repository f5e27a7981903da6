"""Item 4 — teams CSV import into Postgres beside ``psql \\copy``: a placeholder.

The import task (``/import_teams/``, with per-task rollback) comes with issue 5 and does not
exist yet; this benchmark reports that plainly instead of a number.
"""

from __future__ import annotations

from typing import Any

from bench.common import Config, Row

PLACEHOLDER = "not measurable yet: the teams import comes with issue 5"


def run(config: Config) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    row = Row("4", "import teams CSV vs psql \\copy", PLACEHOLDER, "—", "—", "—",
              "≥ 0.5× \\copy, with rollback", None)  # fmt: skip
    return [row], {"status": PLACEHOLDER}, {}
