"""Tramontane's database: engine and sessions from a URL, packaged migrations,
and the ORM models.

SQLite (a file under `~/.tramontane`) is the embedded default; set
`TRAMONTANE_DATABASE_URL=postgresql+psycopg://...` to share one database
between several server processes.
"""

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

# Registers the control plane's tables in `Base.metadata`, which migrations and the
# models-match-migrations test compare against. After `.models`, which it needs.
from ..control import models as _control_models  # noqa: E402,F401  isort: skip
from ..finetune import models as _finetune_models  # noqa: E402,F401  isort: skip
from ..agents import models as _agents_models  # noqa: E402,F401  isort: skip

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
