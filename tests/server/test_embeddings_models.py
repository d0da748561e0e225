"""/v1/embeddings and /v1/models through both SDKs."""

from __future__ import annotations

import math

import openai
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL
from tramontane.finetune.moderation import MODERATION_MODEL

TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Quarterly revenue grew by 4%."]


def _cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=False)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_openai_embeddings_base64_and_float_agree(oai):
    # The SDK asks for base64 by default and decodes little-endian float32 itself.
    default = oai.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS)
    floats = oai.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data, strict=False):
        assert len(a.embedding) == 384
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=False)) < 1e-6
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    vectors = [d.embedding for d in floats.data]
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])


def test_mistral_embeddings(mistral):
    response = mistral.embeddings.create(model=EMBEDDING_MODEL, inputs=["hello", "world"])
    assert response.id and len(response.data) == 2 and len(response.data[0].embedding) == 384


def test_embedding_dimension_mismatch_is_400(oai):
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=EMBEDDING_MODEL, input="x", dimensions=128)


def test_chat_model_cannot_embed_and_vice_versa(oai):
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=CHAT_MODEL, input="x")
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])


def test_openai_models(oai):
    ids = [m.id for m in oai.models.list()]
    assert ids == [CHAT_MODEL, EMBEDDING_MODEL, MODERATION_MODEL]
    card = oai.models.retrieve(CHAT_MODEL)
    assert card.object == "model" and card.owned_by and card.created > 0


def test_mistral_models(mistral):
    cards = {card.id: card for card in mistral.models.list().data}
    chat = cards[CHAT_MODEL]
    assert chat.type == "base" and chat.capabilities.completion_chat and chat.capabilities.function_calling
    assert chat.max_context_length > 0
    assert not cards[EMBEDDING_MODEL].capabilities.completion_chat
    assert mistral.models.retrieve(model_id=EMBEDDING_MODEL).id == EMBEDDING_MODEL


def test_delete_model(oai):
    with pytest.raises(openai.BadRequestError):
        oai.models.delete(CHAT_MODEL)
    with pytest.raises(openai.NotFoundError):
        oai.models.delete("no-such-model")
