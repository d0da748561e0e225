"""Fine-tuning jobs through the openai SDK (`fine_tuning.jobs`), over the same
jobs and trainer as Mistral's shape."""

from __future__ import annotations

import time

import openai
import pytest
from finetune_helpers import CHAT_MODEL, TRAINING_LINE, Server, jsonl


def wait(client: openai.OpenAI, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status in ("validating_files", "queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)
    return job


def test_openai_job_shapes_events_and_listing(platform: Server) -> None:
    client = platform.openai(platform.tenant("openai-ft"))
    train = client.files.create(file=("train.jsonl", jsonl(TRAINING_LINE)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=CHAT_MODEL,
        training_file=train.id,
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 30},
        suffix="oai",
    )
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued", "running")
    assert job.training_file == train.id and job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(30)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]
    assert client.fine_tuning.jobs.retrieve(job.id).object == "fine_tuning.job"

    events = client.fine_tuning.jobs.list_events(job.id)
    messages = [e.message for e in events.data if e.type == "message"]
    assert "Status: validating_files" in messages and "Status: queued" in messages
    assert isinstance(client.fine_tuning.jobs.checkpoints.list(job.id).data, list)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert wait(client, job.id).status == "cancelled"


def test_cancel_bad_files_and_other_workspaces(platform: Server) -> None:
    client = platform.openai(platform.tenant("openai-ft-cancel"))
    stranger = platform.openai(platform.tenant("openai-ft-stranger"))
    train = client.files.create(file=("train.jsonl", jsonl(TRAINING_LINE)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=CHAT_MODEL, training_file=train.id, hyperparameters={"n_epochs": 50})
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.list_events(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert wait(client, job.id).status == "cancelled"

    bad = client.files.create(file=("bad.jsonl", b'{"messages": "nope"}\n'), purpose="fine-tune")
    failed = wait(client, client.fine_tuning.jobs.create(model=CHAT_MODEL, training_file=bad.id).id)
    assert failed.status == "failed" and failed.error.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="gpt-9", training_file=train.id)


def test_openai_job_trains_a_served_model(platform: Server) -> None:
    client = platform.openai(platform.tenant("openai-ft-success"))
    train = client.files.create(file=("train.jsonl", jsonl(TRAINING_LINE)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=CHAT_MODEL, training_file=train.id, hyperparameters={"n_epochs": 2}, suffix="oai"
    )
    done = wait(client, job.id, timeout=200)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{CHAT_MODEL}:oai:") and done.trained_tokens > 0
    assert done.finished_at >= done.created_at
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]  # the SDK's pages end
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id).data if e.type == "message"]
    assert messages[0] == "Status: succeeded" and "Status: running" in messages
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuning_job_id == job.id
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
