"""registry and download audit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation",
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=True),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversation")),
    )
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_conversation_channel"), ["channel"], unique=False)
        batch_op.create_index(batch_op.f("ix_conversation_task_id"), ["task_id"], unique=False)

    op.create_table(
        "device",
        sa.Column("device_uuid", sa.String(length=128), nullable=False),
        sa.Column("phone_sealed", sa.Text(), nullable=True),
        sa.Column("consent", sa.Boolean(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_uuid", name=op.f("pk_device")),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_consent"), ["consent"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_task_id"), ["task_id"], unique=False)

    op.create_table(
        "download_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("blob_key", sa.String(length=1024), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=100), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("downloaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_audit")),
    )
    with op.batch_alter_table("download_audit", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_download_audit_downloaded_at"), ["downloaded_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_download_audit_request_id"), ["request_id"], unique=False
        )

    op.create_table(
        "device_conversation",
        sa.Column("device_uuid", sa.String(length=128), nullable=False),
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.conversation_id"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["device_uuid"], ["device.device_uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(
            "device_uuid", "conversation_id", name=op.f("pk_device_conversation")
        ),
    )
    with op.batch_alter_table("device_conversation", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_conversation_conversation_id"), ["conversation_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_device_conversation_task_id"), ["task_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("device_conversation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_conversation_task_id"))
        batch_op.drop_index(batch_op.f("ix_device_conversation_conversation_id"))

    op.drop_table("device_conversation")
    with op.batch_alter_table("download_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_audit_request_id"))
        batch_op.drop_index(batch_op.f("ix_download_audit_downloaded_at"))

    op.drop_table("download_audit")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_task_id"))
        batch_op.drop_index(batch_op.f("ix_device_consent"))

    op.drop_table("device")
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversation_task_id"))
        batch_op.drop_index(batch_op.f("ix_conversation_channel"))

    op.drop_table("conversation")
