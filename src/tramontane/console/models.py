"""The models page: what the platform serves to this workspace, and in what state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..tenancy import Capability
from .web import ConsoleRoute, CurrentUser

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

GIB = 1024**3


def _runtime(request: Request, model_id: str, workspace_id: str) -> dict[str, Any]:
    """How the model runs: engine settings and state, from the app's registry
    (the API's cards say what a model can do, not how it is served)."""
    entry = request.app.state.models.entry(model_id, workspace_id)
    engine = getattr(entry, "engine", None)
    if hasattr(entry, "loader"):  # a classifier: a head over an embedding model
        return {"kind": "classifier", "state": "running", "dimensions": None}
    if engine is None:  # an embedding model
        model = getattr(entry, "model", None)
        return {"kind": "embedding", "state": "running", "dimensions": getattr(model, "dim", None)}
    core = engine.engine
    stats = engine.stats()
    config = core.config
    return {
        "kind": "chat",
        "state": "sleeping" if core.asleep else ("failed" if engine.dead is not None else "running"),
        "architecture": core.model_config.architecture,
        "quantization": core.runner.quantization,  # what "auto" resolved to
        "dtype": str(core.runner.dtype).removeprefix("torch."),
        "device": config.device,
        "kv_cache_gib": config.kv_cache_memory_gb,
        "kv_cache_usage": stats.kv_cache_usage,
        "running": stats.num_running,
        "waiting": stats.num_waiting,
        "adapter_of": entry.adapter.root if entry.adapter is not None else None,
    }


@router.get("/models")
async def models_page(user: CurrentUser, request: Request) -> Response:
    user.require(Capability.INFERENCE)
    cards = (await user.json("GET", "/v1/models"))["data"]
    rows = [{"card": card, "runtime": _runtime(request, card["id"], user.principal.workspace_id)} for card in cards]
    return user.render("models.html", title="Models", rows=rows)
