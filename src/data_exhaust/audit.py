"""The download audit log: who downloaded which request's file, when, and from where.

Links are issued to an API key (its id is carried in the link and signed), so a download
names the key it was given to even though the download itself needs no key. Only answered
downloads (200/206) are recorded; refused links are logged but not audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from data_exhaust.models import DownloadAudit


@dataclass(frozen=True)
class Download:
    request_id: str | None
    blob_key: str
    key_id: str | None
    channel: str | None
    client_address: str | None
    user_agent: str | None
    status: int
    downloaded_at: datetime


def request_id_of(blob_key: str) -> str | None:
    """Result files live at ``<dataset>/<requestId>/<file>``."""
    parts = blob_key.split("/")
    return parts[1] if len(parts) >= 3 else None


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, download: Download) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                DownloadAudit(
                    request_id=download.request_id,
                    blob_key=download.blob_key,
                    key_id=download.key_id,
                    channel=download.channel,
                    client_address=download.client_address,
                    user_agent=(download.user_agent or "")[:300] or None,
                    status=download.status,
                    downloaded_at=download.downloaded_at,
                )
            )

    def query(
        self, request_id: str | None, limit: int, offset: int = 0
    ) -> tuple[int, list[Download]]:
        """Newest first; all downloads, or those of one request."""
        where = [] if request_id is None else [DownloadAudit.request_id == request_id]
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(DownloadAudit).where(*where))
            rows = session.scalars(
                select(DownloadAudit)
                .where(*where)
                .order_by(DownloadAudit.downloaded_at.desc(), DownloadAudit.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return int(total or 0), [_download(r) for r in rows]


def _download(row: DownloadAudit) -> Download:
    return Download(
        row.request_id,
        row.blob_key,
        row.key_id,
        row.channel,
        row.client_address,
        row.user_agent,
        row.status,
        row.downloaded_at,
    )


def now() -> datetime:
    return datetime.now(UTC)
