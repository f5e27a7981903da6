"""The column-wise path of :func:`data_exhaust.import_core.run_plan` (teams): ~1 MiB blocks
parsed by pyarrow, stripped and checked column-wise by a reader thread one or two blocks ahead
of the writing thread, written as Arrow tables, with the row path's line numbers, messages,
batches, checkpoints and strict mode."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from functools import reduce
from itertools import chain, islice

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from sqlalchemy import Connection

from data_exhaust.csv_lines import (
    Blocks,
    Counted,
    Record,
    Source,
    arrow_block,
    block_records,
    header_of,
    lines_in,
    opened,
    raw_bytes,
    records,
)
from data_exhaust.import_core import ImportResult, Plan, after_batch
from data_exhaust.prefetch import ahead

log = structlog.get_logger(__name__)

PIECE_RECORDS = 10_000  # records per piece when a file is read record by record
#: what ``str.strip()`` removes, for pyarrow's ``utf8_trim`` (the row path strips values)
WHITESPACE = "".join(chr(code) for code in range(0x110000) if chr(code).isspace())

Problem = tuple[int, int, str]  # (record number, line, message)


@dataclass
class _Piece:
    """Records of the file as string columns, each row with its record number (1-based,
    counting every non-blank data record) and line; ``problems`` are the records that could
    not be read as rows; ``records`` counts all of them."""

    table: pa.Table
    numbers: pa.Array
    lines: pa.Array
    problems: list[Problem]
    records: int


def columnar_pass(plan: Plan, source: Source, *, write: bool, strict: bool) -> ImportResult:
    result = ImportResult(plan.kind, plan.task_id)
    with (
        opened(source) as counted,
        closing(ahead(_checked(plan, counted), 2, "import-reader")) as checked,  # parse ahead
        _connections(plan, write) as connections,
        closing(_Committers(plan, connections)) as committers,  # drained before they close
    ):
        batches = _Batches(plan, result, committers, counted)
        try:
            for table, numbers, problems, records_read in checked:
                if strict and problems:
                    first = min(problems)
                    batches.add(table.filter(pc.less(numbers, first[0])), numbers, [])
                    batches.finish(first[0], [first])
                    return result
                batches.add(table, numbers, problems)
                batches.seen += records_read
            batches.finish(batches.seen, [])
        finally:
            batches.drain()  # a stop or failure: the batches already on their way
    return result


@contextmanager
def _connections(plan: Plan, write: bool) -> Iterator[list[Connection]]:
    """The connections a writing pass commits its batches on (none for a dry run), held for
    the whole pass: one on SQLite, which writes one transaction at a time anyway, and
    ``plan.writers`` on Postgres, where a batch is written on one while the batch before it
    is written or committed on another (:class:`_Committers`).

    Checking a connection out of the pool per batch cost a pre-ping round trip per batch,
    ~10 % of the writing thread's time; and if the database goes away mid-import, the next
    batch now fails the task instead of quietly continuing on a new connection."""
    if not write or plan.write_table is None:
        yield []
        return
    count = plan.writers if plan.engine.dialect.name == "postgresql" else 1
    with ExitStack() as stack:
        yield [stack.enter_context(plan.engine.connect()) for _ in range(count)]


class _Committers:
    """Batches committed in turn on each connection, by one thread per connection when
    there are several (so at most one batch per connection is in flight, and a connection
    is only ever used by its own thread). The caller settles batches in the order it gave
    them; :meth:`close` waits for those still in flight, so a rollback after a stop or a
    failure never runs before a batch that was already on its way commits."""

    def __init__(self, plan: Plan, connections: list[Connection]) -> None:
        self.plan, self.connections = plan, connections
        self.depth = max(1, len(connections))  # batches in flight before the oldest settles
        self._threads = [
            ThreadPoolExecutor(1, thread_name_prefix="import-writer") for _ in connections
        ] if len(connections) > 1 else []  # fmt: skip
        self._sent = 0

    def submit(self, table: pa.Table) -> Future[None]:
        turn = self._sent % len(self.connections)
        self._sent += 1
        if not self._threads:
            done: Future[None] = Future()
            self._commit(self.connections[turn], table)
            done.set_result(None)
            return done
        return self._threads[turn].submit(self._commit, self.connections[turn], table)

    def _commit(self, connection: Connection, table: pa.Table) -> None:
        """One durable transaction per batch: a committed batch survives a database crash
        (a relaxed ``synchronous_commit`` was measured 15-35 % faster and rejected: a batch
        lost in a crash could go unnoticed by the batches after it)."""
        assert self.plan.write_table is not None
        with connection.begin():
            self.plan.write_table(connection, table)

    def close(self) -> None:
        for thread in self._threads:
            thread.shutdown(wait=True)


Checked = tuple[pa.Table, pa.Array, list[Problem], int]


def _checked(plan: Plan, counted: Counted) -> Iterator[Checked]:
    for piece in _pieces(plan, counted):
        yield (*_validated(plan, piece), piece.records)


def _pieces(plan: Plan, counted: Counted) -> Iterator[_Piece]:
    """The data records: blocks parsed by pyarrow, record by record where it cannot."""
    blocks = Blocks(counted, plan.block_bytes)
    stream = iter(blocks)
    first = next(stream, b"")
    header, body = _header(plan, first)
    if header is None:  # not a plain one-line header: the row reader finds it (or fails)
        lines = records(blocks.rest(first))
        yield from _record_pieces(header_of(lines, plan.headers), lines, 0)
        return
    after, number = lines_in(first) - lines_in(body), 0
    for block in chain([body], stream):
        if not block:
            continue
        piece = None if blocks.cut_short(block) else _block_piece(block, header, number, after)
        if piece is None:  # the block may end inside a quoted field: read the rest as rows
            rest = records(blocks.rest(block), after, "utf-8")
            yield from _record_pieces(header, rest, number)
            return
        yield piece
        number, after = number + piece.records, after + lines_in(block)


def _header(plan: Plan, first: bytes) -> tuple[tuple[str, ...] | None, bytes]:
    """The header when the first line alone is one, and the data bytes after it."""
    end = first.find(b"\n") + 1
    if end == 0:
        return None, first
    found = list(records(raw_bytes(first[:end])))
    if len(found) != 1 or found[0][0] != 1:
        return None, first
    try:
        return header_of(iter(found), plan.headers), first[end:]
    except ValueError:
        return None, first


def _block_piece(block: bytes, header: tuple[str, ...], number: int, after: int) -> _Piece | None:
    table = arrow_block(block, header)
    if table is not None:
        index = pc.indices_nonzero(pc.is_valid(table.column(0).combine_chunks()))
        index = index.cast(pa.int64())
        return _Piece(table, pc.add(index, number + 1), pc.add(index, after + 1), [], len(index))
    found = block_records(block, after)
    return None if found is None else _record_piece(header, found, number)


def _record_pieces(
    header: tuple[str, ...], found: Iterable[Record], number: int
) -> Iterator[_Piece]:
    found = iter(found)
    while chunk := list(islice(found, PIECE_RECORDS)):
        piece = _record_piece(header, chunk, number)
        number += piece.records
        yield piece


def _record_piece(header: tuple[str, ...], found: list[Record], number: int) -> _Piece:
    columns: list[list[str]] = [[] for _ in header]
    numbers, lines, problems = [], [], []
    for n, (line, fields, error) in enumerate(found, number + 1):
        if fields is None or len(fields) != len(header):
            problems.append((n, line, error or _count_error(header, fields)))
            continue
        for column, value in zip(columns, fields, strict=True):
            column.append(value)
        numbers.append(n)
        lines.append(line)
    table = pa.table([pa.array(c, pa.string()) for c in columns], names=list(header))
    return _Piece(
        table, pa.array(numbers, pa.int64()), pa.array(lines, pa.int64()), problems, len(found)
    )


def _count_error(header: tuple[str, ...], fields: list[str] | None) -> str:
    if fields is None:
        return "unreadable line"
    return f"expected {len(header)} columns ({','.join(header)}), found {len(fields)}"


def _validated(plan: Plan, piece: _Piece) -> tuple[pa.Table, pa.Array, list[Problem]]:
    """Stripped columns of the good rows, their record numbers, and every problem (in record
    order) with the message the row path gives: the first too long column, then emptiness."""
    names = piece.table.column_names
    table = pa.table(
        [pc.utf8_trim(piece.table[name], characters=WHITESPACE) for name in names], names=names
    )
    lengths = {name: pc.utf8_length(table[name]) for name in names}
    checks = [
        (pc.greater(lengths[name], plan.limits[name]),
         f"{name} is longer than {plan.limits[name]} characters") for name in names
    ] + [(pc.equal(lengths[n], 0), message) for n, message in plan.required.items()]  # fmt: skip
    bad = reduce(pc.or_, (mask for mask, _ in checks))
    if not pc.any(bad).as_py():
        return table, piece.numbers, piece.problems
    problems = list(piece.problems)
    for i in pc.indices_nonzero(bad).to_pylist():
        message = next(text for mask, text in checks if mask[i].as_py())
        problems.append((piece.numbers[i].as_py(), piece.lines[i].as_py(), message))
    keep = pc.invert(bad)
    numbers = piece.numbers.filter(keep)
    if isinstance(numbers, pa.ChunkedArray):
        numbers = numbers.combine_chunks()
    return table.filter(keep), numbers, sorted(problems)


class _Batches:
    """Good rows written ``plan.batch_rows`` at a time, one transaction each; problems are
    rejected when the batch they precede is settled, as the row path does. A batch counts
    (progress, ``on_batch``, which may raise to stop) only once it is committed, in order."""

    def __init__(
        self, plan: Plan, result: ImportResult, committers: _Committers, counted: Counted
    ) -> None:
        self.plan, self.result, self.counted = plan, result, counted
        self.committers, self.write = committers, bool(committers.connections)
        self.tables: list[pa.Table] = []
        self.numbers: list[pa.Array] = []
        self.problems: list[Problem] = []
        self.rows, self.seen = 0, 0
        #: batches given to the committers: (commit, records read up to its end, its rows)
        self.pending: deque[tuple[Future[None] | None, int, int]] = deque()

    def add(self, table: pa.Table, numbers: pa.Array, problems: list[Problem]) -> None:
        self.tables.append(table)
        self.numbers.append(numbers[: table.num_rows])
        self.problems.extend(problems)
        self.rows += table.num_rows
        while self.rows >= self.plan.batch_rows:
            pending = pa.concat_tables(self.tables)
            numbers = pa.concat_arrays(self.numbers)
            size = self.plan.batch_rows
            self.tables, self.numbers = [pending.slice(size)], [numbers.slice(size)]
            self.rows -= size
            self._write(pending.slice(0, size), numbers[size - 1].as_py())

    def finish(self, rows: int, problems: list[Problem]) -> None:
        """Write what is left and settle every batch; ``rows`` data records were read."""
        self.problems.extend(problems)
        self._write(pa.concat_tables(self.tables) if self.tables else None, rows, final=True)
        self.tables, self.numbers, self.rows = [], [], 0

    def _write(self, table: pa.Table | None, rows: int, final: bool = False) -> None:
        count = table.num_rows if table is not None else 0
        commit = self.committers.submit(table) if self.write and count else None
        self.pending.append((commit, rows, count))
        while len(self.pending) >= self.committers.depth or (final and self.pending):
            self._settle()

    def drain(self) -> None:
        """Wait for the batches still in flight (after a stop or a failure, which leave
        :meth:`finish` unreached); those that commit are counted like any other, and the
        rollback that follows removes them with the rest."""
        while self.pending:
            try:
                self._account(*self.pending.popleft())
            except Exception:  # the import is failing already, with the first error
                log.warning("import.batch_failed_while_stopping", task_id=self.plan.task_id)
        self.result.settle()

    def _settle(self) -> None:
        """The oldest pending batch, once committed: its counts, errors and progress."""
        self._account(*self.pending.popleft())
        after_batch(self.plan, self.result, self.write, self.counted.count)

    def _account(self, commit: Future[None] | None, rows: int, count: int) -> None:
        if commit is not None:
            commit.result()  # a failed batch fails the import (and rolls it back)
        result = self.result
        result.rows = rows
        for number, line, message in self.problems:
            if number <= rows:
                result.reject(line, message)
        self.problems = [p for p in self.problems if p[0] > rows]
        result.accepted += count
        if commit is not None:
            result.inserted += count
