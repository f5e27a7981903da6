"""Every setting of the service, read from ``EXHAUST_*`` environment variables or a ``.env`` file.

This is the only place that reads the environment; everything else receives a ``Settings``.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_exhaust.secrets_box import SecretBox

SECRET_FILE = "secret.key"  # noqa: S105 - a file name, not a secret


class Settings(BaseSettings):
    """Configuration of one Data Exhaust process (server, worker or CLI)."""

    model_config = SettingsConfigDict(env_prefix="EXHAUST_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./var"), description="SQLite file, blobs, lake and secret live here."
    )
    database_url: str | None = Field(
        None, description="Job table and registry; default SQLite in the data dir."
    )
    storage_url: str | None = Field(
        None, description="Blob store; default file://<data dir>/blobs."
    )
    lake_url: str | None = Field(
        None, description="Telemetry lake; default file://<data dir>/lake."
    )
    executor: Literal["embedded", "celery"] = Field("embedded", description="Who runs jobs.")
    broker_url: str | None = Field(None, description="Celery broker (amqp:// or redis://).")
    celery_queue: str = Field("exhaust", description="Broker queue the Celery jobs go through.")
    celery_stop_grace_seconds: float = Field(
        3.0, gt=0, description="A stopped Celery job still running after this is terminated."
    )
    celery_redispatch_seconds: float = Field(
        30.0, gt=0, description="A due job waiting this long with no message is re-published."
    )
    workers: int = Field(2, ge=0, le=64, description="Concurrent jobs per process (0: API only).")
    api_threads: int = Field(
        4, ge=1, le=512, description="Threads the API runs blocking work in (database reads)."
    )
    ingest_batches: int = Field(
        2, ge=1, le=64, description="Telemetry batches one server process stores at once."
    )
    run_schedule: str = Field("on-demand", description="'on-demand' or a cron expression.")
    url_ttl_seconds: int = Field(1800, ge=1, description="Lifetime of a signed download URL.")
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a verified API key is trusted without a database lookup (0: "
        "never); a key revoked by another process keeps working for up to this long.",
    )
    retention_days: int = Field(7, ge=1, description="How long result files are kept.")
    max_attempts: int = Field(3, ge=1, description="Executions before a job stays FAILED.")
    retry_backoff_seconds: float = Field(10.0, ge=0, description="First retry delay; doubles.")
    lease_seconds: float = Field(
        30.0, gt=0, description="A worker's claim on a job lasts this long."
    )
    poll_seconds: float = Field(1.0, gt=0, description="How often idle workers look for jobs.")
    maintenance_seconds: float = Field(
        10.0, gt=0, description="How often to recover dead workers' jobs and purge old files."
    )
    timezone: str = Field("UTC", description="Calendar of date ranges and file-name dates.")
    secret_key: str | None = Field(
        None, description="Signs URLs; generated into the data dir.", repr=False
    )
    previous_secret_keys: list[str] = Field(
        default_factory=list,
        description="Older secrets (JSON list) whose sealed values still open; for key rotation.",
        repr=False,
    )
    uci_secret: str | None = Field(
        None,
        description="UCI's AES key (16/24/32 bytes as UTF-8) to import encrypted device ids.",
        repr=False,
    )
    import_batch_rows: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="CSV import rows written per database transaction (every import kind).",
    )
    import_writers: int = Field(
        2,
        ge=1,
        le=8,
        description="Postgres connections a teams import commits its batches on at once.",
    )
    public_url: str | None = Field(
        None, description="Base URL put in download links; default: the URL the client called."
    )
    duckdb_memory_limit: str = Field(
        "256MB",
        description="Memory cap of the process's DuckDB database, shared by its running jobs.",
    )
    csv_bom: bool = Field(False, description="Start CSV files with a UTF-8 BOM (for Excel).")
    csv_formula_guard: bool = Field(
        True, description="Prefix cells starting with = + - @ tab CR with ' (OWASP)."
    )
    compact_interval_seconds: float = Field(
        300.0, ge=0, description="Lake compaction period in the server (0: only by CLI)."
    )
    lake_merge_files: int = Field(
        2,
        ge=0,
        description=(
            "Merge a finished UTC day's Parquet files into one once it has this many (0: never)."
        ),
    )
    max_body_bytes: int = Field(5 * 1024 * 1024, description="Largest telemetry batch accepted.")
    smtp_url: str | None = Field(None, description="smtp://host:port for task e-mails.")
    plugins: list[str] = Field(
        default_factory=list,
        description='Extra dataset plugins as "module:Class" (JSON list), besides entry points.',
    )

    @field_validator("run_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        if value != "on-demand" and not croniter.is_valid(value):
            raise ValueError("must be 'on-demand' or a cron expression such as '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like 'Asia/Kolkata'"
            ) from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'exhaust.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "blobs").resolve().as_uri()

    @property
    def resolved_lake_url(self) -> str:
        return self.lake_url or (self.data_dir / "lake").resolve().as_uri()

    @cached_property
    def secret_box(self) -> SecretBox:
        """Seals phones and job secrets under keys derived from the server secret."""
        return SecretBox(self.secret, [s.encode() for s in self.previous_secret_keys])

    @cached_property
    def secret(self) -> bytes:
        """The server secret: given, or read from (or generated into) ``<data dir>/secret.key``."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / SECRET_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.data_dir / f".{SECRET_FILE}.{secrets.token_hex(4)}"
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:  # link() fails if another process won the race: then its secret is the one
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()
