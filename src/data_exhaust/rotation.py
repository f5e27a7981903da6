"""Key rotation: re-seal every stored secret under the current ``EXHAUST_SECRET_KEY``.

Two kinds of values are sealed (:mod:`data_exhaust.secrets_box`): device phones (the
registry) and per-job secrets (``job_request.secret_data``: the zip password of a
``uci-private-exhaust`` request). Both are re-sealed, so a job submitted before the rotation
still runs after the old secret is dropped. A value sealed under a secret the server no longer
knows stops the rotation with :class:`~data_exhaust.secrets_box.SealError`; nothing already
re-sealed is lost, and running it again (with the old secret back in
``EXHAUST_PREVIOUS_SECRET_KEYS``) finishes the work.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from data_exhaust.models import JobRequest
from data_exhaust.registry import Registry
from data_exhaust.secrets_box import JOB_SECRETS, SecretBox

BATCH = 1000


@dataclass(frozen=True)
class Rotated:
    phones: int
    job_secrets: int


def rotate_all(registry: Registry) -> Rotated:
    """Re-seal phones and job secrets; how many of each changed."""
    phones = registry.rotate()
    return Rotated(phones, rotate_job_secrets(registry.engine, registry.box))


def rotate_job_secrets(engine: Engine, box: SecretBox) -> int:
    """Re-seal ``secret_data`` of every job, a batch per transaction; how many changed.

    Each update only applies if the row still holds the value that was read, so a job
    finishing (or being resubmitted) meanwhile is never overwritten with a stale secret."""
    changed, after = 0, ""
    while True:
        with Session(engine) as session, session.begin():
            rows = session.execute(
                select(JobRequest.request_id, JobRequest.secret_data)
                .where(JobRequest.secret_data.is_not(None), JobRequest.request_id > after)
                .order_by(JobRequest.request_id)
                .limit(BATCH)
            ).all()
            if not rows:
                return changed
            for request_id, sealed in rows:
                if sealed is None or box.is_current(sealed, JOB_SECRETS):
                    continue
                fresh = box.seal(box.unseal(sealed, JOB_SECRETS), JOB_SECRETS)
                done = session.execute(
                    update(JobRequest)
                    .where(JobRequest.request_id == request_id, JobRequest.secret_data == sealed)
                    .values(secret_data=fresh)
                )
                changed += int(getattr(done, "rowcount", 0) or 0)
            after = rows[-1][0]
