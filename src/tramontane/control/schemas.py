"""The deployments API's response bodies, built from the control plane's run-time
objects; the domain objects themselves know nothing of JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from .deployment import Deployment
from .replica import Replica


class ReplicaOut(BaseModel):
    id: str
    state: str
    node: str | None
    host: str | None
    port: int | None
    pid: int | None
    restarts: int
    in_flight: int
    held_memory_mb: int

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
            restarts=replica.restarts,
            in_flight=replica.in_flight,
            held_memory_mb=replica.held_memory_mb,
        )


class DeploymentOut(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    name: str
    kind: str
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
