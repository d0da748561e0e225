"""The `tenancy` CLI sub-app, on an SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tramontane.tenancy import EnergyReading, Tenancy
from tramontane.tenancy.cli import app


def test_cli_key_lifecycle_usage_and_erasure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    monkeypatch.setenv("TRAMONTANE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COLUMNS", "200")
    tenancy = Tenancy.open()
    assert tenancy.bootstrap_admin_key() is not None
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    workspace = run("workspaces", "create", "team", "--rpm", "10").strip()
    assert workspace.startswith("ws_") and "team" in run("workspaces", "list")
    key = run("keys", "create", "--workspace", workspace, "--capability", "inference").splitlines()[-1]
    principal = tenancy.authenticate(f"Bearer {key}")
    assert principal.workspace_limits.requests_per_minute == 10
    tenancy.record_usage(
        principal, model="m", prompt_tokens=2, completion_tokens=3, latency_s=0.1, energy=EnergyReading(0.5, "estimate")
    )
    run("workspaces", "set-weight", workspace, "3")
    assert tenancy.scheduling_weight(tenancy.authenticate(f"Bearer {key}")) == 3.0
    run("workspaces", "set-weight", workspace, "--default")
    assert tenancy.authenticate(f"Bearer {key}").scheduling_weight is None
    assert runner.invoke(app, ["workspaces", "set-weight", workspace]).exit_code == 2
    listed = run("keys", "list", "--workspace", workspace)
    assert principal.key_prefix in listed and key not in listed and "active" in listed
    assert "5" in run("usage", "--workspace", workspace, "--group-by", "model")
    run("keys", "revoke", principal.key_prefix)
    assert "revoked" in run("keys", "list", "--workspace", workspace)
    assert runner.invoke(app, ["workspaces", "delete", workspace]).exit_code == 1  # needs --yes
    run("workspaces", "delete", workspace, "--yes")
    missing = runner.invoke(app, ["workspaces", "set-limits", workspace, "--rpm", "1"])
    assert missing.exit_code == 1 and "No workspace" in missing.output
    tenancy.close()
