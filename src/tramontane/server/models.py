"""GET /v1/models, GET and DELETE /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from ..errors import Invalid
from ..inference.classifiers import ClassifierEntry
from ..inference.fast_path import InferenceKey, InferenceRoute
from ..inference.protocol import FineTunedModelCard, ModelCard, ModelDeleted, ModelList
from .deps import Models

router = APIRouter(route_class=InferenceRoute)


@router.get("/v1/models", response_model=ModelList)
async def list_models(models: Models, principal: InferenceKey) -> ModelList:
    return ModelList(data=models.cards(principal.workspace_id))


@router.get("/v1/models/{model_id:path}", response_model=FineTunedModelCard | ModelCard)
async def retrieve_model(model_id: str, models: Models, principal: InferenceKey) -> ModelCard:
    return models.card(model_id, principal.workspace_id)


@router.delete("/v1/models/{model_id:path}", response_model=ModelDeleted)
async def delete_model(model_id: str, models: Models, principal: InferenceKey) -> ModelDeleted:
    card = models.card(model_id, principal.workspace_id)  # 404 for unknown models
    if not isinstance(card, FineTunedModelCard):
        raise Invalid(f"The model '{model_id}' is a base model and cannot be deleted", code="model_not_deletable",
            param="model_id",
        )
    if isinstance(models.entry(model_id), ClassifierEntry):
        models.remove_classifier(model_id)
    else:
        await models.remove_adapter(model_id)
    return ModelDeleted(id=model_id, deleted=True)
