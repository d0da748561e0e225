"""The page of its document a library passage was read from (PDFs), for citations.

Revision ID: 0009_document_pages
Revises: 0008_openai_fine_tuning
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_document_pages"
down_revision = "0008_openai_fine_tuning"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("document_chunks") as batch:
        batch.add_column(sa.Column("page", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("document_chunks") as batch:
        batch.drop_column("page")
