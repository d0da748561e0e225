"""Running the packaged Alembic migrations from code, with no alembic.ini."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from .database import Store

MIGRATIONS = Path(__file__).parent / "migrations"

# Any fixed number: the PostgreSQL advisory lock that serialises servers
# migrating one database at the same moment.
_PG_MIGRATION_LOCK = 0x746D7431


def alembic_config(connection: Connection) -> Config:
    """A Config for `migrations/`, handing env.py the connection to migrate through."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(store: Store, revision: str = "head") -> None:
    """Brings the schema to `revision`; safe to call from several processes at once
    (PostgreSQL: advisory lock; SQLite: the migration holds the write lock)."""
    with store.write() as connection:
        if store.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), revision)


def current_revision(store: Store) -> str | None:
    with store.read() as connection:
        return MigrationContext.configure(connection).get_current_revision()
