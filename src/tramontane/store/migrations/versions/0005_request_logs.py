"""Opt-in request logs (a workspace's retention, the logs table) and batch jobs'
creating key, which their requests' usage is metered as.

Revision ID: 0005_request_logs
Revises: 0004_agents
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tramontane.store.types import UTCDateTime

revision = "0005_request_logs"
down_revision = "0004_agents"
branch_labels = None
depends_on = None

_AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("request_log_retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "request_logs",
        sa.Column("id", _AutoId, nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name="fk_request_logs_workspace_id_workspaces", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name="fk_request_logs_api_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_request_logs"),
    )
    op.create_index("ix_request_logs_workspace_request", "request_logs", ["workspace_id", "request_id"])
    op.create_index("ix_request_logs_api_key_id", "request_logs", ["api_key_id"])
    op.create_index("ix_request_logs_expires_at", "request_logs", ["expires_at"])
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(32), nullable=True))
        batch.create_foreign_key(
            "fk_batch_jobs_api_key_id_api_keys", "api_keys", ["api_key_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_constraint("fk_batch_jobs_api_key_id_api_keys", type_="foreignkey")
        batch.drop_column("api_key_id")
    op.drop_table("request_logs")
    op.drop_column("workspaces", "request_log_retention_days")
