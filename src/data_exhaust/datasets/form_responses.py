"""``form-responses``: the data-collection platform's export (seed 003, datasets.md §6).

Rows of the ``form_response`` table with ``from <= timestamp <= to`` (both optional, ISO-8601,
inclusive; a time without a zone is in ``EXHAUST_TIMEZONE``), ordered by timestamp, streamed
from the database in batches of ``EXHAUST_IMPORT_BATCH_ROWS`` rows (a checkpoint after each:
stoppable; a stopped export publishes nothing). When the config has an ``email``, the finished
file's link is e-mailed through ``EXHAUST_SMTP_URL``, or the task records that it was not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pyarrow as pa
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from data_exhaust.datasets.base import ConfigError, Dataset, RunContext, SubmitContext
from data_exhaust.jobs import OutputFile
from data_exhaust.mailer import send_link
from data_exhaust.models import FormResponse
from data_exhaust.table_import import FORM_RESPONSES, parse_moment

HEADER = FORM_RESPONSES
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}")
SCHEMA = pa.schema(
    [(name, pa.string()) for name in HEADER[:-2]]
    + [("record_latitude", pa.float64()), ("record_longitude", pa.float64())]
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FormResponsesExport(Dataset):
    """Form responses as CSV (or any output format), optionally e-mailed."""

    id: ClassVar[str] = "form-responses"
    title: ClassVar[str] = "Form responses (data-collection platform)"

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        bounds = {}
        for name in ("from", "to"):
            value = config.get(name)
            if value in (None, ""):
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be an ISO-8601 date-time string")
            try:
                bounds[name] = iso(parse_moment(value.strip(), submit.settings.tz, name))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if "from" in bounds and "to" in bounds and bounds["to"] < bounds["from"]:
            raise ConfigError("to must not be before from")
        email = config.get("email")
        if email not in (None, "") and not (isinstance(email, str) and EMAIL.fullmatch(email)):
            raise ConfigError("email must be an e-mail address like name@example.org")
        base_url = config.get("baseUrl")
        extra = {"baseUrl": base_url} if isinstance(base_url, str) and base_url else {}
        return {**bounds, **({"email": email} if email else {}), **extra}

    def run(self, ctx: RunContext) -> list[OutputFile]:
        ctx.checkpoint(0)
        reader = pa.RecordBatchReader.from_batches(SCHEMA, self._batches(ctx))
        stem = f"form_responses_{ctx.today:%Y%m%d}"
        file = ctx.write(stem, HEADER, reader)
        ctx.checkpoint(file.rows)  # a stop during the last batch wins: no e-mail
        email = ctx.job.config.get("email")
        if email:
            ctx.details["email"] = self._mail(ctx, email, file)
        return [file]

    def query(self, config: dict[str, Any]) -> Select[Any]:
        columns = [getattr(FormResponse, name) for name in HEADER]
        query = select(*columns).order_by(FormResponse.timestamp, FormResponse.id)
        if "from" in config:
            query = query.where(FormResponse.timestamp >= _moment(config["from"]))
        if "to" in config:
            query = query.where(FormResponse.timestamp <= _moment(config["to"]))
        return query

    def _batches(self, ctx: RunContext) -> Iterator[pa.RecordBatch]:
        size = ctx.settings.import_batch_rows
        with Session(ctx.registry.engine) as session:
            rows = session.execute(
                self.query(ctx.job.config), execution_options={"yield_per": size}
            )
            for part in rows.partitions(size):
                columns = list(zip(*part, strict=True))
                columns[0] = tuple(iso(moment) for moment in columns[0])
                yield pa.RecordBatch.from_arrays(
                    [pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)],
                    schema=SCHEMA,
                )

    def _mail(self, ctx: RunContext, to: str, file: OutputFile) -> dict[str, Any]:
        base = ctx.settings.public_url or ctx.job.config.get("baseUrl") or "http://localhost:8000"
        ttl = ctx.settings.retention_days * 86400  # as long as the file is kept
        link, _ = ctx.blobs.signed_url(file.key, base, ttl)
        subject = f"Your form-responses export {ctx.job.request_id} is ready"
        return send_link(ctx.settings.smtp_url, to, subject, link)


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
