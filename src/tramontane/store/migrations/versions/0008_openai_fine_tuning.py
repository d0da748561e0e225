"""The API shape a fine-tuning job was created in (Mistral's or OpenAI's).

Revision ID: 0008_openai_fine_tuning
Revises: 0007_agent_aliases
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_openai_fine_tuning"
down_revision = "0007_agent_aliases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("api", sa.String(length=16), nullable=False, server_default="mistral"))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("api")
