"""Tramontane's database: engine and sessions from a URL, packaged migrations,
and the ORM models of organisations, workspaces, keys and usage. Each feature
defines its own tables on `Base`; `tramontane.platform.schema` gathers them all.

SQLite (a file under `~/.tramontane`) is the embedded default; set
`TRAMONTANE_DATABASE_URL=postgresql+psycopg://...` to share one database
between several server processes.
"""

from . import leases  # noqa: F401  (its table, on Base)
from .database import HOME_ENV, URL_ENV, Store, database_url, open_store, tramontane_home
from .migrate import current_revision, upgrade
from .models import (
    ApiKey,
    AuditEvent,
    Base,
    Organisation,
    RateCounter,
    RequestLease,
    RequestLog,
    Setting,
    UsageRecord,
    Workspace,
    WorkspaceOwned,
)

__all__ = [
    "HOME_ENV",
    "URL_ENV",
    "ApiKey",
    "AuditEvent",
    "Base",
    "Organisation",
    "RateCounter",
    "RequestLease",
    "RequestLog",
    "Setting",
    "Store",
    "UsageRecord",
    "Workspace",
    "WorkspaceOwned",
    "current_revision",
    "database_url",
    "open_store",
    "tramontane_home",
    "upgrade",
]
