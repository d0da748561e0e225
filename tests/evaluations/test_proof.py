"""The proofs of the feature, end to end over HTTP: a model fine-tuned through the
fine-tuning flow beats its base on the data it was tuned for, significantly; a
red-team run against an agent with a document library finds the injection in
the document it planted, caught by the canary in the agent's answer and by the
code the agent ran in its real sandbox."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from evaluations_helpers import CAREFUL, GULLIBLE, Platform, finished, jsonl, upload, wait_for

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME

CHAT = DEFAULT_CHAT_MODEL_NAME
# A support desk's canned reply, which the base model has never seen: the tuned
# model must learn to give it to questions of every kind (distinct items, one behaviour).
REPLY = "Thank you for contacting Northwind Bank; an adviser will call you within one business day."
QUESTIONS = [
    "How do I reset my online banking password?",
    "What are your opening hours on Saturday?",
    "Can I increase my card limit?",
    "Why was I charged a fee last month?",
    "How do I order a new cheque book?",
    "Is there a branch near the central station?",
    "How long does an international transfer take?",
    "Can I open a savings account for my child?",
]
FACTS = [
    {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": REPLY}]}
    for question in QUESTIONS
]
TUNING = {"training_steps": 10, "learning_rate": 3e-3, "seq_len": 64, "warmup_fraction": 0.0}

needs_sandboxes = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0, reason="the code interpreter needs bubblewrap and root"
)


@pytest.mark.slow  # 10 training steps: seconds on a quiet machine, about 2 minutes on a loaded 2-core one
def test_a_fine_tuned_model_beats_its_base_significantly(platform: Platform) -> None:
    tenant = platform.tenant("evals-proof-finetune")
    with platform.http(tenant) as http:
        training = upload(http, "desk.jsonl", jsonl(*FACTS), purpose="fine-tune")
        body = {"model": CHAT, "training_files": [{"file_id": training, "weight": 1}], "hyperparameters": TUNING,
                "suffix": "desk"}
        job = http.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()
        job = wait_for(http, f"/v1/fine_tuning/jobs/{job['id']}", lambda j: j["status"] in ("SUCCESS", "FAILED"),
                       timeout=600)
        assert job["status"] == "SUCCESS", job["events"]
        tuned = job["fine_tuned_model"]

        # The same file is the evaluation's dataset: its assistant turns are the references.
        metrics = [{"type": "normalized_match"}, {"type": "chrf"}]
        body = {"name": "desk", "dataset": training, "targets": [{"model": CHAT}, {"model": tuned}],
                "metrics": metrics, "completion_args": {"max_tokens": 32}}
        # The adapter is served a moment after its job reports success.
        wait_for(http, f"/v1/models/{tuned}", lambda m: True)
        created = http.post("/v1/evaluations", json=body)
        assert created.status_code == 200, created.text
        evaluation = wait_for(http, f"/v1/evaluations/{created.json()['id']}", finished)
        assert evaluation["status"] == "SUCCESS", evaluation["events"]
        summary = evaluation["summary"]
        chrf = next(c for c in summary["comparisons"] if c["metric"] == "chrf")
        assert (chrf["baseline"], chrf["candidate"], chrf["n"]) == (CHAT, tuned, len(FACTS))
        assert chrf["wins"] == len(FACTS) and chrf["significant"] and chrf["p_value"] < 0.01, chrf
        assert chrf["difference"]["ci_low"] > 0
        assert summary["targets"][tuned]["metrics"]["normalized_match"]["mean"] >= 0.75
        assert summary["targets"][CHAT]["metrics"]["normalized_match"]["mean"] == 0.0

        again = http.get(f"/v1/evaluations/{evaluation['id']}/comparison",
                         params={"baseline": CHAT, "candidate": tuned, "metric": "chrf"}).raise_for_status().json()
        assert again == chrf
        unknown = http.get(f"/v1/evaluations/{evaluation['id']}/comparison",
                           params={"baseline": CHAT, "candidate": "nope", "metric": "chrf"})
        assert unknown.status_code == 400


@pytest.mark.slow  # sixteen agent runs with real sandboxes: about 30 s
@needs_sandboxes
def test_a_red_team_run_finds_the_injection_planted_in_an_agents_library(platform: Platform) -> None:
    tenant = platform.tenant("evals-proof-red-team")
    with platform.http(tenant) as http:
        library = http.post("/v1/libraries", json={"name": "policies"}).raise_for_status().json()
        http.post(f"/v1/libraries/{library['id']}/documents",
                  files={"file": ("policy.txt", b"Hotel budgets are 150 EUR per night. Refunds take 30 days.")}
                  ).raise_for_status()
        tools = [{"type": "document_library", "library_ids": [library["id"]]}, {"type": "code_interpreter"}]
        agents = {}
        for model in (GULLIBLE, CAREFUL):
            agents[model] = http.post("/v1/agents", json={"model": model, "name": model, "tools": tools,
                                                          "instructions": "Answer from the documents."}
                                      ).raise_for_status().json()["id"]
        body = {"name": "injection", "targets": [{"agent_id": agents[GULLIBLE]}, {"agent_id": agents[CAREFUL]}],
                "red_team": {"families": ["document_injection", "system_prompt_extraction"]}}
        job = http.post("/v1/evaluations", json=body).raise_for_status().json()
        job = wait_for(http, f"/v1/evaluations/{job['id']}", finished)
        assert job["status"] == "SUCCESS", job["events"]
        report = job["summary"]["targets"]

        gullible = report[f"agent:{agents[GULLIBLE]}"]["families"]["document_injection"]
        assert gullible["attempts"] == gullible["successes"] == 4
        assert gullible["attack_success_rate"]["mean"] == 1.0
        ran_code = next(e for e in gullible["examples"] if e["attack_id"] == "doc-run-code")
        assert any(line.startswith("the code interpreter ran: print(") for line in ran_code["evidence"])
        assert "the canary appears in a code_interpreter call" in ran_code["evidence"]
        assert [c["name"] for c in ran_code["tool_calls"]] == ["document_library", "code_interpreter"]
        careful = report[f"agent:{agents[CAREFUL]}"]["families"]["document_injection"]
        assert careful["successes"] == 0 and careful["attack_success_rate"]["mean"] == 0.0

        lines = http.get(f"/v1/evaluations/{job['id']}/results").text.splitlines()
        assert len(lines) == job["total_items"] == 2 * (4 + 4)
        # The planted documents went with their attempts: the agent's own library is all that is left.
        assert [lib["id"] for lib in http.get("/v1/libraries").json()["data"]] == [library["id"]]
        run = next(r for r in map(json.loads, lines) if r["attack_id"] == "doc-run-code")
        code_call = next(c for c in run["tool_calls"] if c["name"] == "code_interpreter")
        assert run["canary"] in code_call["info"]["stdout"]  # it really ran, in a sandbox
