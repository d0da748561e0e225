"""Agent version aliases.

Revision ID: 0007_agent_aliases
Revises: 0006_responses
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tramontane.store.types import UTCDateTime

revision = "0007_agent_aliases"
down_revision = "0006_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_aliases",
        sa.Column("agent_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_aliases_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_agent_aliases_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "alias", name=op.f("pk_agent_aliases")),
    )
    op.create_index(op.f("ix_agent_aliases_workspace_id"), "agent_aliases", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_aliases_workspace_id"), table_name="agent_aliases")
    op.drop_table("agent_aliases")
