"""`/v1/deployments`: create, list, inspect, update (a new revision, rolled out),
roll back, scale, read logs and events of, and delete the caller's workspace's
deployments (API keys with the deploy capability)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from ..errors import Unprocessable
from ..tenancy import Capability, Principal, require
from .plane import ControlPlane
from .schemas import (
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    EventList,
    EventOut,
    LoadHistoryOut,
    RevisionList,
    RevisionOut,
)
from .spec import DeploymentSpec

Deploy = Annotated[Principal, Depends(require(Capability.DEPLOY))]


async def get_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane


Plane = Annotated[ControlPlane, Depends(get_plane)]


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0)


class RollbackRequest(BaseModel):
    # The revision whose spec to serve again; default: the one before the current.
    revision: int | None = Field(default=None, ge=1)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, object by object (JSON merge patch, RFC 7396: a null removes a key)."""
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


@router.post("", status_code=201)
async def create_deployment(spec: Annotated[DeploymentSpec, Body()], principal: Deploy, plane: Plane) -> DeploymentOut:
    return DeploymentOut.of(await plane.create(principal.workspace_id, spec))


@router.get("")
async def list_deployments(principal: Deploy, plane: Plane) -> DeploymentList:
    return DeploymentList(data=[DeploymentOut.of(d) for d in plane.list(principal.workspace_id)])


@router.get("/{name}")
async def get_deployment(name: str, principal: Deploy, plane: Plane) -> DeploymentOut:
    return DeploymentOut.of(plane.get(principal.workspace_id, name))


@router.put("/{name}")
async def replace_deployment(
    name: str, spec: Annotated[DeploymentSpec, Body()], principal: Deploy, plane: Plane
) -> DeploymentOut:
    """A new revision with this spec, rolled out in the background (watch `status`)."""
    return DeploymentOut.of(await plane.update(principal.workspace_id, name, spec))


@router.patch("/{name}")
async def patch_deployment(
    name: str, changes: Annotated[dict[str, Any], Body()], principal: Deploy, plane: Plane
) -> DeploymentOut:
    """A new revision: the current spec with `changes` merged in (RFC 7396)."""
    current = plane.get(principal.workspace_id, name).spec.model_dump(mode="json", exclude_defaults=True)
    try:
        spec = DeploymentSpec.model_validate(merge(current, changes))
    except ValidationError as exc:
        raise Unprocessable(_first_error(exc), code="invalid_spec") from None
    return DeploymentOut.of(await plane.update(principal.workspace_id, name, spec))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


@router.get("/{name}/revisions")
async def list_revisions(name: str, principal: Deploy, plane: Plane) -> RevisionList:
    return RevisionList(data=[RevisionOut.of(r) for r in plane.revisions(principal.workspace_id, name)])


@router.post("/{name}/rollback")
async def rollback_deployment(
    name: str, principal: Deploy, plane: Plane, request: Annotated[RollbackRequest | None, Body()] = None
) -> DeploymentOut:
    """Serves an earlier revision's spec again, rolled out as a new revision."""
    number = request.revision if request else None
    return DeploymentOut.of(await plane.rollback(principal.workspace_id, name, number))


@router.get("/{name}/events")
async def deployment_events(
    name: str, principal: Deploy, plane: Plane, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> EventList:
    """The newest events, oldest first: revisions, rollouts, scaling, sleep, crashes."""
    return EventList(data=[EventOut.of(e) for e in plane.events(principal.workspace_id, name, limit)])


@router.delete("/{name}")
async def delete_deployment(name: str, principal: Deploy, plane: Plane) -> DeploymentDeleted:
    await plane.delete(principal.workspace_id, name)
    return DeploymentDeleted(name=name)


@router.post("/{name}/scale")
async def scale_deployment(name: str, request: ScaleRequest, principal: Deploy, plane: Plane) -> DeploymentOut:
    return DeploymentOut.of(await plane.scale(principal.workspace_id, name, request.replicas))


@router.get("/{name}/logs", response_class=PlainTextResponse)
async def deployment_logs(
    name: str,
    principal: Deploy,
    plane: Plane,
    tail: Annotated[int, Query(ge=1, le=10_000)] = 200,
    follow: bool = False,
) -> Response:
    """The last `tail` lines as text; with `follow=true`, a server-sent event stream:
    those lines as one `tail` event, then each batch of new ones as one event (a
    `data:` line per log line), until the deployment is deleted or the client goes.
    A quiet stream carries a comment line every 15 s, which SSE clients ignore."""
    if not follow:
        return PlainTextResponse(plane.logs(principal.workspace_id, name, tail))
    batches = plane.follow_logs(principal.workspace_id, name, tail)

    async def events() -> AsyncIterator[str]:
        first = True
        async for lines in batches:
            if lines:
                kind = "event: tail\n" if first else ""
                yield kind + "".join(f"data: {line}\n" for line in lines) + "\n"
            elif not first:
                yield ": keepalive\n\n"
            first = False

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.get("/{name}/metrics")
async def deployment_metrics(name: str, principal: Deploy, plane: Plane) -> LoadHistoryOut:
    """Requests per second, latency (arrival to last byte, through the router) and
    live replicas, in buckets over the last hour, oldest first."""
    deployment = plane.get(principal.workspace_id, name)
    history = deployment.history
    return LoadHistoryOut(name=name, bucket_s=history.bucket_s, data=history.series())
