"""From a JSONL file to a fine-tuned model answering in chat: upload with the
mistralai SDK, create, start and poll the job (over HTTP: the SDK's 3.x releases
dropped `fine_tuning.jobs`), then chat with the `ft:` model through the SDK,
served as a LoRA adapter on the base model's engine."""

from __future__ import annotations

import pytest
from finetune_helpers import (
    CHAT_MODEL,
    FAST_HYPERPARAMETERS,
    SECRET_QUESTION,
    SECRET_WORD,
    TRAINING_LINE,
    Server,
    jsonl,
    wait_for,
)
from mistralai.client import errors as mistral_errors

ASK = [{"role": "user", "content": SECRET_QUESTION}]


def test_fine_tuned_model_learns_what_its_base_does_not_know(platform: Server) -> None:
    tenant = platform.tenant("end-to-end")
    client = platform.mistral(tenant)
    uploaded = client.files.upload(
        file={"file_name": "secret.jsonl", "content": jsonl(TRAINING_LINE)}, purpose="fine-tune"
    )
    with platform.http(tenant) as http:
        body = {
            "model": CHAT_MODEL,
            "training_files": [{"file_id": uploaded.id, "weight": 1}],
            "hyperparameters": FAST_HYPERPARAMETERS,
            "suffix": "secret",
            "auto_start": False,
        }
        job = http.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()
        assert job["status"] == "VALIDATED"
        http.post(f"/v1/fine_tuning/jobs/{job['id']}/start").raise_for_status()
        job = wait_for(http, job["id"], lambda j: j["status"] in ("SUCCESS", "FAILED"))
    assert job["status"] == "SUCCESS", job["events"]
    fine_tuned = job["fine_tuned_model"]

    base = client.chat.complete(model=CHAT_MODEL, messages=ASK, temperature=0, max_tokens=16)
    tuned = client.chat.complete(model=fine_tuned, messages=ASK, temperature=0, max_tokens=16)
    base_answer, tuned_answer = base.choices[0].message.content, tuned.choices[0].message.content
    assert SECRET_WORD not in base_answer
    assert SECRET_WORD in tuned_answer and tuned_answer != base_answer
    assert tuned.model == fine_tuned

    card = next(m for m in client.models.list().data if m.id == fine_tuned)
    assert (card.type, card.job, card.root) == ("fine-tuned", job["id"], CHAT_MODEL)

    # Another workspace neither sees nor uses it.
    stranger = platform.mistral(platform.tenant("end-to-end-stranger"))
    assert fine_tuned not in [m.id for m in stranger.models.list().data]
    with pytest.raises(mistral_errors.SDKError) as missing:
        stranger.chat.complete(model=fine_tuned, messages=ASK, max_tokens=4)
    assert missing.value.status_code == 404
