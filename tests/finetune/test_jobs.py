"""Fine-tuning jobs in Mistral's shape, over HTTP.

The installed mistralai SDK (3.x) no longer has `fine_tuning.jobs`, so these
tests drive /v1/fine_tuning/jobs with httpx in the JSON shapes of its 1.x/2.x
job models (CompletionDetailedJobOut, CheckpointOut, EventOut); files go
through the SDK. Bad training files are accepted at creation and the job ends
FAILED_VALIDATION, its event listing each bad line (Mistral's behaviour: the
dataset is validated by the job, not by the upload); a malformed request body
is FastAPI's 422."""

from __future__ import annotations

import json

from finetune_helpers import CHAT_MODEL, FAST_HYPERPARAMETERS, TRAINING_LINE, Server, jsonl, wait_for
from safetensors import safe_open

from tramontane.finetune.lora import TARGET_MODULES


def upload(platform: Server, tenant, data: bytes, name: str = "train.jsonl") -> str:
    return platform.mistral(tenant).files.upload(file={"file_name": name, "content": data}, purpose="fine-tune").id


def test_create_start_poll_to_success(platform: Server) -> None:
    tenant = platform.tenant("jobs-success")
    train = upload(platform, tenant, jsonl(TRAINING_LINE))
    valid = upload(platform, tenant, jsonl(TRAINING_LINE), "valid.jsonl")
    with platform.http(tenant) as http:
        body = {
            "model": CHAT_MODEL,
            "training_files": [{"file_id": train, "weight": 1}],
            "validation_files": [valid],
            "hyperparameters": FAST_HYPERPARAMETERS,
            "suffix": "secret",
            "auto_start": False,
        }
        created = http.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()
        assert (created["object"], created["job_type"], created["status"]) == ("job", "completion", "VALIDATED")
        assert created["training_files"] == [train] and created["hyperparameters"]["training_steps"] == 6
        assert http.post(f"/v1/fine_tuning/jobs/{created['id']}/start").json()["status"] == "QUEUED"
        job = wait_for(http, created["id"], lambda j: j["status"] in ("SUCCESS", "FAILED"))
        listed = http.get("/v1/fine_tuning/jobs", params={"status": "SUCCESS", "suffix": "secret"}).json()

    assert job["status"] == "SUCCESS", job["events"]
    short = created["id"].rsplit("_", 1)[1][:8]
    assert job["fine_tuned_model"] == f"ft:{CHAT_MODEL}:secret:{short}"
    assert job["trained_tokens"] > 0
    statuses = [e["data"]["status"] for e in reversed(job["events"]) if e["name"] == "status-updated"]
    assert statuses == ["VALIDATING", "VALIDATED", "QUEUED", "RUNNING", "SUCCESS"]
    steps = [c["step_number"] for c in reversed(job["checkpoints"])]
    assert steps == [2, 4, 6]
    first, last = job["checkpoints"][-1]["metrics"], job["checkpoints"][0]["metrics"]
    assert last["valid_loss"] < first["valid_loss"] and last["valid_mean_token_accuracy"] == 1.0
    assert first["train_loss"] > 0
    assert [j["id"] for j in listed["data"]] == [created["id"]] and listed["total"] == 1

    # The hook got the adapter, in PEFT's layout.
    model_id, base, adapter, owner = platform.ready_models[-1]
    assert (model_id, base) == (job["fine_tuned_model"], CHAT_MODEL)
    assert owner == {"job": created["id"], "workspace_id": tenant.workspace_id}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"] == list(TARGET_MODULES)
    assert config["base_model_name_or_path"] == CHAT_MODEL
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        a = weights.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        b = weights.get_tensor("base_model.model.model.layers.29.mlp.down_proj.lora_B.weight")
        assert a.shape == (config["r"], 576) and b.shape == (576, config["r"])
        assert len(list(weights.keys())) == 30 * len(TARGET_MODULES) * 2


def test_bad_lines_fail_validation_with_line_numbers(platform: Server) -> None:
    tenant = platform.tenant("jobs-bad-file")
    bad = (
        jsonl(TRAINING_LINE)
        + b"{not json\n"
        + jsonl({"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "robot", "content": "x"}]})
    )
    file_id = upload(platform, tenant, bad, "bad.jsonl")
    with platform.http(tenant) as http:
        job = http.post(
            "/v1/fine_tuning/jobs", json={"model": CHAT_MODEL, "training_files": [{"file_id": file_id}]}
        ).json()
        assert job["status"] == "FAILED_VALIDATION"
        errors = job["events"][0]["data"]["errors"]
        assert errors[0].startswith("bad.jsonl: line 2: not valid JSON")
        assert errors[1] == "bad.jsonl: line 3: no assistant message: there is nothing to learn from this example"
        assert errors[2].startswith("bad.jsonl: line 4: messages[0].role must be one of")
        assert len(errors) == 3
        # A malformed request is refused before any job exists.
        refused = http.post("/v1/fine_tuning/jobs", json={"model": CHAT_MODEL, "training_files": []})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "training_files"]
        unknown = http.post("/v1/fine_tuning/jobs", json={"model": "gpt-9", "training_files": [{"file_id": file_id}]})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/start").status_code == 409


def test_cancel_while_running(platform: Server) -> None:
    tenant = platform.tenant("jobs-cancel")
    file_id = upload(platform, tenant, jsonl(TRAINING_LINE))
    body = {
        "model": CHAT_MODEL,
        "training_files": [{"file_id": file_id}],
        "hyperparameters": {**FAST_HYPERPARAMETERS, "training_steps": 500},
    }
    with platform.http(tenant) as http:
        job = http.post("/v1/fine_tuning/jobs", json=body).json()
        wait_for(http, job["id"], lambda j: j["status"] == "RUNNING")
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "CANCELLATION_REQUESTED"
        cancelled = wait_for(
            http, job["id"], lambda j: j["status"] not in ("RUNNING", "CANCELLATION_REQUESTED"), timeout=60
        )
        assert cancelled["status"] == "CANCELLED" and cancelled["fine_tuned_model"] is None
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 409


def test_jobs_and_files_of_another_workspace_are_missing(platform: Server) -> None:
    owner, stranger = platform.tenant("jobs-owner"), platform.tenant("jobs-stranger")
    file_id = upload(platform, owner, jsonl(TRAINING_LINE))
    with platform.http(owner) as http:
        job = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": CHAT_MODEL, "training_files": [{"file_id": file_id}], "auto_start": False},
        ).json()
    with platform.http(stranger) as http:
        assert http.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 404
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/start").status_code == 404
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 404
        assert http.get("/v1/fine_tuning/jobs").json() == {"object": "list", "total": 0, "data": [], "has_more": False}
        stolen = http.post("/v1/fine_tuning/jobs", json={"model": CHAT_MODEL, "training_files": [{"file_id": file_id}]})
        assert stolen.status_code == 404
    with platform.http(owner) as http:
        assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "CANCELLED"
