"""The machinery every CSV import shares (tasks.md "Imports"), whatever its tables.

An import kind is a :class:`Plan`: the headers it accepts, a row parser per header, a
``flush`` that writes one batch in one transaction (tagging every row with the task id), the
column length limits and a ``rollback`` that deletes what a task created. :func:`run_plan`
streams the file (:mod:`data_exhaust.csv_lines`), counts bad lines with their line numbers
(the first 100 are kept; a message never contains a field's value) and reports progress after
every batch. ``strict`` first checks the whole file without writing, so a bad line fails the
import with nothing changed (and anything written in between is rolled back).

A stop is the caller's business: ``on_batch`` may raise (a job's checkpoint raises
``StopRequested``); the exception leaves :func:`run_plan` after the batch's commit, and the
caller rolls back by task id.

A kind whose rows need only length limits and non-empty columns (teams) also gives a
``write_table``: its file is then read in ~1 MiB blocks parsed by pyarrow, stripped and
checked column-wise (``utf8_trim``/``utf8_length``) by a reader thread one or two blocks ahead
of the writing thread, and written as Arrow tables (on Postgres one ``COPY`` per batch), with
the row path's line numbers, messages, batches, checkpoints and strict mode
(:mod:`data_exhaust.import_columnar`; ``tests/integration/test_import_speed_paths.py``
compares the two).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from data_exhaust.csv_lines import (
    Source,
    header_of,
    opened,
    records,
)

MAX_ERRORS = 100

ProgressCallback = Callable[[int, int], None]  # (bytes read, rows accepted)
BatchCallback = Callable[[int, "ImportResult"], None]  # (bytes read, the result so far)
Parser = Callable[[list[str]], Any]
Flush = Callable[[Session, list[tuple[int, Any]], "ImportResult", bool], None]
Rollback = Callable[[Engine, str], int]
TableWriter = Callable[[Connection, pa.Table], None]


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


@dataclass
class ImportResult:
    """What an import did. ``inserted``/``updated`` count the kind's rows, ``linked`` new
    device-conversation links (devices only); ``rows`` counts the data lines read."""

    kind: str
    task_id: str
    rows: int = 0
    accepted: int = 0
    inserted: int = 0
    updated: int = 0
    linked: int = 0
    rejected: int = 0
    rolled_back: int = 0
    errors: list[LineError] = field(default_factory=list)
    _pending: list[LineError] = field(default_factory=list, repr=False)

    def reject(self, line: int, message: str) -> None:
        self.rejected += 1
        self._pending.append(LineError(line, f"line {line}: {message}"))

    def settle(self) -> None:
        """Keep the first errors in line order (a batch finds some only when it is written)."""
        self._pending.sort(key=lambda e: e.line)
        self.errors.extend(self._pending[: MAX_ERRORS - len(self.errors)])
        self._pending.clear()

    def errors_json(self) -> list[dict[str, Any]]:
        return [{"line": e.line, "message": e.message} for e in self.errors]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "taskId": self.task_id,
            "rows": self.rows,
            "accepted": self.accepted,
            "inserted": self.inserted,
            "updated": self.updated,
            "linked": self.linked,
            "rejected": self.rejected,
            "rolledBack": self.rolled_back,
            "errors": self.errors_json(),
        }


class ImportFailed(Exception):
    """A strict import met a bad line; ``result.rolled_back`` rows were removed again."""

    def __init__(self, result: ImportResult) -> None:
        first = result.errors[0].message if result.errors else "the import failed"
        super().__init__(f"{first} (strict mode: nothing was imported)")
        self.result = result


@dataclass
class Plan:
    """One import kind applied to one file by one task."""

    kind: str
    engine: Engine
    task_id: str
    parser_for: Callable[[tuple[str, ...]], Parser]  # header -> row parser
    flush: Flush
    headers: tuple[tuple[str, ...], ...]
    limits: Mapping[str, int]
    rollback: Rollback
    batch_rows: int = 1000
    on_progress: ProgressCallback | None = None
    on_batch: BatchCallback | None = None
    write_table: TableWriter | None = None  # set: the column-wise path (no parser, no flush)
    required: Mapping[str, str] = field(default_factory=dict)  # column -> message if empty
    block_bytes: int = 1 << 20  # the column-wise path reads blocks of about this size
    writers: int = 1  # the column-wise path's connections committing batches at once (Postgres)


def run_plan(plan: Plan, source: Source, strict: bool) -> ImportResult:
    """Import ``source``; in strict mode a bad line raises :class:`ImportFailed`."""
    from data_exhaust.import_columnar import columnar_pass  # it builds on this module

    if not plan.task_id:
        raise ValueError("task_id is required")
    one_pass = _pass if plan.write_table is None else columnar_pass
    if strict:
        checked = one_pass(plan, source, write=False, strict=True)
        if checked.rejected:
            raise ImportFailed(checked)
    try:
        result = one_pass(plan, source, write=True, strict=strict)
    except BaseException:
        if strict:
            plan.rollback(plan.engine, plan.task_id)
        raise
    if strict and result.rejected:  # the database changed between the passes
        result.rolled_back = plan.rollback(plan.engine, plan.task_id)
        raise ImportFailed(result)
    return result


def _pass(plan: Plan, source: Source, *, write: bool, strict: bool) -> ImportResult:
    result = ImportResult(plan.kind, plan.task_id)
    with opened(source) as counted:
        lines = records(counted)
        header = header_of(lines, plan.headers)
        parse = plan.parser_for(header)
        batch: list[tuple[int, Any]] = []
        for line, fields, error in lines:
            result.rows += 1
            item = _parse(plan, parse, header, (line, fields, error), result)
            if item is not None:
                batch.append(item)
            if len(batch) >= plan.batch_rows or (strict and result.rejected):
                _flush(plan, batch, result, write, counted.count)
                batch = []
                if strict and result.rejected:
                    return result
        _flush(plan, batch, result, write, counted.count)
    return result


def _flush(
    plan: Plan, batch: list[tuple[int, Any]], result: ImportResult, write: bool, done: int
) -> None:
    if batch:
        with Session(plan.engine) as session, session.begin():
            plan.flush(session, batch, result, write)
    after_batch(plan, result, write, done)


def after_batch(plan: Plan, result: ImportResult, write: bool, done: int) -> None:
    """Keep the batch's errors, report progress and reach the checkpoint (``on_batch``)."""
    result.settle()
    if plan.on_progress is not None:
        plan.on_progress(done, result.accepted if write else 0)
    if plan.on_batch is not None and write:
        plan.on_batch(done, result)


def _parse(
    plan: Plan,
    parse: Parser,
    header: tuple[str, ...],
    record: tuple[int, list[str] | None, str | None],
    result: ImportResult,
) -> tuple[int, Any] | None:
    line, fields, error = record
    if fields is None:
        result.reject(line, error or "unreadable line")
        return None
    if len(fields) != len(header):
        result.reject(
            line, f"expected {len(header)} columns ({','.join(header)}), found {len(fields)}"
        )
        return None
    values = [value.strip() for value in fields]
    for name, value in zip(header, values, strict=True):
        if len(value) > plan.limits[name]:
            result.reject(line, f"{name} is longer than {plan.limits[name]} characters")
            return None
    try:
        return line, parse(values)
    except ValueError as exc:
        result.reject(line, str(exc))
        return None


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
