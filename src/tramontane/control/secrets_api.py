"""`/v1/secrets`: the caller's workspace's secrets (API keys with the deploy
capability). A value goes in on create or update and never comes out: lists and
answers carry names and dates only. A secret that a deployment references
cannot be deleted until no deployment does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..errors import Conflict
from ..tenancy import Capability, Principal, require
from ..tenancy.audit import Actor
from .plane import ControlPlane
from .schemas import SecretDeleted, SecretList, SecretOut
from .secrets import MAX_VALUE_BYTES, SecretStore
from .spec import SECRET_NAME_PATTERN

Deploy = Annotated[Principal, Depends(require(Capability.DEPLOY))]


async def get_plane(request: Request) -> ControlPlane:
    return request.app.state.control_plane


Plane = Annotated[ControlPlane, Depends(get_plane)]


class SecretCreate(BaseModel):
    name: str = Field(pattern=SECRET_NAME_PATTERN)
    value: str = Field(max_length=MAX_VALUE_BYTES)


class SecretUpdate(BaseModel):
    value: str = Field(max_length=MAX_VALUE_BYTES)


router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


def _secrets(plane: ControlPlane) -> SecretStore:
    return plane.secrets


@router.post("", status_code=201)
async def create_secret(body: SecretCreate, principal: Deploy, plane: Plane) -> SecretOut:
    created = _secrets(plane).create(principal.workspace_id, body.name, body.value, Actor(principal.key_prefix))
    return SecretOut.of(created)


@router.get("")
async def list_secrets(principal: Deploy, plane: Plane) -> SecretList:
    return SecretList(data=[SecretOut.of(s) for s in _secrets(plane).list(principal.workspace_id)])


@router.put("/{secret_name}")
async def update_secret(secret_name: str, body: SecretUpdate, principal: Deploy, plane: Plane) -> SecretOut:
    """A new value, given to replicas started from now on (redeploy to renew the running ones)."""
    updated = _secrets(plane).update(principal.workspace_id, secret_name, body.value, Actor(principal.key_prefix))
    return SecretOut.of(updated)


@router.delete("/{secret_name}")
async def delete_secret(secret_name: str, principal: Deploy, plane: Plane) -> SecretDeleted:
    name = secret_name
    users = [d.name for d in plane.list(principal.workspace_id) if name in d.spec.secret_names()]
    if users:
        raise Conflict(
            f"Secret '{name}' is used by deployment(s) {', '.join(sorted(users))}; change them first",
            code="secret_in_use",
        )
    _secrets(plane).delete(principal.workspace_id, name, Actor(principal.key_prefix))
    return SecretDeleted(name=name)
