"""SQLAlchemy models: the job table (``job_request``), API keys and ingest bookkeeping.

Only :mod:`data_exhaust.manager` (jobs), :mod:`data_exhaust.keys` and
:mod:`data_exhaust.ingest` touch these tables; the Alembic migrations must produce exactly
this schema (a test checks it).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp always returned timezone-aware in UTC (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JsonType,
    }


class JobRequest(Base):
    """One request (job). The seed's columns first, then the engine's own."""

    __tablename__ = "job_request"

    tag: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(100))  # the dataset id
    status: Mapped[str] = mapped_column(String(20))
    request_data: Mapped[dict[str, Any]] = mapped_column(JsonType)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    requested_channel: Mapped[str] = mapped_column(String(100))
    download_urls: Mapped[list[str]] = mapped_column(JsonType, default=list)  # blob keys
    dt_file_created: Mapped[datetime | None]
    dt_job_submitted: Mapped[datetime]
    dt_job_completed: Mapped[datetime | None]
    execution_time: Mapped[int | None] = mapped_column(BigInteger)  # milliseconds
    err_message: Mapped[str | None] = mapped_column(Text)
    # Engine columns.
    kind: Mapped[str] = mapped_column(String(20), default="dataset")
    output_format: Mapped[str] = mapped_column(String(20), default="csv")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_updated: Mapped[datetime]
    run_after: Mapped[datetime]
    progress: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    files_purged: Mapped[bool] = mapped_column(Boolean, default=False)
    secret_data: Mapped[str | None] = mapped_column(Text)  # encrypted per-job secrets

    __table_args__ = (
        Index("ix_job_request_claim", "status", "run_after"),
        Index("uq_job_request_request_id", "request_id", unique=True),
        Index("ix_job_request_channel_submitted", "requested_channel", "dt_job_submitted"),
        Index("ix_job_request_tag_submitted", "tag", "dt_job_submitted"),
    )


#: The job table, for Core statements (the job store's writes, the event loop's reads).
JOBS = cast(Table, JobRequest.__table__)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; the key itself is shown once at creation."""

    __tablename__ = "api_key"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list[str]] = mapped_column(JsonType)
    scopes: Mapped[list[str]] = mapped_column(JsonType)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class TelemetryBatch(Base):
    """A telemetry batch already accepted, by its ``params.msgid`` (retries are acknowledged)."""

    __tablename__ = "telemetry_batch"

    msgid: Mapped[str] = mapped_column(String(200), primary_key=True)
    accepted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime]


#: The batch table, for Core statements (the ingest's ``msgid`` lookup and record).
TELEMETRY_BATCHES = cast(Table, TelemetryBatch.__table__)


class Conversation(Base):
    """A chatbot (UCI "bot") and the channel that owns it."""

    __tablename__ = "conversation"

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    channel: Mapped[str] = mapped_column(String(100), index=True)
    start_date: Mapped[date | None] = mapped_column(Date)
    end_date: Mapped[date | None] = mapped_column(Date)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)  # importing task
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Device(Base):
    """A chat user. The phone is only ever stored sealed (AES-GCM, see secrets_box.py)."""

    __tablename__ = "device"

    device_uuid: Mapped[str] = mapped_column(String(128), primary_key=True)
    phone_sealed: Mapped[str | None] = mapped_column(Text)
    consent: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DeviceConversation(Base):
    """Which conversations a device is registered to."""

    __tablename__ = "device_conversation"

    device_uuid: Mapped[str] = mapped_column(
        ForeignKey("device.device_uuid", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversation.conversation_id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    )
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)


class DownloadAudit(Base):
    """One download of a result file: who, which request, which file, when, from where."""

    __tablename__ = "download_audit"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    blob_key: Mapped[str] = mapped_column(String(1024))
    key_id: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(100))
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[int] = mapped_column(Integer)
    downloaded_at: Mapped[datetime] = mapped_column(index=True)


def task_index_name(table: str) -> str:
    return f"ix_{table}_task_id"


def task_index(table: str) -> Index:
    """The index a rollback finds one import task's rows by (``DELETE … WHERE task_id = …``).

    On Postgres a BRIN (block range) index: the tables it serves only grow by imports, which
    append one task's rows together, so a range of pages holds one task id or a few, and the
    rollback reads only the ranges that may hold its id. Keeping a B-tree of the 32-character
    ids made a 200,000-row teams import take 0.81 s instead of 0.64 s in process (1.40 s
    instead of 0.86 s through the API; bench/README.md, import); rows are still found exactly
    (a BRIN match is rechecked row by row).
    ``autosummarize`` keeps the newest ranges summarised after each import. SQLite keeps a
    B-tree."""
    return Index(
        task_index_name(table), "task_id",
        postgresql_using="brin", postgresql_with={"autosummarize": "on"},
    )  # fmt: skip


class Team(Base):
    """A team of the data-collection platform (seed 003), created by a ``teams`` import."""

    __tablename__ = "team"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(String(600))
    description: Mapped[str] = mapped_column(Text, default="")
    manager: Mapped[str] = mapped_column(String(20), default="")
    members: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str | None] = mapped_column(String(64))  # importing task

    __table_args__ = (task_index("team"),)


class FormResponse(Base):
    """One answered form of the data-collection platform (seed 003, datasets.md §6)."""

    __tablename__ = "form_response"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    timestamp: Mapped[datetime] = mapped_column(index=True)
    user: Mapped[str] = mapped_column(String(200), default="")
    name_of_respondent: Mapped[str] = mapped_column(String(200), default="")
    gender_of_respondent: Mapped[str] = mapped_column(String(20), default="")
    reading_books: Mapped[str] = mapped_column(String(100), default="")
    listening_music: Mapped[str] = mapped_column(String(100), default="")
    mobile_no: Mapped[str] = mapped_column(String(20), default="")
    record_latitude: Mapped[float | None] = mapped_column(Float)
    record_longitude: Mapped[float | None] = mapped_column(Float)
    task_id: Mapped[str | None] = mapped_column(String(64))  # importing task

    __table_args__ = (task_index("form_response"),)
