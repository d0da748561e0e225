"""A workspace's scheduling weight, set by an operator at run time.

Revision ID: 0010_workspace_weight
Revises: 0009_document_pages
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_workspace_weight"
down_revision = "0009_document_pages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("scheduling_weight", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("scheduling_weight")
