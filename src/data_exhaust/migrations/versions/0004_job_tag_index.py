"""index the job table by tag, newest first (the list routes)

``list/{tag}`` (and the report API's list) select one tag's newest jobs. The primary key
``(tag, request_id)`` finds the tag's rows, but every one of them was then read and sorted for
the first page: with 5,000 jobs under one tag (a sync client's years of daily requests), a
list of 10 took 2.3 ms on SQLite, 0.77 ms with this index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_job_request_tag_submitted", "job_request", ["tag", "dt_job_submitted"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_job_request_tag_submitted", table_name="job_request")
