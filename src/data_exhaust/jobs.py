"""The job: its statuses, its identity (requestId) and its plain-data record."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    SUBMITTED = "SUBMITTED"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


FINISHED = frozenset({Status.SUCCESS, Status.FAILED, Status.STOPPED})
#: Submitting an existing request in one of these states returns it unchanged (api.md §3).
DEDUPLICATED = frozenset({Status.SUBMITTED, Status.PROCESSING, Status.SUCCESS})

OUTPUT_FORMATS = ("csv", "csv.gz", "jsonl", "parquet")


def request_id_for(
    *,
    dataset: str,
    tag: str,
    channel: str,
    requested_by: str | None,
    dataset_config: dict[str, Any],
    output_format: str,
) -> str:
    """MD5 of the canonical JSON of the request, 32 upper-case hex digits (api.md §3)."""
    canonical = json.dumps(
        {
            "dataset": dataset,
            "tag": tag,
            "channel": channel,
            "requestedBy": requested_by,
            "datasetConfig": dataset_config,
            "output_format": output_format,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.md5(canonical.encode(), usedforsecurity=False).hexdigest().upper()


def stored_tag(tag: str, channel: str) -> str:
    return f"{tag}:{channel}"


@dataclass
class OutputFile:
    """A published result file."""

    name: str
    key: str
    size: int
    sha256: str
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Job:
    """One row of ``job_request`` as the rest of the code sees it."""

    tag: str  # stored form: <tag>:<channel>
    request_id: str
    dataset: str
    status: Status
    config: dict[str, Any]
    channel: str
    requested_by: str | None
    submitted_at: datetime
    last_updated: datetime
    run_after: datetime
    output_format: str = "csv"
    kind: str = "dataset"
    attempts: int = 0
    completed_at: datetime | None = None
    execution_ms: int | None = None
    message: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    stop_requested: bool = False
    files: list[OutputFile] = field(default_factory=list)
    files_purged: bool = False
    secret_data: str | None = None

    @property
    def client_tag(self) -> str:
        """The tag as the client sent it (without ``:<channel>``)."""
        return self.tag.rsplit(":", 1)[0]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
