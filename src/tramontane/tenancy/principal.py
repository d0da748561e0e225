"""Who is calling: an authenticated API key, its workspace and its limits."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .capabilities import Capability
from .energy import EnergySpan

KEY_PREFIX = "tmt_"


@dataclass(frozen=True)
class Limits:
    """Limits of a key or a workspace; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    monthly_token_budget: int | None = None

    @classmethod
    def of(cls, row: Any) -> Limits:
        """Reads the limit columns of a key or workspace (ORM object or Core row)."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)

    @property
    def unlimited(self) -> bool:
        # Checked on every request: getattr, not asdict (which deep-copies).
        return all(getattr(self, name) is None for name in LIMIT_FIELDS)


LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
NO_LIMITS = Limits()


@dataclass
class Ticket:
    """One admitted request: its concurrency lease and its energy span, closed when
    the request ends; `usage_recorded` stops a request from being metered twice."""

    lease_id: str | None
    span: EnergySpan
    started: float = field(default_factory=time.perf_counter)
    usage_recorded: bool = False
    gated: bool = False  # holds a slot of its workspace in this process's WorkspaceGate


@dataclass(frozen=True)
class Principal:
    key_id: str
    workspace_id: str
    organisation_id: str
    capabilities: frozenset[Capability]
    # An admin key of the platform organisation: administers every organisation.
    platform_admin: bool = False
    key_limits: Limits = NO_LIMITS
    workspace_limits: Limits = NO_LIMITS
    # Days the workspace keeps request and response bodies; None: not stored.
    request_log_retention_days: int | None = None
    # The workspace's scheduling weight as stored; None: the operator's default.
    scheduling_weight: float | None = None
    # Set by the `require` dependency for the duration of one request.
    ticket: Ticket | None = None

    @property
    def key_prefix(self) -> str:
        """The key's public name, safe to log and show."""
        return f"{KEY_PREFIX}{self.key_id}"

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities
