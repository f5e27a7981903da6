"""The column-wise teams import (pyarrow blocks) against the row-by-row path it replaced.

Both paths read the same files on real SQLite and Postgres; the column-wise one must give the
same counts, the same line-numbered errors and the same rows, whatever the file holds (quoted
line breaks across blocks, CR or CRLF line ends, blank lines, a BOM, bad UTF-8, wrong column
counts, Unicode spaces around values), and keep strict mode's "nothing imported". On
Postgres the column-wise path also runs with two connections committing batches at once
(``writers=2``, the default of ``EXHAUST_IMPORT_WRITERS``): the same rows, in any id order.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from data_exhaust.csv_lines import ImportFormatError
from data_exhaust.db import make_engine
from data_exhaust.import_core import ImportFailed, ImportResult, run_plan
from data_exhaust.jobs import Status
from data_exhaust.models import Team
from data_exhaust.services import Services
from data_exhaust.table_import import import_teams, rollback_teams, teams_plan
from data_exhaust.tasks import start_import, task_json

HEADER = b"name,description,manager,members\n"
LONG = "x" * 601

TRICKY = {
    "multi-line values": HEADER + b'"Team\nOne","line 1\r\nline 2",m,a\nT2,,m,b\n"",,,\n' * 9,
    "crlf and lone cr": HEADER.replace(b"\n", b"\r\n") + b"A,,m,\r\nB,,m,\rC,,m,\r\n" * 9,
    "blank lines": HEADER + b"\nA,,m,\n\n\nB,,m,\n" * 9 + b"\n",
    "bom and upper-case header": b"\xef\xbb\xbfName,DESCRIPTION,manager,members\nA,,m,\n" * 3,
    "header after a blank line": b"\n" + HEADER + b"A,,m,\n" * 5,
    "bad utf-8 and column counts": HEADER + b"A,,m,\n\xff\xfe,,m,\nB,,m\nC,,m,,\nD,,m,\n" * 9,
    "mid-field quotes": HEADER + b'a"b,"c\nd",e,f\n"x"y,z,m,\nok,,m,\n' * 9,
    "unicode spaces and limits": HEADER
    + " \u3000A\u00a0,\x1c d \x85,mgr\u2003,m \n".encode()
    + f"{LONG},,m,\n,,m,\n \t ,,m,\nB,,{'m' * 21},\nC,,{' ' * 30}m,\n".encode() * 9,
    "no final line break": HEADER + b"A,,m,\nB,,m,",
    "unclosed quote": HEADER + b"A,,m,\n" * 5 + b'"B,,m,\nC,,m,\n' + b"D,,m,\n" * 5,
    "line longer than a block": HEADER + b"A," + b"d" * 300 + b",m,\n" + b"B,,m,\n" * 20,
    "only a header": HEADER,
}


def rows_of(engine: Engine, task_id: str) -> list[tuple[str, str, str, str]]:
    with Session(engine) as session:
        found = session.execute(
            select(Team.name, Team.description, Team.manager, Team.members)
            .where(Team.task_id == task_id)
            .order_by(Team.id)
        )
        return [(a, b, c, d) for a, b, c, d in found]


def imported(
    engine: Engine, data: bytes, task_id: str, *, columnar: bool, **options: Any
) -> tuple[dict[str, Any], list[tuple[str, str, str, str]]]:
    strict = options.pop("strict", False)
    plan = teams_plan(engine, task_id, columnar=columnar, **options)
    try:
        result = run_plan(plan, lambda: io.BytesIO(data), strict)
    except ImportFailed as exc:
        result = exc.result
    except ImportFormatError as exc:
        return {"format error": str(exc)}, []
    return {k: v for k, v in result.to_dict().items() if k != "taskId"}, rows_of(engine, task_id)


def on_postgres(services: Services) -> bool:
    return services.engine.dialect.name == "postgresql"


@pytest.mark.parametrize("case", sorted(TRICKY))
@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_the_column_wise_path_matches_the_row_path(
    services: Services, case: str, block_bytes: int
) -> None:
    """Small blocks put block boundaries inside quoted line breaks and long lines."""
    data, engine = TRICKY[case], services.engine
    for strict in (False, True):
        expected = imported(engine, data, f"rows-{strict}", columnar=False, strict=strict,
                            batch_rows=7)  # fmt: skip
        found = imported(engine, data, f"cols-{strict}", columnar=True, strict=strict,
                         batch_rows=7, block_bytes=block_bytes)  # fmt: skip
        assert found == expected, (case, strict)
        if on_postgres(services):  # two batches in flight: ids interleave, rows do not change
            counts, rows = imported(engine, data, f"two-{strict}", columnar=True, strict=strict,
                                    batch_rows=7, block_bytes=block_bytes, writers=2)  # fmt: skip
            assert (counts, sorted(rows)) == (expected[0], sorted(expected[1])), (case, strict)


def test_a_bad_value_in_a_big_batch_is_found_by_its_line(services: Services) -> None:
    """One too long manager among 12,000 rows (batches of 5,000): it is the only error, with
    its line; strict mode imports nothing."""
    lines = [HEADER] + [f'"Team {i}, ""q""",d,m{i % 7},"a;b"\n'.encode() for i in range(12_000)]
    lines[7_777] = b"Bad,d," + b"m" * 21 + b",\n"  # line 7,778 of the file
    data = b"".join(lines)
    result = import_teams(services.engine, lambda: io.BytesIO(data), "lenient", batch_rows=5000)
    assert (result.rows, result.inserted, result.rejected) == (12_000, 11_999, 1)
    assert result.errors_json() == [
        {"line": 7_778, "message": "line 7778: manager is longer than 20 characters"}
    ]
    assert rows_of(services.engine, "lenient")[0] == ('Team 0, "q"', "d", "m0", "a;b")
    with pytest.raises(ImportFailed, match="line 7778: manager is longer than 20") as failed:
        import_teams(services.engine, lambda: io.BytesIO(data), "strict", strict=True,
                     batch_rows=5000)  # fmt: skip
    assert failed.value.result.errors[0].line == 7_778
    assert rows_of(services.engine, "strict") == []


@pytest.mark.parametrize("writers", [1, 2])
def test_a_stop_at_a_batch_checkpoint_leaves_the_batches_before_it(
    services: Services, writers: int
) -> None:
    """``on_batch`` is reached after every committed batch, in order, with the rows read so
    far; what it raises leaves the import there (the task then rolls back by task id). With
    two writers (Postgres) the batch already on its way commits before the import returns, so
    the rollback that follows cannot miss it."""
    data = HEADER + b"A,,m,\n" * 10_000
    seen: list[tuple[int, int]] = []

    def checkpoint(_done: int, result: ImportResult) -> None:
        seen.append((result.rows, result.inserted))
        if result.rows >= 3_000:
            raise KeyboardInterrupt  # what a stop request does, as an exception of its own

    with pytest.raises(KeyboardInterrupt):
        import_teams(services.engine, lambda: io.BytesIO(data), "stopped", batch_rows=1000,
                     on_batch=checkpoint, writers=writers)  # fmt: skip
    assert seen == [(1000, 1000), (2000, 2000), (3000, 3000)]
    in_flight = 1000 if writers == 2 and on_postgres(services) else 0
    assert len(rows_of(services.engine, "stopped")) == 3000 + in_flight
    assert rollback_teams(services.engine, "stopped") == 3000 + in_flight
    assert rows_of(services.engine, "stopped") == []


def test_a_strict_task_with_a_bad_line_deep_in_the_file_fails_with_nothing_left(
    services: Services,
) -> None:
    data = HEADER + b"A,,m,\n" * 30_000 + b",,m,\n" + b"B,,m,\n" * 100
    job = start_import(services, "teams", io.BytesIO(data), "t.csv", strict=True,
                       requested_by="test")  # fmt: skip
    while services.worker().run_one():
        pass
    task = task_json(services.jobs.get(job.request_id), [])
    assert task["status"] == Status.FAILED.value
    assert task["errors"] == [{"line": 30_002, "message": "line 30002: name is required "
                               "(1 to 600 characters)"}]  # fmt: skip
    assert rows_of(services.engine, job.request_id) == []


def test_an_import_leaves_its_task_index_ranges_summarised_on_postgres(
    postgres_url: str,
) -> None:
    # until a BRIN range is summarised, every rollback and undo reads it (table_import's
    # _delete); the import summarises its own when it ends, rather than waiting for autovacuum
    engine = make_engine(postgres_url)
    data = HEADER + b"".join(b"Team %d,,m,\n" % n for n in range(40_000))
    assert import_teams(engine, lambda: io.BytesIO(data), "t-1", writers=2).inserted == 40_000
    summarize = text("SELECT brin_summarize_new_values('ix_team_task_id')")
    with engine.begin() as connection:
        assert connection.execute(summarize).scalar() == 0
    assert rollback_teams(engine, "t-1") == 40_000 and rows_of(engine, "t-1") == []
    engine.dispose()
