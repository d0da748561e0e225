"""`/v1/deployments`: create, list, inspect, scale, read logs of and delete the
caller's workspace's deployments (API keys with the deploy capability)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..tenancy import Capability, Principal, require
from .plane import ControlPlane
from .schemas import DeploymentDeleted, DeploymentList, DeploymentOut, LoadHistoryOut
from .spec import DeploymentSpec

Deploy = Annotated[Principal, Depends(require(Capability.DEPLOY))]


async def get_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane


Plane = Annotated[ControlPlane, Depends(get_plane)]


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0)


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
    `data:` line per log line), until the deployment is deleted or the client goes."""
    if not follow:
        return PlainTextResponse(plane.logs(principal.workspace_id, name, tail))
    batches = plane.follow_logs(principal.workspace_id, name, tail)

    async def events() -> AsyncIterator[str]:
        first = True
        async for lines in batches:
            if lines:
                kind = "event: tail\n" if first else ""
                yield kind + "".join(f"data: {line}\n" for line in lines) + "\n"
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
