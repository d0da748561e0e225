"""Request and response bodies of the admin API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..store import ApiKey, AuditEvent, Organisation, Workspace
from .capabilities import Capability, deserialise_capabilities
from .keys import KeyStatus, key_status
from .principal import KEY_PREFIX, Limits
from .request_logs import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS

Name = Field(min_length=1, max_length=200)
# Explicit null lifts a limit; 0 blocks everything. The upper bounds are the
# columns' (INTEGER, BIGINT): a larger value would fail in the database, a 500.
Limit = Field(default=None, ge=0, le=2**31 - 1)
TokenLimit = Field(default=None, ge=0, le=2**63 - 1)
# Null: request and response bodies are not stored.
RetentionDays = Field(default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS)
# A workspace's share of the engines against others (engine/scheduler.py).
Weight = Field(default=None, gt=0, le=1000)
# A century: beyond some point datetime arithmetic overflows, and no key needs more.
MAX_EXPIRES_IN_S = 100 * 366 * 24 * 3600


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Limit
    tokens_per_minute: int | None = TokenLimit
    max_concurrent_requests: int | None = Limit
    monthly_token_budget: int | None = TokenLimit

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())

    @classmethod
    def of(cls, row: Workspace | ApiKey) -> LimitsBody:
        return cls(**Limits.of(row).as_dict())


class OrganisationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name


class OrganisationOut(BaseModel):
    object: Literal["organisation"] = "organisation"
    id: str
    name: str
    is_platform: bool
    created_at: datetime

    @classmethod
    def of(cls, row: Organisation) -> OrganisationOut:
        return cls(id=row.id, name=row.name, is_platform=row.is_platform, created_at=row.created_at)


class WorkspaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    # Defaults to the caller's own organisation.
    organisation_id: str | None = None
    limits: LimitsBody = LimitsBody()
    request_log_retention_days: int | None = RetentionDays
    # Platform admins only: it takes engine time from other organisations' workspaces.
    scheduling_weight: float | None = Weight


class WorkspacePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    # Only the limits present in the body change.
    limits: LimitsBody | None = None
    # Present: days to keep request and response bodies, or null to stop storing them.
    request_log_retention_days: int | None = RetentionDays
    # Present: the workspace's scheduling weight (platform admins only), or null for
    # the operator's default.
    scheduling_weight: float | None = Weight


class WorkspaceOut(BaseModel):
    object: Literal["workspace"] = "workspace"
    id: str
    organisation_id: str
    name: str
    created_at: datetime
    limits: LimitsBody
    request_log_retention_days: int | None
    # Null: the operator's default (`tramontane up --workspace-weight`, else 1).
    scheduling_weight: float | None

    @classmethod
    def of(cls, row: Workspace) -> WorkspaceOut:
        return cls(
            id=row.id,
            organisation_id=row.organisation_id,
            name=row.name,
            created_at=row.created_at,
            limits=LimitsBody.of(row),
            request_log_retention_days=row.request_log_retention_days,
            scheduling_weight=row.scheduling_weight,
        )


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    capabilities: list[Capability] = Field(min_length=1)
    expires_at: datetime | None = None
    expires_in_s: int | None = Field(default=None, gt=0, le=MAX_EXPIRES_IN_S)
    limits: LimitsBody = LimitsBody()


class KeyOut(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    # The public part: how lists, logs and the audit log name the key.
    prefix: str
    name: str
    workspace_id: str
    capabilities: list[Capability]
    status: KeyStatus
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: LimitsBody

    @classmethod
    def of(cls, row: ApiKey, now: datetime) -> KeyOut:
        return cls(
            id=row.id,
            prefix=f"{KEY_PREFIX}{row.id}",
            name=row.name,
            workspace_id=row.workspace_id,
            capabilities=sorted(deserialise_capabilities(row.capabilities)),
            status=key_status(row, now),
            created_by=row.created_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            limits=LimitsBody.of(row),
        )


class CreatedKeyOut(KeyOut):
    # The whole secret key: in this response only, never again.
    key: str


class DeletedOut(BaseModel):
    id: str
    object: str
    deleted: bool = True


class UsageReportOut(BaseModel):
    object: Literal["usage_report"] = "usage_report"
    group_by: list[str]
    since: date | None
    until: date | None
    data: list[dict[str, Any]]


class AuditEventOut(BaseModel):
    object: Literal["audit_event"] = "audit_event"
    id: int
    created_at: datetime
    action: str
    outcome: str
    actor: str
    organisation_id: str | None
    workspace_id: str | None
    target: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, row: AuditEvent) -> AuditEventOut:
        return cls(
            id=row.id,
            created_at=row.created_at,
            action=row.action,
            outcome=row.outcome,
            actor=row.actor,
            organisation_id=row.organisation_id,
            workspace_id=row.workspace_id,
            target=row.target,
            details=row.details,
        )


Item = TypeVar("Item", bound=BaseModel)


class ListOut(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
