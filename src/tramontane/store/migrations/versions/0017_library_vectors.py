"""Libraries' embeddings in the shared database, for every gateway to search.

Revision ID: 0017_library_vectors
Revises: 0016_evaluations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_library_vectors"
down_revision = "0016_evaluations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "library_vectors",
        sa.Column(
            "chunk_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("document_chunks.id", name="fk_library_vectors_chunk_id_document_chunks", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("library_id", sa.String(length=32), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_library_vectors_library_id", "library_vectors", ["library_id"])
    with op.batch_alter_table("libraries") as batch:
        batch.add_column(sa.Column("vectors_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("libraries") as batch:
        batch.drop_column("vectors_version")
    op.drop_index("ix_library_vectors_library_id", table_name="library_vectors")
    op.drop_table("library_vectors")
