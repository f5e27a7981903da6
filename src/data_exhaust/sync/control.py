"""The control database: schedules (``cron_config``) and one row per window (``exhaust_requests``).

Every read and write of those two tables goes through :class:`ControlDB`, and every change is its
own committed transaction, so a crash loses at most the step that was under way (which a re-run
repeats idempotently). The tables are created on first use (``create_all``): the client owns this
small database, and its schema has no migrations yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from data_exhaust.constants import SYNC_DATASETS
from data_exhaust.sync.windows import Window

DATASETS = SYNC_DATASETS

metadata = sa.MetaData()

cron_config = sa.Table(
    "cron_config",
    metadata,
    sa.Column("state_id", sa.String(100), primary_key=True),
    sa.Column("bot_id", sa.String(200), primary_key=True),
    sa.Column("dataset", sa.String(100), primary_key=True),
    sa.Column("frequency", sa.String(100), nullable=False),
    sa.Column("since", sa.Date, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

exhaust_requests = sa.Table(
    "exhaust_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("state_id", sa.String(100), nullable=False),
    sa.Column("bot_id", sa.String(200), nullable=False),
    sa.Column("dataset", sa.String(100), nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date, nullable=False),
    sa.Column("tag", sa.String(36), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("request_id", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("file_sha256", sa.String(64)),
    sa.Column("rows_loaded", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("loaded_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("state_id", "bot_id", "dataset", "start_date", name="uq_window"),
)


class RequestStatus(StrEnum):
    PENDING = "PENDING"  # window created, not submitted yet
    SUBMITTED = "SUBMITTED"  # the server has it (mirrors the server's SUBMITTED)
    PROCESSING = "PROCESSING"  # the server is building it
    LOADED = "LOADED"  # rows are in the state's database (final)
    NO_DATA = "NO_DATA"  # the server found no event in the window (final, 0 rows)
    FAILED = "FAILED"  # failed and out of attempts (final; see last_error)


IN_FLIGHT = (RequestStatus.SUBMITTED, RequestStatus.PROCESSING)


@dataclass(frozen=True)
class Schedule:
    state_id: str
    bot_id: str
    dataset: str
    frequency: str
    since: date


@dataclass(frozen=True)
class ExhaustRequest:
    id: int
    state_id: str
    bot_id: str
    dataset: str
    start_date: date
    end_date: date
    tag: str
    status: str
    request_id: str | None
    attempts: int
    last_error: str | None
    rows_loaded: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.state_id, self.bot_id, self.dataset)


def _now() -> datetime:
    return datetime.now(UTC)


def _request(row: sa.Row[Any]) -> ExhaustRequest:
    return ExhaustRequest(**{f: getattr(row, f) for f in ExhaustRequest.__dataclass_fields__})


class ControlDB:
    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # -- schedules ------------------------------------------------------------------------

    def add_schedule(self, schedule: Schedule) -> bool:
        """Store ``schedule``; True if new, False if it replaced the bot's existing one."""
        values = {**schedule.__dict__, "created_at": _now()}
        keys = ("state_id", "bot_id", "dataset")
        with self.engine.begin() as conn:
            existed = conn.execute(
                sa.select(sa.func.count())
                .select_from(cron_config)
                .where(*(cron_config.c[k] == values[k] for k in keys))
            ).scalar_one()
            stmt = self._insert(cron_config).values(values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=list(keys),
                    set_={"frequency": schedule.frequency, "since": schedule.since},
                )
            )
        return not existed

    def schedules(self) -> list[Schedule]:
        query = sa.select(*(cron_config.c[f] for f in Schedule.__dataclass_fields__)).order_by(
            cron_config.c.state_id, cron_config.c.bot_id, cron_config.c.dataset
        )
        with self.engine.connect() as conn:
            return [Schedule(*row) for row in conn.execute(query)]

    def remove_schedule(self, state_id: str, bot_id: str, dataset: str | None) -> int:
        """Delete the bot's schedules (of one dataset, or all); their windows stay."""
        where = [cron_config.c.state_id == state_id, cron_config.c.bot_id == bot_id]
        if dataset is not None:
            where.append(cron_config.c.dataset == dataset)
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(cron_config).where(*where)).rowcount

    # -- windows --------------------------------------------------------------------------

    def last_end(self, state_id: str, bot_id: str, dataset: str) -> date | None:
        t = exhaust_requests.c
        query = sa.select(sa.func.max(t.end_date)).where(
            t.state_id == state_id, t.bot_id == bot_id, t.dataset == dataset
        )
        with self.engine.connect() as conn:
            end: date | None = conn.execute(query).scalar_one()
        return end

    def add_windows(self, schedule: Schedule, windows: Sequence[Window]) -> int:
        """Insert a PENDING row with a fresh tag per window; existing windows are left alone."""
        created = 0
        for window in windows:
            stmt = self._insert(exhaust_requests).values(
                state_id=schedule.state_id,
                bot_id=schedule.bot_id,
                dataset=schedule.dataset,
                start_date=window.start_date,
                end_date=window.end_date,
                tag=str(uuid.uuid4()),
                status=RequestStatus.PENDING,
                attempts=0,
                created_at=_now(),
            )
            with self.engine.begin() as conn:
                created += conn.execute(stmt.on_conflict_do_nothing()).rowcount
        return created

    def _select(self, *where: Any) -> list[ExhaustRequest]:
        query = sa.select(exhaust_requests).where(*where).order_by(exhaust_requests.c.id)
        with self.engine.connect() as conn:
            return [_request(row) for row in conn.execute(query)]

    def to_submit(self, today: date, state_ids: Sequence[str]) -> list[ExhaustRequest]:
        t = exhaust_requests.c
        return self._select(
            t.request_id.is_(None),
            t.status == RequestStatus.PENDING,
            t.end_date <= today,
            t.state_id.in_(state_ids),
        )

    def in_flight(self, state_ids: Sequence[str]) -> list[ExhaustRequest]:
        t = exhaust_requests.c
        return self._select(t.status.in_(IN_FLIGHT), t.state_id.in_(state_ids))

    def requests(
        self, state_id: str | None = None, status: str | None = None
    ) -> list[ExhaustRequest]:
        t = exhaust_requests.c
        where = [t.state_id == state_id] if state_id else []
        if status:
            where.append(t.status == status)
        return self._select(*where)

    def get(self, row_id: int) -> ExhaustRequest:
        (row,) = self._select(exhaust_requests.c.id == row_id)
        return row

    # -- status changes, each committed at once ----------------------------------------------

    def _update(self, row_id: int, **values: Any) -> None:
        stmt = sa.update(exhaust_requests).where(exhaust_requests.c.id == row_id).values(values)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def record_submitted(self, row: ExhaustRequest, request_id: str, status: str) -> None:
        self._update(
            row.id,
            request_id=request_id,
            status=status if status in IN_FLIGHT else RequestStatus.SUBMITTED,
            attempts=row.attempts + 1,
            submitted_at=_now(),
        )

    def record_status(self, row: ExhaustRequest, status: str) -> None:
        if status != row.status:
            self._update(row.id, status=status)

    def record_loaded(self, row: ExhaustRequest, sha256: str | None, rows: int) -> None:
        self._update(
            row.id,
            status=RequestStatus.LOADED,
            file_sha256=sha256,
            rows_loaded=rows,
            loaded_at=_now(),
            last_error=None,
        )

    def record_no_data(self, row: ExhaustRequest, message: str) -> None:
        self._update(
            row.id,
            status=RequestStatus.NO_DATA,
            rows_loaded=0,
            loaded_at=_now(),
            last_error=message,
        )

    def record_error(self, row: ExhaustRequest, error: str, *, final: bool, attempt: bool) -> None:
        """Keep ``error``; FAILED when ``final``, else the row waits for the next run."""
        values: dict[str, Any] = {"last_error": error[:2000]}
        if final:
            values["status"] = RequestStatus.FAILED
        if attempt:
            values["attempts"] = row.attempts + 1
        self._update(row.id, **values)
