"""A server that stops mid-evaluation puts the job back in the queue; the next
server on the same store resumes it after the items already finished, and the
results hold every item once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evaluations_helpers import finished, jsonl, serve, upload, wait_for

from tramontane.cli.up import load_models
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME
from tramontane.inference import default_model_specs

ITEMS = 24


def chat_model_only():
    return load_models([s for s in default_model_specs() if s.name == DEFAULT_CHAT_MODEL_NAME])


@pytest.mark.slow  # two servers, each loading the chat model
def test_an_evaluation_resumes_after_a_restart(tmp_path: Path) -> None:
    with serve(tmp_path, chat_model_only()) as first:
        tenant = first.tenant("evals-resume")
        with first.http(tenant) as http:
            dataset = upload(http, "counting.jsonl",
                             jsonl(*[{"input": f"Write the number {i} in words.", "reference": str(i)}
                                     for i in range(ITEMS)]))
            body = {"dataset": dataset, "targets": [{"model": DEFAULT_CHAT_MODEL_NAME}],
                    "metrics": [{"type": "chrf"}], "completion_args": {"max_tokens": 24}}
            job = http.post("/v1/evaluations", json=body).raise_for_status().json()
            stopped_at = wait_for(http, f"/v1/evaluations/{job['id']}", lambda j: j["completed_items"] >= 2)
            assert stopped_at["status"] == "RUNNING"

    with serve(tmp_path, chat_model_only()) as second:
        with second.http(tenant) as http:
            job = wait_for(http, f"/v1/evaluations/{job['id']}", finished)
            assert job["status"] == "SUCCESS", job["events"]
            lines = [json.loads(x) for x in http.get(f"/v1/evaluations/{job['id']}/results").text.splitlines()]
    assert [r["item_index"] for r in lines] == list(range(ITEMS))
    assert job["completed_items"] == ITEMS and job["failed_items"] == 0
    events = list(reversed(job["events"]))  # oldest first
    requeued = next(e for e in events if e["data"].get("reason") == "the server stopped")
    assert requeued["data"]["status"] == "QUEUED"
    resumed = next(e for e in events if e["name"] == "resumed")
    assert 2 <= resumed["data"]["items_done"] < ITEMS
    assert [e["data"].get("status") for e in events if e["name"] == "status-updated"] == [
        "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCESS"]
