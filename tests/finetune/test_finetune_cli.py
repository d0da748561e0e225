"""`tramontane finetune ...` against the live server."""

from __future__ import annotations

import re
from pathlib import Path

from finetune_helpers import CHAT_MODEL, TRAINING_LINE, Server, jsonl
from typer.testing import CliRunner

from tramontane.cli import app


def test_upload_create_list_status_cancel(platform: Server, tmp_path: Path) -> None:
    tenant = platform.tenant("cli")
    env = {"TRAMONTANE_URL": platform.url, "TRAMONTANE_API_KEY": tenant.key, "COLUMNS": "200"}
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["finetune", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(TRAINING_LINE))
    file_id = re.search(r"file_[0-9a-f]{16}", run("upload", str(data)))[0]
    created = run("create", "--model", CHAT_MODEL, "-f", file_id, "--suffix", "cli", "--no-auto-start")
    job_id = re.search(r"ftjob_[0-9a-f]{16}", created)[0]
    assert "VALIDATED" in created
    assert job_id in run("list")
    assert "CANCELLED" in run("cancel", job_id)
    assert "CANCELLED" in run("status", job_id)

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(TRAINING_LINE) + b"[]\n")
    bad_id = re.search(r"file_[0-9a-f]{16}", run("upload", str(bad)))[0]
    refused = runner.invoke(app, ["finetune", "create", "--model", CHAT_MODEL, "-f", bad_id], env=env)
    assert refused.exit_code == 1 and "FAILED_VALIDATION" in refused.output and "bad.jsonl: line 2" in refused.output
