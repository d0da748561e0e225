"""A job survives a server restart: the next server resumes it from its newest checkpoint."""

from __future__ import annotations

from finetune_helpers import CHAT_MODEL, FAST_HYPERPARAMETERS, TRAINING_LINE, jsonl, wait_for


def test_running_job_resumes_from_its_last_checkpoint_after_a_restart(start_server) -> None:
    body = {"model": CHAT_MODEL, "hyperparameters": {**FAST_HYPERPARAMETERS, "training_steps": 5}}
    with start_server() as server, server.http(server.tenant("resume")) as http:
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", jsonl(TRAINING_LINE))}).json()["id"]
        job = http.post("/v1/fine_tuning/jobs", json={**body, "training_files": [{"file_id": file_id}]}).json()
        interrupted = wait_for(http, job["id"], lambda j: len(j["checkpoints"]) >= 1)
        assert interrupted["status"] == "RUNNING"
    # The server stopped in the middle of the job (back to QUEUED); a new one starts on the same home and database.
    with start_server() as server, server.http(server.tenant("resume")) as http:
        done = wait_for(http, job["id"], lambda j: j["status"] in ("SUCCESS", "FAILED"))
    assert done["status"] == "SUCCESS", done["events"]
    resumed = [e["data"]["step_number"] for e in done["events"] if e["name"] == "resumed"]
    assert len(resumed) == 1 and 1 <= resumed[0] < 5
    statuses = [e["data"]["status"] for e in reversed(done["events"]) if e["name"] == "status-updated"]
    assert statuses == ["VALIDATING", "VALIDATED", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCESS"]
    assert [c["step_number"] for c in reversed(done["checkpoints"])] == [1, 2, 3, 4, 5]
    assert done["fine_tuned_model"].startswith(f"ft:{CHAT_MODEL}:")
    # Each start announces the models that earlier runs finished, for serving.
    with start_server() as server:
        [(model_id, base, adapter, owner)] = server.ready_models
    assert (model_id, base, owner["job"]) == (done["fine_tuned_model"], CHAT_MODEL, job["id"])
    assert (adapter / "adapter_model.safetensors").is_file()
