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
from typing import Any

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
    # This home has no data template: `up` would build it (minutes, 1.4 GB) in the background.
    monkeypatch.setenv("TRAMONTANE_SANDBOX_DEFAULT_TEMPLATE", "base")
    return tmp_path


def test_model_spec_parsing():
    assert ModelSpec.parse("/models/a.gguf") == ModelSpec("/models/a.gguf")
    assert ModelSpec.parse("tiny=/models/a.gguf") == ModelSpec("/models/a.gguf", "tiny")
    assert ModelSpec.parse("C:=x").name == "C:"  # only the first "=" splits


def test_missing_model_fails_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["up", "--model", str(tmp_path / "nope.gguf")])
    assert result.exit_code == 1
    assert "error:" in result.output


def test_an_unreachable_ray_cluster_for_jobs_fails_fast():
    pytest.importorskip("ray")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["up", "--jobs-executor", "ray", "--ray-address", address])
    assert result.exit_code == 1 and "cannot use the Ray job executor" in result.output
    assert f"no Ray cluster answers at {address}" in " ".join(result.output.split())  # the console wraps lines
    assert time.monotonic() - started < 30


def test_unusable_database_fails_cleanly_without_showing_its_password():
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--database-url", "postgresql+psycopg://ops:hunter2@127.0.0.1:9/tramontane"])
    assert result.exit_code == 1 and "cannot open the database" in result.output
    result = runner.invoke(app, ["up", "--database-url", "ops:hunter2@nowhere"])
    assert result.exit_code == 1 and "not a valid" in result.output
    assert "hunter2" not in result.output


def test_first_start_writes_the_admin_key_to_an_owner_only_file(monkeypatch: pytest.MonkeyPatch, home: Path):
    """Output that is not a terminal (here CliRunner's; a service's log in production)
    never shows the key: it goes to a file only its owner reads, whose path is printed."""
    served = []
    monkeypatch.setattr(up, "load_models", lambda specs, config, image_limits: ModelRegistry())
    monkeypatch.setattr(up.uvicorn, "run", lambda app, **options: served.append(app))
    runner = CliRunner()
    first = runner.invoke(app, ["up"])
    assert first.exit_code == 0, first.output
    assert not KEY.search(first.output)
    key_file = home / "admin-key"
    assert str(key_file) in first.output and key_file.stat().st_mode & 0o777 == 0o600
    admin_key = KEY.fullmatch(key_file.read_text().strip()).group()
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


def test_on_a_terminal_the_admin_key_is_shown_once(monkeypatch: pytest.MonkeyPatch, home: Path):
    import pty

    from rich.console import Console

    controller, terminal = pty.openpty()
    monkeypatch.setattr(up, "console", Console(file=os.fdopen(terminal, "w"), width=200))
    monkeypatch.setattr(up, "load_models", lambda specs, config, image_limits: ModelRegistry())
    monkeypatch.setattr(up.uvicorn, "run", lambda app, **options: None)
    assert CliRunner().invoke(app, ["up"]).exit_code == 0
    up.console.file.flush()
    shown = os.read(controller, 1 << 16).decode(errors="replace")
    os.close(controller)
    assert len(KEY.findall(shown)) == 1 and not (home / "admin-key").exists()


def launch_up(*options: str, **popen: Any) -> tuple[subprocess.Popen[str], list[str], threading.Thread, str]:
    """`tramontane up` on a free loopback port, its output read as it comes (the admin
    key is needed while the server runs): the process, its lines, their reader, its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tramontane = os.path.join(os.path.dirname(sys.executable), "tramontane")
    proc = subprocess.Popen(
        [tramontane, "up", "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[str], url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "tramontane up did not become ready"
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.mark.slow
def test_up_serves_until_interrupted():
    proc, lines, reader, url = launch_up()
    try:
        wait_ready(proc, url)
        # Its output is a pipe, not a terminal: the key is in an owner-only file.
        admin_key = (Path(os.environ["TRAMONTANE_HOME"]) / "admin-key").read_text().strip()
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
        assert ids == ["smollm2-135m-instruct", "all-minilm-l6-v2", "tramontane-moderation"]
        body = {"model": ids[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=client, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert url in output and "Loaded smollm2-135m-instruct" in output
    # No key ever reaches the log.
    assert admin_key not in output and created.json()["key"] not in output


@pytest.mark.slow
def test_sigterm_drains_for_the_grace_period_then_cancels_and_exits():
    """Work in flight gets the grace period, then is cancelled: the server exits with
    its children (warm-pool sandboxes, replicas) stopped, whatever its clients do."""
    proc, lines, reader, url = launch_up("--shutdown-grace-s", "2", start_new_session=True)
    streamed: list[str] = []
    try:
        wait_ready(proc, url)
        admin_key = (Path(os.environ["TRAMONTANE_HOME"]) / "admin-key").read_text().strip()
        admin = {"Authorization": f"Bearer {admin_key}"}
        workspace = httpx.get(f"{url}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]
        key = httpx.post(
            f"{url}/v1/admin/workspaces/{workspace}/keys", json={"name": "t", "capabilities": ["inference"]},
            headers=admin,
        ).json()["key"]
        body = {
            "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 4000, "min_tokens": 4000, "stream": True,
        }

        def hold_a_stream() -> None:
            # A client that never gives up: only the server's shutdown ends its request.
            try:
                with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {key}"}, timeout=120) as response:
                    for line in response.iter_lines():
                        streamed.append(line)
            except httpx.HTTPError:
                pass

        holder = threading.Thread(target=hold_a_stream, daemon=True)
        holder.start()
        deadline = time.monotonic() + 60
        while len(streamed) < 3:
            assert time.monotonic() < deadline, "the stream did not start"
            time.sleep(0.05)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # New work is refused at once; the stream goes on during the grace period.
        deadline = time.monotonic() + 5
        while True:
            try:
                httpx.get(f"{url}/ready", timeout=1)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        proc.wait(timeout=60)
        took = time.monotonic() - signalled
        holder.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    output = "".join(lines)
    assert 2.0 <= took < 2.0 + 20, f"exited {took:.1f} s after SIGTERM:\n{output}"
    # uvicorn ends by re-raising the signal it handled: terminated by SIGTERM, as expected.
    assert proc.returncode == -signal.SIGTERM, output
    assert "Application shutdown complete" in output
    assert len(streamed) > 3  # it generated past the signal, then was cut
    with pytest.raises(ProcessLookupError):  # no child of the server outlived it
        os.killpg(proc.pid, 0)
