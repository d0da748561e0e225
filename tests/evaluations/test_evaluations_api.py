"""Evaluation jobs over HTTP: a dataset from the Files API, targets, metrics,
per-item results (JSONL, CSV), aggregates and comparisons; bad input refused
before the job starts, with the line or field at fault."""

from __future__ import annotations

import csv
import io
import json

import httpx
from evaluations_helpers import Platform, finished, jsonl, upload, wait_for

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, DEFAULT_EMBEDDING_MODEL_NAME

CHAT = DEFAULT_CHAT_MODEL_NAME
ITEMS = [
    {"messages": [{"role": "user", "content": "Say the word blue."}], "reference": "blue", "metadata": {"k": 1}},
    {"input": "Reply with a JSON object with a key named ok.", "reference": "{\"ok\": true}"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Red."}]},
]


def test_an_evaluation_scores_every_item_and_summarises(platform: Platform) -> None:
    tenant = platform.tenant("evals-api")
    with platform.http(tenant) as http:
        dataset = upload(http, "colours.jsonl", jsonl(*ITEMS))
        body = {
            "name": "colours",
            "dataset": dataset,
            "targets": [{"model": CHAT}],
            "metrics": [
                {"type": "exact_match"},
                {"type": "normalized_match"},
                {"type": "regex", "pattern": "(?i)blue|red|green"},
                {"type": "json_schema", "schema": {"type": "object", "required": ["ok"]}},
                {"type": "bleu"},
                {"type": "chrf"},
                {"type": "embedding_similarity", "model": DEFAULT_EMBEDDING_MODEL_NAME},
                {"type": "llm_judge", "model": CHAT, "rubric": "The answer names a colour."},
            ],
            "completion_args": {"max_tokens": 12},
        }
        created = http.post("/v1/evaluations", json=body)
        assert created.status_code == 200, created.text
        job = wait_for(http, f"/v1/evaluations/{created.json()['id']}", finished)
        assert job["status"] == "SUCCESS", job["events"]
        assert (job["total_items"], job["completed_items"], job["failed_items"]) == (3, 3, 0)

        lines = [json.loads(x) for x in http.get(f"/v1/evaluations/{job['id']}/results").text.splitlines()]
        assert [r["line"] for r in lines] == [1, 2, 3]
        first = lines[0]
        assert first["reference"] == "blue" and first["metadata"] == {"k": 1}
        assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0 and first["latency_s"] > 0
        # The trailing assistant message of line 3 is its reference.
        assert lines[2]["reference"] == "Red."
        for row in lines:
            scores = row["scores"]
            assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values()), scores
            assert scores["exact_match"] == float(row["answer"].strip() == row["reference"].strip())
            verdict = row["judgements"]["llm_judge"]
            assert verdict["score"] in (1, 2, 3, 4, 5) and isinstance(verdict["reason"], str)  # grammar-bound

        summary = job["summary"]["targets"][CHAT]
        assert summary["items"] == 3 and summary["tokens"]["completion"] > 0
        regex = summary["metrics"]["regex"]
        assert regex["n"] == 3 and regex["ci_low"] <= regex["mean"] <= regex["ci_high"]
        assert summary["metrics"]["bleu"]["corpus"] is not None

        table = list(csv.DictReader(io.StringIO(http.get(f"/v1/evaluations/{job['id']}/results",
                                                         params={"format": "csv"}).text)))
        assert [row["line"] for row in table] == ["1", "2", "3"] and "chrf" in table[0]
        chart = http.get(f"/v1/evaluations/{job['id']}/chart")
        assert chart.headers["content-type"].startswith("image/svg+xml") and "<svg" in chart.text

        listed = http.get("/v1/evaluations").json()
        assert job["id"] in [j["id"] for j in listed["data"]]


def test_bad_input_is_refused_before_the_job_starts(platform: Platform) -> None:
    tenant = platform.tenant("evals-bad-input")
    with platform.http(tenant) as http:
        good = upload(http, "good.jsonl", jsonl({"input": "hi", "reference": "hello"}))
        bad = upload(http, "bad.jsonl", jsonl({"input": "fine"}, {"reference": "no input"}, {"input": "ok"}) + b"{oops\n")
        base = {"targets": [{"model": CHAT}], "metrics": [{"type": "exact_match"}]}

        missing_input = http.post("/v1/evaluations", json={**base, "dataset": bad})
        assert missing_input.status_code == 400
        message = missing_input.json()["error"]["message"]
        assert "bad.jsonl: line 2: missing its input" in message and "line 4" in message

        unknown = http.post("/v1/evaluations", json={**base, "dataset": good, "targets": [{"model": "no-such"}]})
        assert unknown.status_code == 404 and "targets[0]" in unknown.json()["error"]["message"]
        no_agent = http.post("/v1/evaluations", json={**base, "dataset": good, "targets": [{"agent_id": "ag_nope"}]})
        assert no_agent.status_code == 404

        judge = {"type": "llm_judge", "model": "not-served", "rubric": "Correct."}
        unserved = http.post("/v1/evaluations", json={**base, "dataset": good, "metrics": [judge]})
        assert unserved.status_code == 404
        assert unserved.json()["error"]["param"] == "metrics[0].model"
        embedder = {"type": "embedding_similarity", "model": CHAT}  # a chat model cannot embed
        assert http.post("/v1/evaluations", json={**base, "dataset": good, "metrics": [embedder]}).status_code in (
            400, 404)

        no_reference = upload(http, "noref.jsonl", jsonl({"input": "hi"}))
        refused = http.post("/v1/evaluations", json={**base, "dataset": no_reference})
        assert refused.status_code == 400 and "lines without one: 1" in refused.json()["error"]["message"]
        regex = http.post("/v1/evaluations", json={**base, "dataset": good, "metrics": [{"type": "regex",
                                                                                          "pattern": "("}]})
        assert regex.status_code == 400
        assert http.post("/v1/evaluations", json={**base}).status_code == 422  # neither dataset nor red_team
        assert http.post("/v1/evaluations", json={**base, "dataset": "file-nope"}).status_code == 404
        assert http.get("/v1/evaluations").json()["total"] == 0  # nothing was created


def test_cancel_keeps_finished_items(platform: Platform) -> None:
    tenant = platform.tenant("evals-cancel")
    with platform.http(tenant) as http:
        dataset = upload(http, "many.jsonl", jsonl(*[{"input": f"Count to {i}.", "reference": "1"} for i in range(40)]))
        body = {"dataset": dataset, "targets": [{"model": CHAT}], "metrics": [{"type": "exact_match"}],
                "completion_args": {"max_tokens": 24}}
        job = http.post("/v1/evaluations", json=body).raise_for_status().json()
        wait_for(http, f"/v1/evaluations/{job['id']}", lambda j: j["completed_items"] >= 1)
        cancelled = http.post(f"/v1/evaluations/{job['id']}/cancel").raise_for_status().json()
        assert cancelled["status"] in ("CANCELLATION_REQUESTED", "CANCELLED")
        job = wait_for(http, f"/v1/evaluations/{job['id']}", finished)
        assert job["status"] == "CANCELLED" and job["completed_items"] < 40
        kept = http.get(f"/v1/evaluations/{job['id']}/results").text.splitlines()
        assert 1 <= len(kept) <= job["completed_items"] + 4
        again = http.post(f"/v1/evaluations/{job['id']}/cancel")
        assert again.status_code == 409


def test_usage_is_metered_as_the_key_that_created_the_job(platform: Platform) -> None:
    tenant = platform.tenant("evals-metered")
    with platform.http(tenant) as http:
        dataset = upload(http, "one.jsonl", jsonl({"input": "Hi", "reference": "Hello"}))
        body = {"dataset": dataset, "targets": [{"model": CHAT}], "metrics": [{"type": "chrf"}],
                "completion_args": {"max_tokens": 4}}
        job = http.post("/v1/evaluations", json=body).raise_for_status().json()
        wait_for(http, f"/v1/evaluations/{job['id']}", finished)
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    with httpx.Client(base_url=f"{platform.url}/v1/admin", headers=headers, timeout=30) as admin:
        report = admin.get("/usage", params={"workspace_id": tenant.workspace_id, "group_by": ["model"]})
    rows = report.raise_for_status().json()["data"]
    # The answer and nothing else (chrF needs no model): one metered request.
    assert [(r["model"], r["requests"]) for r in rows] == [(CHAT, 1)], rows


def test_a_red_team_run_against_a_model_reports_each_family(platform: Platform) -> None:
    tenant = platform.tenant("evals-red-team-model")
    with platform.http(tenant) as http:
        families = {f["name"]: f for f in http.get("/v1/evaluations/attack_families").json()["data"]}
        assert {"document_injection", "tool_output_injection", "jailbreak", "system_prompt_extraction",
                "code_exfiltration", "disallowed_content"} <= set(families)
        body = {"targets": [{"model": CHAT}], "completion_args": {"max_tokens": 24},
                "red_team": {"families": ["system_prompt_extraction", "code_exfiltration"], "judge_model": CHAT,
                             "attempts_per_family": 2}}
        job = http.post("/v1/evaluations", json=body).raise_for_status().json()
        assert job["kind"] == "red_team" and job["total_items"] == 4
        job = wait_for(http, f"/v1/evaluations/{job['id']}", finished)
        assert job["status"] == "SUCCESS", job["events"]
        report = job["summary"]["targets"][CHAT]["families"]
        extraction = report["system_prompt_extraction"]
        assert extraction["attempts"] == 2 and extraction["unscored"] == 0
        rate = extraction["attack_success_rate"]
        assert rate["n"] == 2 and 0.0 <= rate["mean"] <= 1.0
        # A bare model has no code interpreter: those attacks do not apply to it.
        assert report["code_exfiltration"]["not_applicable"] == 2
        rows = [json.loads(x) for x in http.get(f"/v1/evaluations/{job['id']}/results").text.splitlines()]
        judged = [r for r in rows if r["applicable"]]
        assert all(isinstance(r["judge"]["succeeded"], bool) for r in judged)  # the verdict's grammar held
        assert all(r["canary"].startswith("TRM-CANARY-") for r in rows)
        table = http.get(f"/v1/evaluations/{job['id']}/results", params={"format": "csv"}).text
        assert table.splitlines()[0].startswith("target,family,attack_id")

        bad = http.post("/v1/evaluations", json={**body, "red_team": {"families": ["nope"]}})
        assert bad.status_code == 400
        unserved = http.post("/v1/evaluations", json={**body, "red_team": {"judge_model": "not-served"}})
        assert unserved.status_code == 404 and unserved.json()["error"]["param"] == "red_team.judge_model"


def test_a_workspace_runs_a_bounded_number_of_evaluations(platform: Platform) -> None:
    tenant = platform.tenant("evals-limited")
    with platform.http(tenant) as http:
        dataset = upload(http, "long.jsonl", jsonl(*[{"input": f"Item {i}.", "reference": "x"} for i in range(200)]))
        body = {"dataset": dataset, "targets": [{"model": CHAT}], "metrics": [{"type": "exact_match"}],
                "completion_args": {"max_tokens": 1}}
        jobs = [http.post("/v1/evaluations", json=body).raise_for_status().json()["id"] for _ in range(4)]
        refused = http.post("/v1/evaluations", json=body)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_evaluations"
        assert "retry-after" in refused.headers
        for job_id in jobs:
            http.post(f"/v1/evaluations/{job_id}/cancel").raise_for_status()
        for job_id in jobs:
            assert wait_for(http, f"/v1/evaluations/{job_id}", finished)["status"] == "CANCELLED"
        # Once its jobs have ended, the workspace can start another.
        assert http.post("/v1/evaluations", json={**body, "dataset": upload(http, "one.jsonl", jsonl(
            {"input": "Hi", "reference": "x"}))}).status_code == 200
