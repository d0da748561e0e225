"""`/v1/deployments/{name}/domains`: the custom domains of a deployment of the
caller's workspace (API keys with the deploy capability)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .api import Deploy, Plane


class DomainIn(BaseModel):
    domain: str = Field(min_length=1, max_length=253, examples=["api.example.com"])


class DomainOut(BaseModel):
    object: Literal["deployment.domain"] = "deployment.domain"
    domain: str
    deployment: str


class DomainList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DomainOut]


class DomainDeleted(BaseModel):
    object: Literal["deployment.domain"] = "deployment.domain"
    domain: str
    deleted: bool = True


router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


@router.get("/{name}/domains")
async def list_domains(name: str, principal: Deploy, plane: Plane) -> DomainList:
    deployment = plane.get(principal.workspace_id, name)
    return DomainList(data=[DomainOut(domain=d, deployment=name) for d in plane.domains.of(deployment.id)])


@router.post("/{name}/domains", status_code=201)
async def add_domain(name: str, body: DomainIn, principal: Deploy, plane: Plane) -> DomainOut:
    """Routes requests whose Host is `domain` to the deployment; 409 when any
    deployment already has it. Point the domain's DNS at this server."""
    deployment = plane.get(principal.workspace_id, name)
    hostname = plane.domains.add(principal.workspace_id, deployment.id, body.domain)
    return DomainOut(domain=hostname, deployment=name)


@router.delete("/{name}/domains/{domain}")
async def remove_domain(name: str, domain: str, principal: Deploy, plane: Plane) -> DomainDeleted:
    deployment = plane.get(principal.workspace_id, name)
    plane.domains.remove(deployment.id, domain)
    return DomainDeleted(domain=domain)
