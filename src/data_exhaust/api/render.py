"""Job objects as the API shows them: the dataset API's (api.md §4) and the report API's (§5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from data_exhaust.jobs import Job, Status
from data_exhaust.storage import BlobStore


def epoch_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def has_links(job: Job) -> bool:
    """Whether ``job`` is shown with download links: a SUCCESS whose files are still there."""
    return job.status == Status.SUCCESS and not job.files_purged and bool(job.files)


def signed_urls(
    job: Job, blobs: BlobStore, base_url: str | Callable[[], str], ttl: int, by: str = ""
) -> tuple[list[str], int]:
    """Freshly signed download URLs (only for SUCCESS with files present) and their expiry;
    ``base_url`` may be a function, called only when there is a link to make (working out a
    request's base URL is a measurable part of a poll that gets none)."""
    expires_at = int(time.time()) + ttl
    urls: list[str] = []
    if has_links(job):
        base = base_url() if callable(base_url) else base_url
        for file in job.files:
            url, expires_at = blobs.signed_url(file.key, base, ttl, by=by)
            urls.append(url)
    return urls, expires_at * 1000


def progress(job: Job) -> dict[str, Any]:
    p = job.progress
    return {
        "rowsWritten": p.get("rowsWritten", 0),
        "rowsTotal": p.get("rowsTotal"),
        "percent": p.get("percent"),
    }


def dataset_job(job: Job, urls: list[str], expires_at: int) -> dict[str, Any]:
    """The job object of the dataset API (Sunbird's field names)."""
    return {
        "requestId": job.request_id,
        "tag": job.tag,
        "dataset": job.dataset,
        "requestedBy": job.requested_by,
        "requestedChannel": job.channel,
        "status": job.status.value,
        "datasetConfig": job.config,
        "output_format": job.output_format,
        "attempts": job.attempts,
        "statusMessage": job.message or "",
        "lastUpdated": epoch_ms(job.last_updated),
        "jobStats": {
            "dtJobSubmitted": epoch_ms(job.submitted_at),
            "dtJobCompleted": epoch_ms(job.completed_at),
            "executionTime": job.execution_ms,
        },
        "downloadUrls": urls,
        "expiresAt": expires_at,
        "progress": progress(job),
        "files": [
            {"name": f.name, "size": f.size, "sha256": f.sha256, "rows": f.rows}
            for f in (job.files if urls else [])
        ],
    }


def report_job(job: Job, urls: list[str], expires_at: int) -> dict[str, Any]:
    """The job object of the older report API (seed 001's snake_case names)."""
    submitted, completed = epoch_ms(job.submitted_at), epoch_ms(job.completed_at)
    return {
        "request_id": job.request_id,
        "tag": job.tag,
        "status": job.status.value,
        "last_updated": int(job.last_updated.timestamp()),
        "request": {"jobId": job.dataset, **job.config, "output_format": job.output_format},
        "job_stats": {
            "dt_job_submitted": submitted,
            "dt_job_completed": completed,
            "execution_time": job.execution_ms,
        },
        "downloadURLs": urls,
        "expiresAt": expires_at,
        "attempts": job.attempts,
        "statusMessage": job.message or "",
    }
