"""Custom domains of deployments, each hostname unique across workspaces.

Revision ID: 0012_deployment_domains
Revises: 0011_classifier_jobs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tramontane.store.types import UTCDateTime

revision = "0012_deployment_domains"
down_revision = "0011_classifier_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_domains",
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("deployment_id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_deployment_domains_deployment_id_deployments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name="fk_deployment_domains_workspace_id_workspaces",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("hostname", name="pk_deployment_domains"),
    )
    op.create_index("ix_deployment_domains_deployment_id", "deployment_domains", ["deployment_id"])
    op.create_index("ix_deployment_domains_workspace_id", "deployment_domains", ["workspace_id"])


def downgrade() -> None:
    op.drop_table("deployment_domains")
