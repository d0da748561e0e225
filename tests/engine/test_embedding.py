"""The hand-written BERT encoder against transformers, plus batching and truncation."""

from __future__ import annotations

import pytest
import torch

from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME, default_embedding_model_path
from tramontane.engine.embedding import EmbeddingModel
from tramontane.engine.errors import InvalidRequestError, ModelLoadError

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog, twice, because once was not enough.",
    "",
    "Mistral winds blow from the north-west; the tramontane from the north.",
]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel.from_path(default_embedding_model_path(), name=DEFAULT_EMBEDDING_MODEL_NAME)


def test_metadata(model):
    assert (model.name, model.dim, model.max_seq_len) == (DEFAULT_EMBEDDING_MODEL_NAME, 384, 256)
    assert (model.pooling, model.normalize) == ("mean", True)


def test_matches_transformers(model):
    transformers = pytest.importorskip("transformers")
    path = default_embedding_model_path()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf_model = transformers.AutoModel.from_pretrained(path).eval()
    batch = hf_tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = hf_model(**batch).last_hidden_state
    weights = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    got, counts = model.embed(TEXTS)
    assert got.dtype == torch.float32 and got.shape == (len(TEXTS), 384)
    assert counts == batch["attention_mask"].sum(1).tolist()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_batch_equals_one_by_one(model):
    batched, counts = model.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        single, (count,) = model.embed([text])
        assert count == counts[i]
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=0)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_long_input_truncates_or_raises(model):
    long_text = "word " * 400
    _, (count,) = model.embed([long_text])
    assert count == model.max_seq_len
    with pytest.raises(InvalidRequestError) as info:
        model.embed(["short", long_text], truncate=False)
    assert info.value.param == "input"
    assert model.embed(["short"], truncate=False)[1] == [3]


def test_empty_input(model):
    vectors, counts = model.embed([])
    assert vectors.shape == (0, 384) and counts == []


def test_bad_path_raises(tmp_path):
    with pytest.raises(ModelLoadError):
        EmbeddingModel.from_path(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError):
        EmbeddingModel.from_path(str(tmp_path))
