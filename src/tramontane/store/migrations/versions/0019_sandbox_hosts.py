"""Sandbox hosts and the placement of each sandbox on one of them.

Revision ID: 0019_sandbox_hosts
Revises: 0018_job_resources
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_sandbox_hosts"
down_revision = "0018_job_resources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_hosts",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("incarnation", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=False),
        sa.Column("cpu", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("max_sandboxes", sa.Integer(), nullable=False),
        sa.Column("tiers", sa.JSON(), nullable=False),
        sa.Column("committed_memory_mb", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "sandbox_placements",
        sa.Column("sandbox_id", sa.String(length=64), primary_key=True),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("template", sa.String(length=128), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column(
            "workspace_id",
            sa.String(length=32),
            sa.ForeignKey("workspaces.id", name="fk_sandbox_placements_workspace_id_workspaces", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_sandbox_placements_host", "sandbox_placements", ["host"])
    op.create_index("ix_sandbox_placements_workspace_id", "sandbox_placements", ["workspace_id"])


def downgrade() -> None:
    op.drop_table("sandbox_placements")
    op.drop_table("sandbox_hosts")
