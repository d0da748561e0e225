"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM serves them:
a PEFT LoRA adapter folder on the server's disk served (or no longer served) as a
model on its base model's engine, while the server runs.

Platform admins only: the path names a folder on the server, which no tenant may
choose. An adapter loaded here is every workspace's unless `workspace_id` names
the one that may use it; it is served until it is unloaded or the server stops."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse

from ..engine.errors import ModelLoadError
from ..errors import Conflict, Forbidden, Invalid
from ..inference.registry import ModelRegistry
from ..tenancy import Capability, Principal, require

router = APIRouter(tags=["admin"])


async def _platform_admin(principal: Annotated[Principal, Depends(require(Capability.ADMIN))]) -> Principal:
    if not principal.platform_admin:
        raise Forbidden("Only a platform admin key can load or unload adapters", code="platform_admin_required")
    return principal


PlatformAdmin = Annotated[Principal, Depends(_platform_admin)]


class LoadLoraAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=200, pattern=r"^[^\s/]+$")
    lora_path: str = Field(min_length=1, max_length=4096)
    base_model_name: str | None = None  # default: the one base chat model served
    workspace_id: str | None = None  # the only workspace that sees it; default: all


class UnloadLoraAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=200)


def _base_model(models: ModelRegistry, named: str | None) -> str:
    if named is not None:
        return named
    bases = [name for name, _ in models.engines()]
    if len(bases) != 1:
        raise Invalid(f"Name the base model: this server serves {len(bases)} ({', '.join(bases)})",
                      param="base_model_name")
    return bases[0]


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapter, request: Request, principal: PlatformAdmin) -> PlainTextResponse:
    models: ModelRegistry = request.app.state.models
    if not os.path.isabs(body.lora_path) or not os.path.isfile(os.path.join(body.lora_path, "adapter_config.json")):
        raise Invalid("lora_path must be the absolute path of a PEFT adapter folder (with adapter_config.json)",
                      param="lora_path")
    if _is_served(models, body.lora_name):
        raise Conflict(f"A model named '{body.lora_name}' is already served", param="lora_name")
    base = _base_model(models, body.base_model_name)
    try:
        await models.add_adapter(body.lora_name, base, body.lora_path, workspace_id=body.workspace_id)
    except ModelLoadError as exc:
        raise Invalid(f"The adapter cannot be served on '{base}': {exc}", param="lora_path") from None
    except ValueError as exc:  # e.g. the base named is itself an adapter
        raise Invalid(str(exc), param="base_model_name") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapter, request: Request, principal: PlatformAdmin) -> PlainTextResponse:
    models: ModelRegistry = request.app.state.models
    try:
        await models.remove_adapter(body.lora_name)
    except ValueError as exc:  # a base model
        raise Invalid(str(exc), param="lora_name") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def _is_served(models: ModelRegistry, name: str) -> bool:
    """Whether any model (a workspace's fine-tuned ones included) is named `name`."""
    return any(card.id == name for card in models.cards())
