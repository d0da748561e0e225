"""Deployments: workspace secrets, revisions of a deployment's spec, events, and
the revision each replica runs.

Revision ID: 0015_deploy_secrets_revisions
Revises: 0014_control_lease
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tramontane.store.types import UTCDateTime

revision = "0015_deploy_secrets_revisions"
down_revision = "0014_control_lease"
branch_labels = None
depends_on = None


def _workspace_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["workspace_id"], ["workspaces.id"], name=f"fk_{table}_workspace_id_workspaces", ondelete="CASCADE"
    )


def _deployment_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["deployment_id"], ["deployments.id"], name=f"fk_{table}_deployment_id_deployments", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _workspace_fk("secrets"),
        sa.PrimaryKeyConstraint("id", name="pk_secrets"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_secrets_workspace_id"),
    )
    op.create_index("ix_secrets_workspace_id", "secrets", ["workspace_id"])
    op.create_table(
        "deployment_revisions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("deployment_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _workspace_fk("deployment_revisions"),
        _deployment_fk("deployment_revisions"),
        sa.PrimaryKeyConstraint("id", name="pk_deployment_revisions"),
        sa.UniqueConstraint("deployment_id", "number", name="uq_deployment_revisions_deployment_id"),
    )
    op.create_index("ix_deployment_revisions_workspace_id", "deployment_revisions", ["workspace_id"])
    op.create_index("ix_deployment_revisions_deployment_id", "deployment_revisions", ["deployment_id"])
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("deployment_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _workspace_fk("deployment_events"),
        _deployment_fk("deployment_events"),
        sa.PrimaryKeyConstraint("id", name="pk_deployment_events"),
    )
    op.create_index("ix_deployment_events_workspace_id", "deployment_events", ["workspace_id"])
    op.create_index("ix_deployment_events_deployment_id", "deployment_events", ["deployment_id"])
    op.create_index("ix_deployment_events_created_at", "deployment_events", ["created_at"])
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("revision")
    op.drop_table("deployment_events")
    op.drop_table("deployment_revisions")
    op.drop_table("secrets")
