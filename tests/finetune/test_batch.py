"""The Batch API through the mistralai SDK, on the default models."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from finetune_helpers import CHAT_MODEL, Server, jsonl
from mistralai.client import errors as mistral_errors

from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL


def wait_batch(client, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.batch.jobs.get(job_id=job_id)
        if job.status in ("SUCCESS", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"batch {job_id} still {job.status}")


def lines(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.download(file_id=file_id).read().splitlines()]


def test_chat_batch_writes_results_and_errors(platform: Server) -> None:
    tenant = platform.tenant("batch")
    client = platform.mistral(tenant)
    requests = (
        jsonl(
            {
                "custom_id": "capital",
                "body": {
                    "messages": [{"role": "user", "content": "The capital of France is"}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            },
            {
                "custom_id": "count",
                "body": {
                    "messages": [{"role": "user", "content": "Count: 1, 2, 3,"}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            },
            {"custom_id": "broken", "body": {"messages": "not a list"}},
        )
        + b"not json\n"
    )
    upload = client.files.upload(file={"file_name": "requests.jsonl", "content": requests}, purpose="batch")
    job = client.batch.jobs.create(
        endpoint="/v1/chat/completions", input_files=[upload.id], model=CHAT_MODEL, metadata={"team": "a"}
    )
    assert (job.status, job.model, job.metadata) == ("QUEUED", CHAT_MODEL, {"team": "a"})
    job = wait_batch(client, job.id)
    assert job.status == "SUCCESS"
    assert (job.total_requests, job.completed_requests, job.succeeded_requests, job.failed_requests) == (4, 4, 2, 2)
    assert sum(e.count for e in job.errors) == 2

    results = lines(client, job.output_file)
    assert [r["custom_id"] for r in results] == ["capital", "count"]
    for result in results:
        assert result["response"]["status_code"] == 200 and result["error"] is None
        body = result["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == CHAT_MODEL
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] <= 8
    errors = lines(client, job.error_file)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("broken", 422), (None, 400)]
    assert "line 4" in errors[1]["error"]["message"]
    assert client.files.retrieve(file_id=job.output_file).sample_type == "batch_result"

    assert [j.id for j in client.batch.jobs.list(status=["SUCCESS"]).data] == [job.id]
    with pytest.raises(mistral_errors.SDKError) as finished:
        client.batch.jobs.cancel(job_id=job.id)
    assert finished.value.status_code == 409
    with pytest.raises(mistral_errors.SDKError) as stranger:
        platform.mistral(platform.tenant("batch-stranger")).batch.jobs.get(job_id=job.id)
    assert stranger.value.status_code == 404


def test_embeddings_batch(platform: Server) -> None:
    client = platform.mistral(platform.tenant("batch-embeddings"))
    upload = client.files.upload(
        file={
            "file_name": "e.jsonl",
            "content": jsonl({"custom_id": "0", "body": {"input": ["a sentence", "another"]}}),
        },
        purpose="batch",
    )
    job = client.batch.jobs.create(endpoint="/v1/embeddings", input_files=[upload.id], model="all-minilm-l6-v2")
    job = wait_batch(client, job.id)
    assert (job.status, job.succeeded_requests, job.error_file) == ("SUCCESS", 1, None)
    [result] = lines(client, job.output_file)
    assert [len(d["embedding"]) for d in result["response"]["body"]["data"]] == [384, 384]


def test_batch_requests_are_metered_as_the_jobs_key(platform: Server) -> None:
    tenant = platform.tenant("batch-metered")
    client = platform.mistral(tenant)
    chat_lines = jsonl(
        *(
            {"custom_id": str(i), "body": {"messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": 4}}
            for i in range(3)
        ),
        {"custom_id": "broken", "body": {"messages": "not a list"}},  # refused: nothing used, nothing metered
    )
    embedding_lines = jsonl({"custom_id": "e", "body": {"input": ["one text", "another text"]}})
    outputs = []
    for endpoint, model, content in (
        ("/v1/chat/completions", CHAT_MODEL, chat_lines),
        ("/v1/embeddings", EMBEDDING_MODEL, embedding_lines),
    ):
        upload = client.files.upload(file={"file_name": "requests.jsonl", "content": content}, purpose="batch")
        job = wait_batch(client, client.batch.jobs.create(endpoint=endpoint, input_files=[upload.id], model=model).id)
        assert job.status == "SUCCESS"
        outputs.append(lines(client, job.output_file))

    key_id = tenant.key.split("_")[1]
    admin = {"Authorization": f"Bearer {platform.admin_key}"}
    report = httpx.get(
        f"{platform.url}/v1/admin/usage",
        params={"workspace_id": tenant.workspace_id, "group_by": ["key", "model"]},
        headers=admin,
    ).raise_for_status()
    rows = {row["model"]: row for row in report.json()["data"]}
    assert rows.keys() == {CHAT_MODEL, EMBEDDING_MODEL}
    for model, output in zip((CHAT_MODEL, EMBEDDING_MODEL), outputs, strict=True):
        usages = [line["response"]["body"]["usage"] for line in output]
        row = rows[model]
        assert row["key"] == key_id and row["requests"] == len(output)
        assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages) > 0
        assert row["completion_tokens"] == sum(u.get("completion_tokens", 0) for u in usages)
        assert row["energy_wh"] > 0
    assert rows[CHAT_MODEL]["completion_tokens"] > 0
