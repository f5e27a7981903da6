"""teams and form responses (seed 003)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "team",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=600), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("manager", sa.String(length=20), nullable=False),
        sa.Column("members", sa.Text(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team")),
    )
    with op.batch_alter_table("team", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_team_task_id"), ["task_id"], unique=False)

    op.create_table(
        "form_response",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("name_of_respondent", sa.String(length=200), nullable=False),
        sa.Column("gender_of_respondent", sa.String(length=20), nullable=False),
        sa.Column("reading_books", sa.String(length=100), nullable=False),
        sa.Column("listening_music", sa.String(length=100), nullable=False),
        sa.Column("mobile_no", sa.String(length=20), nullable=False),
        sa.Column("record_latitude", sa.Float(), nullable=True),
        sa.Column("record_longitude", sa.Float(), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_form_response")),
    )
    with op.batch_alter_table("form_response", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_form_response_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_form_response_timestamp"), ["timestamp"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("form_response", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_form_response_timestamp"))
        batch_op.drop_index(batch_op.f("ix_form_response_task_id"))
    op.drop_table("form_response")
    with op.batch_alter_table("team", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_team_task_id"))
    op.drop_table("team")
