"""`tramontane eval` against the live platform: a local JSONL file uploaded and
evaluated, its results downloaded, jobs listed; bad input ends with the server's
message and exit status 1."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from evaluations_helpers import Platform
from typer.testing import CliRunner

from tramontane.cli import app
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME

CHAT = DEFAULT_CHAT_MODEL_NAME
runner = CliRunner(env={"COLUMNS": "200"})


def invoke(platform: Platform, key: str, *args: str):
    return runner.invoke(app, ["eval", *args, "--url", platform.url, "--api-key", key])


def test_eval_run_results_and_list(platform: Platform, tmp_path: Path) -> None:
    key = platform.tenant("evals-cli").key
    data = tmp_path / "greetings.jsonl"
    data.write_text("".join(json.dumps({"input": f"Say hello to {n}.", "reference": f"Hello {n}"}) + "\n"
                            for n in ("Ada", "Alan")))
    ran = invoke(platform, key, "run", "--dataset", str(data), "-t", CHAT, "-m", "exact_match", "-m", "chrf",
                 "--max-tokens", "6", "--name", "greetings")
    assert ran.exit_code == 0, ran.output
    assert "SUCCESS, 2/2 items, 0 failed" in ran.output
    assert "chrf" in ran.output and "95% interval" in ran.output
    job_id = ran.output.split("Evaluation ", 1)[1].split(" ", 1)[0]

    table = invoke(platform, key, "results", job_id, "--format", "csv")
    assert table.exit_code == 0, table.output
    rows = list(csv.DictReader(io.StringIO(table.output)))
    assert [row["line"] for row in rows] == ["1", "2"] and {"exact_match", "chrf"} <= set(rows[0])

    listed = invoke(platform, key, "list")
    assert listed.exit_code == 0 and job_id in listed.output and "greetings" in listed.output
    families = invoke(platform, key, "families")
    assert families.exit_code == 0 and "document_injection" in families.output


def test_eval_run_refused_with_the_servers_message(platform: Platform, tmp_path: Path) -> None:
    key = platform.tenant("evals-cli-bad").key
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"input": "hi", "reference": "hello"}) + "\n" + json.dumps({"reference": "x"}) + "\n")
    refused = invoke(platform, key, "run", "--dataset", str(data), "-t", CHAT, "-m", "exact_match")
    assert refused.exit_code == 1
    assert "error (400)" in refused.output and "line 2: missing its input" in refused.output
    unknown = invoke(platform, key, "status", "eval_0000000000000000")
    assert unknown.exit_code == 1 and "error (404)" in unknown.output
