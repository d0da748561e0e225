"""What a fine-tuning job asks of the node it runs on (the Ray executor).

Revision ID: 0018_job_resources
Revises: 0017_library_vectors
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_job_resources"
down_revision = "0017_library_vectors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("resources")
