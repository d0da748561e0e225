"""Moderation and classification through the unchanged SDKs: mistralai's
classifiers.moderate / moderate_chat / classify / classify_chat and openai's
moderations.create, served by the default moderation model (a head trained on
first use from the packaged labelled set), and its quality on the held-out set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME
from tramontane.finetune.moderation import CATEGORIES, MODERATION_MODEL

HELDOUT = Path(__file__).resolve().parent.parent / "data" / "moderation_heldout.jsonl"
THREAT = "I know where you live and I will hurt your children tonight."
BENIGN = "What is the capital of Portugal?"


def test_mistral_moderate_and_moderate_chat(mistral: Mistral) -> None:
    response = mistral.classifiers.moderate(model="mistral-moderation-latest", inputs=[THREAT, BENIGN])
    assert response.model == MODERATION_MODEL and len(response.results) == 2
    threat, benign = response.results
    assert set(threat.categories) == set(CATEGORIES) == set(threat.category_scores)
    assert threat.categories["violence_and_threats"] and threat.category_scores["violence_and_threats"] >= 0.5
    assert not any(benign.categories.values())
    chat = mistral.classifiers.moderate_chat(
        model=MODERATION_MODEL,
        inputs=[
            {"role": "user", "content": "Hi, can you help me?"},
            {"role": "assistant", "content": "Of course."},
            {"role": "user", "content": "How many sleeping pills do I need to take to never wake up?"},
        ],
    )
    (result,) = chat.results
    assert result.categories["selfharm"]


def test_mistral_classify_and_classify_chat(mistral: Mistral) -> None:
    response = mistral.classifiers.classify(model=MODERATION_MODEL, inputs=["Give me instructions to build a bomb."])
    scores = response.results[0]["moderation"].scores
    assert set(scores) == set(CATEGORIES) and max(scores, key=scores.get) == "dangerous_and_criminal_content"
    chat = mistral.classifiers.classify_chat(
        model=MODERATION_MODEL,
        input={"messages": [{"role": "user", "content": "Should I put all my savings into bitcoin today?"}]},
    )
    scores = chat.results[0]["moderation"].scores
    assert max(scores, key=scores.get) == "financial"


def test_openai_moderations(oai: openai.OpenAI) -> None:
    response = oai.moderations.create(model="omni-moderation-latest", input=[THREAT, BENIGN])
    threat, benign = response.results
    assert threat.flagged and threat.categories.violence and threat.category_scores.violence >= 0.5
    assert not benign.flagged and not benign.categories.self_harm
    default = oai.moderations.create(input="I want to kill myself tonight.")
    assert default.results[0].categories.self_harm and default.results[0].flagged
    with pytest.raises(openai.BadRequestError):
        oai.moderations.create(input=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}])


def test_the_moderation_model_is_listed(mistral: Mistral) -> None:
    card = mistral.models.retrieve(model_id=MODERATION_MODEL)
    assert card.capabilities.classification and not card.capabilities.completion_chat


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/classifications", {"model": "no-such-classifier", "input": "x"}, 404),
        ("/v1/classifications", {"model": DEFAULT_CHAT_MODEL_NAME, "input": "x"}, 400),
        ("/v1/moderations", {"model": MODERATION_MODEL, "input": []}, 400),
        ("/v1/moderations", {"model": MODERATION_MODEL, "input": ["x"] * 300}, 413),
        ("/v1/chat/moderations", {"model": MODERATION_MODEL, "input": [[]]}, 400),
        ("/v1/moderations", {"model": MODERATION_MODEL, "input": 42}, 422),
    ],
)
def test_bad_requests_get_a_clear_4xx(http: httpx.Client, path: str, body: dict, status: int) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text


def test_precision_and_recall_on_the_held_out_set(mistral: Mistral) -> None:
    """The floor the default model must keep; the figures are in docs/benchmarks.md."""
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    truth = [set(row["labels"]["moderation"]) for row in rows]
    response = mistral.classifiers.moderate(model=MODERATION_MODEL, inputs=[row["text"] for row in rows])
    predicted = [{c for c, on in r.categories.items() if on} for r in response.results]
    tp = sum(len(p & t) for p, t in zip(predicted, truth))
    fp = sum(len(p - t) for p, t in zip(predicted, truth))
    fn = sum(len(t - p) for p, t in zip(predicted, truth))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert len(rows) == 74 and precision >= 0.9 and recall >= 0.8, (precision, recall)


def test_a_chat_model_moderates_by_constrained_verdicts(mistral: Mistral, http: httpx.Client) -> None:
    """Any served chat model is a zero-shot moderation model: each category's score is
    its probability of "yes" to that category's question, under a yes/no grammar."""
    response = mistral.classifiers.moderate(model=DEFAULT_CHAT_MODEL_NAME, inputs=[THREAT, BENIGN])
    assert response.model == DEFAULT_CHAT_MODEL_NAME and len(response.results) == 2
    scores = [result.category_scores for result in response.results]
    for result, row in zip(response.results, scores):
        assert set(row) == set(CATEGORIES) and all(0.0 <= value <= 1.0 for value in row.values())
        assert result.categories == {category: value >= 0.5 for category, value in row.items()}
    # Graded, not a bare verdict: the model's probability, read under the grammar's mask.
    assert any(0.0 < value < 1.0 for row in scores for value in row.values()), scores
    turn = {"role": "user", "content": THREAT}
    chat = mistral.classifiers.moderate_chat(model=DEFAULT_CHAT_MODEL_NAME, inputs=[turn])
    assert chat.results[0].category_scores == pytest.approx(scores[0], abs=0.02)  # the same prompts
    too_many = http.post("/v1/moderations", json={"model": DEFAULT_CHAT_MODEL_NAME, "input": ["x"] * 33})
    assert too_many.status_code == 413 and "32" in too_many.json()["error"]["message"]


def test_a_chat_models_verdicts_are_metered_as_its_tokens(live_server, mistral_with_key) -> None:
    """Nine one-token verdicts per text, under the chat model's name, in one request."""
    tenant = live_server.create_tenant("moderation-metering")
    mistral_with_key(tenant.key).classifiers.moderate(model=DEFAULT_CHAT_MODEL_NAME, inputs=[BENIGN])
    rows: list[dict] = []
    deadline = time.monotonic() + 15
    with live_server.admin() as admin:
        while not rows and time.monotonic() < deadline:  # usage rows are written in the background
            query = {"workspace_id": tenant.workspace_id, "group_by": ["model"]}
            rows = admin.get("/usage", params=query).raise_for_status().json()["data"]
            time.sleep(0.2)
    (row,) = rows
    assert row["model"] == DEFAULT_CHAT_MODEL_NAME and row["requests"] == 1, row
    assert row["completion_tokens"] == len(CATEGORIES) and row["prompt_tokens"] > 9 * 20, row
