"""job table, api keys, telemetry batches

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_T = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("channels", JSON_T, nullable=False),
        sa.Column("scopes", JSON_T, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_key")),
    )
    op.create_table(
        "job_request",
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("request_data", JSON_T, nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("requested_channel", sa.String(length=100), nullable=False),
        sa.Column("download_urls", JSON_T, nullable=False),
        sa.Column("dt_file_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dt_job_submitted", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dt_job_completed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("execution_time", sa.BigInteger(), nullable=True),
        sa.Column("err_message", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("output_format", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("progress", JSON_T, nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("files", JSON_T, nullable=False),
        sa.Column("files_purged", sa.Boolean(), nullable=False),
        sa.Column("secret_data", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("tag", "request_id", name=op.f("pk_job_request")),
    )
    with op.batch_alter_table("job_request", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_request_channel_submitted",
            ["requested_channel", "dt_job_submitted"],
            unique=False,
        )
        batch_op.create_index("ix_job_request_claim", ["status", "run_after"], unique=False)
        batch_op.create_index("uq_job_request_request_id", ["request_id"], unique=True)

    op.create_table(
        "telemetry_batch",
        sa.Column("msgid", sa.String(length=200), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("msgid", name=op.f("pk_telemetry_batch")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_batch")
    with op.batch_alter_table("job_request", schema=None) as batch_op:
        batch_op.drop_index("uq_job_request_request_id")
        batch_op.drop_index("ix_job_request_claim")
        batch_op.drop_index("ix_job_request_channel_submitted")

    op.drop_table("job_request")
    op.drop_table("api_key")
