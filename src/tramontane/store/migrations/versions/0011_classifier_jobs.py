"""Fine-tuning jobs of Mistral's classifier type, and their targets.

Revision ID: 0011_classifier_jobs
Revises: 0010_workspace_weight
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_classifier_jobs"
down_revision = "0010_workspace_weight"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("job_type", sa.String(length=16), nullable=False, server_default="completion"))
        batch.add_column(sa.Column("classifier_targets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("classifier_targets")
        batch.drop_column("job_type")
