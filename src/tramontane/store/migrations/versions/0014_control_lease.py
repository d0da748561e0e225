"""The control plane's lease: which gateway sharing the database leads it.

Revision ID: 0014_control_lease
Revises: 0013_console_sessions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_control_lease"
down_revision = "0013_console_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_leases",
        sa.Column("name", sa.String(length=63), primary_key=True),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("control_leases")
