"""OpenAI's Batch API (`/v1/batches`) through the openai SDK, over the same batch
jobs as Mistral's."""

from __future__ import annotations

import json
import time

import openai
import pytest
from finetune_helpers import CHAT_MODEL, Server, jsonl

from tramontane.engine.defaults import DEFAULT_EMBEDDING_MODEL_NAME as EMBEDDING_MODEL


def wait(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status in ("validating", "in_progress", "finalizing"):
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.25)
    return batch


def _line(custom_id: str, content: str, url: str = "/v1/chat/completions") -> dict:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_chat_batch_through_the_openai_sdk(platform: Server) -> None:
    client = platform.openai(platform.tenant("openai-batch"))
    requests = jsonl(
        _line("capital", "The capital of France is"),
        _line("count", "Count: 1, 2, 3,"),
        _line("elsewhere", "Hi", url="/v1/embeddings"),
    )
    upload = client.files.create(file=("requests.jsonl", requests), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "a"}
    )
    assert batch.object == "batch" and batch.status == "validating" and batch.input_file_id == upload.id
    assert batch.metadata == {"team": "a"} and batch.expires_at == batch.created_at + 24 * 3600

    done = wait(client, batch.id)
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
    results = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [r["custom_id"] for r in results] == ["capital", "count"]
    body = results[0]["response"]["body"]
    assert results[0]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] <= 4
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "elsewhere" and "not the batch's endpoint" in errors[0]["error"]["message"]

    assert batch.id in [b.id for b in client.batches.list()]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_embeddings_batch_and_listing_pages(platform: Server) -> None:
    client = platform.openai(platform.tenant("openai-batch-pages"))
    body = {"model": EMBEDDING_MODEL, "input": "hi"}
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": body}
    upload = client.files.create(file=("embed.jsonl", jsonl(line)), purpose="batch")
    ids = [client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h").id
           for _ in range(3)]
    for batch_id in ids:
        assert wait(client, batch_id).status == "completed"
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == ids[:1] and not rest.has_more
    seen = [b.id for b in client.batches.list(limit=2)]  # the SDK's auto-pagination follows `after`
    assert seen == ids[::-1]


def test_other_workspaces_and_bad_bodies(platform: Server) -> None:
    owner = platform.openai(platform.tenant("openai-batch-owner"))
    stranger = platform.openai(platform.tenant("openai-batch-stranger"))
    upload = owner.files.create(file=("r.jsonl", jsonl(_line("a", "Hi"))), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        stranger.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = owner.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in stranger.batches.list()]
    with pytest.raises(openai.UnprocessableEntityError):
        owner.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    wait(owner, batch.id)
