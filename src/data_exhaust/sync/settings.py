"""Settings of the sync client, read from ``EXHAUST_*`` variables (or ``.env``).

They are the client's own: a state's data team runs the sync without the server's settings.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_exhaust.sync.windows import check_cron


class SyncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXHAUST_", env_file=".env", extra="ignore")

    server_url: str = Field("http://127.0.0.1:8000", description="The Data Exhaust server.")
    sync_db: str = Field(
        "sqlite:///exhaust_sync.db",
        description="Control database (SQLAlchemy URL) holding cron_config and exhaust_requests.",
    )
    sync_states: Path = Field(Path("exhaust_config.py"), description="The states file.")
    sync_work_dir: Path = Field(
        Path(".exhaust-sync"), description="Downloads in progress (resumed after a crash)."
    )
    timezone: str = Field("UTC", description="Calendar of windows and of 'today'.")
    sync_max_attempts: int = Field(
        3, ge=1, description="Tries per window (submits and loads) before it stays FAILED."
    )
    sync_request_cron: str = Field(
        "0 6 * * *", description="When `exhaust sync daemon` runs the request step."
    )
    sync_handle_cron: str = Field(
        "0 18 * * *", description="When `exhaust sync daemon` runs the handle step."
    )
    sync_batch_rows: int = Field(
        5000, ge=1, description="Rows per insert batch into a SQLite state database."
    )
    sync_copy_chunk_bytes: int = Field(
        256 * 1024, ge=1024, description="Bytes per COPY write into a Postgres state database."
    )

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("sync_request_cron", "sync_handle_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
