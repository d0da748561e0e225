"""Mistral's classifier fine-tuning (`job_type: "classifier"`): labelled JSONL in,
a head over the embedding model trained by the worker, served as an `ft:`
classifier to its workspace only through classifiers.classify; bad data fails
validation with line-numbered errors."""

from __future__ import annotations

import pytest
from finetune_helpers import Server, jsonl, wait_for
from mistralai.client import errors as mistral_errors

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME

TICKETS = [
    ("My card was charged twice for the same purchase", "billing"),
    ("I was billed after cancelling my subscription", "billing"),
    ("Please refund the duplicate payment on my invoice", "billing"),
    ("Why is there an extra fee on this month's statement?", "billing"),
    ("The invoice amount does not match my contract price", "billing"),
    ("The app crashes when I open the settings page", "technical"),
    ("I cannot log in, the password reset email never arrives", "technical"),
    ("The website shows an error 500 when I upload a file", "technical"),
    ("Sync between my phone and laptop stopped working", "technical"),
    ("The export button does nothing in the dashboard", "technical"),
]
HELD_OUT = [
    ("I was charged a late fee although I paid on time", "billing"),
    ("The mobile app freezes on the login screen", "technical"),
]


def lines(rows):
    return jsonl(*({"text": text, "labels": {"department": label}} for text, label in rows))


def test_classifier_job_trains_and_serves_a_classifier(platform: Server) -> None:
    tenant = platform.tenant("classifier-owner")
    client = platform.mistral(tenant)
    uploaded = client.files.upload(file={"file_name": "tickets.jsonl", "content": lines(TICKETS)}, purpose="fine-tune")
    with platform.http(tenant) as http:
        body = {
            "model": DEFAULT_EMBEDDING_MODEL_NAME,
            "job_type": "classifier",
            "training_files": [{"file_id": uploaded.id}],
            "classifier_targets": [{"name": "department", "labels": ["billing", "technical"], "weight": 1}],
            "hyperparameters": {"training_steps": 100},
            "suffix": "tickets",
        }
        job = http.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()
        assert job["job_type"] == "classifier" and job["status"] in ("QUEUED", "RUNNING", "SUCCESS")
        assert job["classifier_targets"][0]["loss_function"] == "single_class"
        job = wait_for(http, job["id"], lambda j: j["status"] in ("SUCCESS", "FAILED"))
    assert job["status"] == "SUCCESS", job["events"]
    assert job["checkpoints"] and job["checkpoints"][0]["step_number"] == 100
    model = job["fine_tuned_model"]
    assert model.startswith(f"ft:{DEFAULT_EMBEDDING_MODEL_NAME}:tickets:")

    response = client.classifiers.classify(model=model, inputs=[text for text, _ in HELD_OUT])
    for result, (_, label) in zip(response.results, HELD_OUT):
        scores = result["department"].scores
        assert set(scores) == {"billing", "technical"} and max(scores, key=scores.get) == label
        assert abs(sum(scores.values()) - 1.0) < 1e-3  # single_class: one softmax
    card = client.models.retrieve(model_id=model)
    assert card.capabilities.classification and card.job == job["id"] and card.root == DEFAULT_EMBEDDING_MODEL_NAME

    stranger = platform.mistral(platform.tenant("classifier-stranger"))
    with pytest.raises(mistral_errors.SDKError) as hidden:
        stranger.classifiers.classify(model=model, inputs=["My card was charged twice"])
    assert hidden.value.status_code == 404


def test_bad_classifier_data_fails_validation(platform: Server) -> None:
    tenant = platform.tenant("classifier-owner")
    client = platform.mistral(tenant)
    bad = b'{"text": "ok", "labels": {"department": "billing"}}\n{"text": ""}\nnot json\n'
    uploaded = client.files.upload(file={"file_name": "bad.jsonl", "content": bad}, purpose="fine-tune")
    good = client.files.upload(file={"file_name": "good.jsonl", "content": lines(TICKETS)}, purpose="fine-tune")
    with platform.http(tenant) as http:
        job = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": DEFAULT_EMBEDDING_MODEL_NAME, "job_type": "classifier",
                  "training_files": [{"file_id": uploaded.id}]},
        ).raise_for_status().json()
        assert job["status"] == "FAILED_VALIDATION"
        errors = job["events"][0]["data"]["errors"]
        assert any("line 2" in e for e in errors) and any("line 3" in e for e in errors)
        undeclared = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": DEFAULT_EMBEDDING_MODEL_NAME, "job_type": "classifier",
                  "training_files": [{"file_id": good.id}],
                  "classifier_targets": [{"name": "department", "labels": ["billing"]}]},
        ).raise_for_status().json()
        assert undeclared["status"] == "FAILED_VALIDATION"
        assert "technical" in undeclared["events"][0]["data"]["errors"][0]
        chat_base = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": DEFAULT_CHAT_MODEL_NAME, "job_type": "classifier", "training_files": [{"file_id": good.id}]},
        )
        assert chat_base.status_code == 404 and DEFAULT_EMBEDDING_MODEL_NAME in chat_base.text
