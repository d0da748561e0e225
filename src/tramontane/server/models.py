"""GET /v1/models, GET and DELETE /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from .deps import Models
from .errors import APIError
from .protocol import ModelCard, ModelDeleted, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(models: Models) -> ModelList:
    return ModelList(data=models.cards())


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, models: Models) -> ModelCard:
    return models.card(model_id)


@router.delete("/v1/models/{model_id:path}", response_model=ModelDeleted)
async def delete_model(model_id: str, models: Models) -> ModelDeleted:
    models.card(model_id)  # 404 for unknown models
    # Only fine-tuned models can be deleted, and this server serves base models only.
    raise APIError(400, f"The model '{model_id}' is a base model and cannot be deleted", code="model_not_deletable", param="model_id")
