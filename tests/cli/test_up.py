"""`tramontane up` as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tramontane.cli import app, up
from tramontane.inference import ModelRegistry, ModelSpec
from tramontane.tenancy import Capability, Tenancy

KEY = re.compile(r"tmt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh Tramontane home: `up` creates its database and key pepper there."""
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    monkeypatch.delenv("TRAMONTANE_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRAMONTANE_KEY_PEPPER", raising=False)
    return tmp_path


def test_model_spec_parsing():
    assert ModelSpec.parse("/models/a.gguf") == ModelSpec("/models/a.gguf")
    assert ModelSpec.parse("tiny=/models/a.gguf") == ModelSpec("/models/a.gguf", "tiny")
    assert ModelSpec.parse("C:=x").name == "C:"  # only the first "=" splits


def test_missing_model_fails_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["up", "--model", str(tmp_path / "nope.gguf")])
    assert result.exit_code == 1
    assert "error:" in result.output


def test_unusable_database_fails_cleanly_without_showing_its_password():
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--database-url", "postgresql+psycopg://ops:hunter2@127.0.0.1:9/tramontane"])
    assert result.exit_code == 1 and "cannot open the database" in result.output
    result = runner.invoke(app, ["up", "--database-url", "ops:hunter2@nowhere"])
    assert result.exit_code == 1 and "not a valid" in result.output
    assert "hunter2" not in result.output


def test_first_start_prints_the_admin_key_once(monkeypatch: pytest.MonkeyPatch):
    served = []
    monkeypatch.setattr(up, "load_models", lambda specs, config: ModelRegistry())
    monkeypatch.setattr(up.uvicorn, "run", lambda app, **options: served.append(app))
    runner = CliRunner()
    first = runner.invoke(app, ["up"])
    assert first.exit_code == 0, first.output
    assert len(KEY.findall(first.output)) == 1
    admin_key = KEY.search(first.output).group()
    # The hint is a command that works as printed.
    hint = re.search(r"tramontane (tenancy keys create --workspace \S+)", first.output)
    assert hint is not None
    second = runner.invoke(app, ["up"])
    assert second.exit_code == 0 and not KEY.search(second.output)
    assert len(served) == 2

    created = runner.invoke(app, hint.group(1).split())
    assert created.exit_code == 0, created.output
    tenancy = Tenancy.open()
    try:
        assert tenancy.authenticate(f"Bearer {admin_key}").platform_admin
        client = tenancy.authenticate(f"Bearer {KEY.search(created.output).group()}")
        assert client.capabilities == {Capability.INFERENCE}
    finally:
        tenancy.close()


@pytest.mark.slow
def test_up_serves_until_interrupted():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tramontane = os.path.join(os.path.dirname(sys.executable), "tramontane")
    proc = subprocess.Popen(
        [tramontane, "up", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    # Read as it comes: the admin key is needed while the server runs.
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "tramontane up did not become ready"
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        admin_key = KEY.search("".join(lines)).group()
        assert httpx.get(f"{url}/v1/models").status_code == 401
        admin = {"Authorization": f"Bearer {admin_key}"}
        workspace = httpx.get(f"{url}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]
        created = httpx.post(
            f"{url}/v1/admin/workspaces/{workspace}/keys",
            json={"name": "t", "capabilities": ["inference"]},
            headers=admin,
        )
        client = {"Authorization": f"Bearer {created.json()['key']}"}
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=client).json()["data"]]
        assert ids == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
        body = {"model": ids[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=client, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "Loaded smollm2-135m-instruct" in output
    # The admin key is printed once, and no key ever reaches the log.
    assert output.count(admin_key) == 1 and created.json()["key"] not in output
