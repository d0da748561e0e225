"""Web console sessions in the database: they survive a restart and are shared by
the server processes of one database. The API key is stored sealed under a key
derived from the session's cookie, which the database does not hold.

Revision ID: 0013_console_sessions
Revises: 0012_deployment_domains
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_console_sessions"
down_revision = "0012_deployment_domains"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_s", sa.Float(), nullable=False),
        sa.Column("last_seen_s", sa.Float(), nullable=False),
        sa.Column("flash", sa.JSON(), nullable=False),
        sa.Column("sealed_reveal", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
    )
    op.create_index(op.f("ix_console_sessions_key_id"), "console_sessions", ["key_id"])
    op.create_index(op.f("ix_console_sessions_last_seen_s"), "console_sessions", ["last_seen_s"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_sessions_last_seen_s"), table_name="console_sessions")
    op.drop_index(op.f("ix_console_sessions_key_id"), table_name="console_sessions")
    op.drop_table("console_sessions")
