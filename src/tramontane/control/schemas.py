"""The deployments API's response bodies, built from the control plane's run-time
objects; the domain objects themselves know nothing of JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from .deployment import Deployment
from .models import EventRow, RevisionRow
from .replica import Replica
from .secrets import SecretInfo


class ReplicaOut(BaseModel):
    id: str
    state: str
    node: str | None
    host: str | None
    port: int | None
    pid: int | None
    revision: int
    draining: bool
    restarts: int
    in_flight: int
    held_memory_mb: int
    cpu_percent: float | None

    @classmethod
    def of(cls, replica: Replica) -> ReplicaOut:
        handle = replica.handle
        return cls(
            id=replica.id,
            state=replica.state.value,
            node=handle.node if handle else None,
            host=handle.host if handle else None,
            port=handle.port if handle else None,
            pid=handle.pid if handle else None,
            revision=replica.revision,
            draining=replica.draining,
            restarts=replica.restarts,
            in_flight=replica.in_flight,
            held_memory_mb=replica.held_memory_mb,
            cpu_percent=replica.cpu_percent,
        )


class DeploymentOut(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    name: str
    kind: str
    # "active", "rolling_out", or "rolled_back" (the last rollout failed: see status_reason).
    status: str
    status_reason: str | None
    revision: int
    rolling_out: int | None
    desired_replicas: int
    in_flight: int
    queued: int
    replicas: list[ReplicaOut]
    spec: dict[str, Any]

    @classmethod
    def of(cls, deployment: Deployment) -> DeploymentOut:
        return cls(
            id=deployment.id,
            name=deployment.name,
            kind=deployment.spec.kind.value,
            status=deployment.status,
            status_reason=deployment.rollback_reason,
            revision=deployment.revision,
            rolling_out=deployment.rolling_out,
            desired_replicas=deployment.desired,
            in_flight=deployment.in_flight(),
            queued=deployment.queued,
            replicas=[ReplicaOut.of(r) for r in deployment.replicas.values()],
            spec=deployment.spec.model_dump(mode="json"),
        )


class DeploymentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]


class DeploymentDeleted(BaseModel):
    name: str
    object: Literal["deployment"] = "deployment"
    deleted: bool = True


class LoadPoint(BaseModel):
    t: int  # the bucket's start, Unix seconds
    requests: int
    requests_per_s: float
    mean_latency_ms: float | None  # None: no request in the bucket
    max_latency_ms: float | None
    replicas: int | None  # None: not sampled yet


class LoadHistoryOut(BaseModel):
    object: Literal["deployment.metrics"] = "deployment.metrics"
    name: str
    bucket_s: float
    data: list[LoadPoint]


class RevisionOut(BaseModel):
    object: Literal["deployment.revision"] = "deployment.revision"
    number: int
    # "active", "rolling_out", "superseded" or "failed".
    status: str
    reason: str | None
    created_at: datetime
    spec: dict[str, Any]

    @classmethod
    def of(cls, row: RevisionRow) -> RevisionOut:
        return cls(number=row.number, status=row.status, reason=row.reason, created_at=row.created_at, spec=row.spec)


class RevisionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RevisionOut]


class EventOut(BaseModel):
    object: Literal["deployment.event"] = "deployment.event"
    # revision_created, rollout_started, rolled_out, rolled_back, scaled,
    # scale_failed, slept, woke, crashed, evicted.
    kind: str
    message: str
    revision: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: EventRow) -> EventOut:
        return cls(kind=row.kind, message=row.message, revision=row.revision, created_at=row.created_at)


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]


class SecretOut(BaseModel):
    """A secret as the API shows it: never its value."""

    object: Literal["secret"] = "secret"
    name: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, info: SecretInfo) -> SecretOut:
        return cls(name=info.name, created_at=info.created_at, updated_at=info.updated_at)


class SecretList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SecretOut]


class SecretDeleted(BaseModel):
    object: Literal["secret"] = "secret"
    name: str
    deleted: bool = True
