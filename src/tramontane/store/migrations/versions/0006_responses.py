"""Stored responses of the Responses API.

Revision ID: 0006_responses
Revises: 0005_request_logs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tramontane.store.types import UTCDateTime

revision = "0006_responses"
down_revision = "0005_request_logs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("previous_response_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_responses_workspace_id_workspaces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
    )
    op.create_index(op.f("ix_responses_workspace_id"), "responses", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_responses_workspace_id"), table_name="responses")
    op.drop_table("responses")
