"""The deployments CLI against a real server on loopback."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from control_helpers import REPLICA_COMMAND, new_plane
from fastapi import FastAPI
from typer.testing import CliRunner

from tramontane.cli import app as cli_root
from tramontane.control.cli import app as cli
from tramontane.control.install import install
from tramontane.store import open_store
from tramontane.tenancy import CLI, Capability, Tenancy, directory, keys


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A server with the control plane, on its own thread and event loop; yields
    its URL and an API key."""
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tenancy = Tenancy(store, home=tmp_path)
    with store.session() as session:
        workspace = directory.create_workspace(session, directory.create_organisation(session, "o", CLI), "w", CLI)
        key = keys.create_key(
            session, tenancy.pepper, workspace, name="k", actor=CLI, capabilities=frozenset({Capability.DEPLOY})
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plane = new_plane(store, tmp_path)
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def serve() -> None:
        await plane.start()
        try:
            await server.serve()
        finally:
            await plane.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}", key.plaintext
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        store.close()


def test_deploy_ps_scale_logs_delete(server: tuple[str, str], tmp_path: Path) -> None:
    url, key = server
    spec_file = tmp_path / "web.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "web",
                "command": REPLICA_COMMAND,
                "health_check": {"interval_s": 0.2},
                "scaling": {"min_replicas": 1, "max_replicas": 2},
            }
        )
    )
    runner = CliRunner()
    options = ["--url", url, "--api-key", key]

    deployed = runner.invoke(cli, ["deploy", str(spec_file), *options])
    assert deployed.exit_code == 0, deployed.output
    assert "Deployed web" in deployed.output
    listed = runner.invoke(cli, ["ps", *options]).output
    assert "web" in listed and "@local" in listed  # each replica's node
    scaled = runner.invoke(cli, ["scale", "web", "2", *options])
    assert scaled.exit_code == 0 and "2 replica(s)" in scaled.output
    too_many = runner.invoke(cli, ["scale", "web", "5", *options])
    assert too_many.exit_code == 1 and "max_replicas=2" in too_many.output
    # The replica added by the scale may not have written its first line yet on a
    # loaded machine: read the logs again, for a bounded time, until it has.
    deadline = time.monotonic() + 60
    while "listening on" not in (logs := runner.invoke(cli, ["logs", "web", *options]).output):
        assert time.monotonic() < deadline, logs
        time.sleep(0.5)
    assert runner.invoke(cli, ["delete", "web", *options]).exit_code == 0
    missing = runner.invoke(cli, ["delete", "web", *options])
    assert missing.exit_code == 1 and "No deployment named 'web'" in missing.output


def test_secrets_redeploy_rollback_events_and_follow(server: tuple[str, str], tmp_path: Path) -> None:
    url, key = server
    runner = CliRunner()
    options = ["--url", url, "--api-key", key]
    stored = runner.invoke(cli_root, ["secrets", "create", "greeting", *options], input="bonjour")
    assert stored.exit_code == 0, stored.output
    listed = runner.invoke(cli_root, ["secrets", "list", *options]).output
    assert "greeting" in listed and "bonjour" not in listed

    spec_file = tmp_path / "hello.yaml"
    body = {
        "name": "hello",
        "command": REPLICA_COMMAND,
        "env": {"APP_VERSION": "1", "GREETING": {"secret": "greeting"}},
        "health_check": {"interval_s": 0.2},
        "scaling": {"max_replicas": 2, "downscale_delay_s": 600},
    }
    spec_file.write_text(yaml.safe_dump(body))
    assert runner.invoke(cli, ["deploy", str(spec_file), *options]).exit_code == 0
    spec_file.write_text(yaml.safe_dump({**body, "env": {**body["env"], "APP_VERSION": "2"}}))
    redeployed = runner.invoke(cli, ["deploy", str(spec_file), *options])
    assert redeployed.exit_code == 0 and "Rolling out revision 2" in redeployed.output, redeployed.output

    def revisions() -> str:
        return runner.invoke(cli, ["revisions", "hello", *options]).output

    deadline = time.monotonic() + 60
    while "superseded" not in revisions():
        assert time.monotonic() < deadline, revisions()
        time.sleep(0.2)
    rolled = runner.invoke(cli, ["rollback", "hello", "1", *options])
    assert rolled.exit_code == 0 and "Rolling out revision 3" in rolled.output, rolled.output
    events = runner.invoke(cli, ["events", "hello", *options]).output
    assert "revision_created" in events and "rolled_out" in events

    # `logs -f` streams until the server goes away; read its first lines from a subprocess.
    follow = subprocess.Popen(
        [sys.executable, "-c", "from tramontane.cli import app; app()", "logs", "-f", "hello", *options],
        stdout=subprocess.PIPE,
    )
    try:
        first = _read_line(follow, 30)
        assert first.startswith("[rep_") and "listening on" in first, first
        # A replica started after the stream began: its first line arrives too.
        assert runner.invoke(cli, ["scale", "hello", "2", *options]).exit_code == 0
        deadline = time.monotonic() + 30
        while not ((line := _read_line(follow, deadline - time.monotonic())) and "listening on" in line):
            pass
        assert line.split("]")[0] != first.split("]")[0], (first, line)
    finally:
        follow.kill()
        follow.wait(timeout=10)
    assert runner.invoke(cli, ["delete", "hello", *options]).exit_code == 0
    assert runner.invoke(cli_root, ["secrets", "delete", "greeting", *options]).exit_code == 0


_pending: dict[int, bytes] = {}


def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
    """The process's next output line, waiting `timeout_s` at most (read from the
    pipe itself: a buffered reader could hold lines that select cannot see)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + max(timeout_s, 0)
    while b"\n" not in _pending.get(fd, b""):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, "no line in time"
        chunk = os.read(fd, 65536)
        assert chunk, "the process ended"
        _pending[fd] = _pending.get(fd, b"") + chunk
    line, _pending[fd] = _pending[fd].split(b"\n", 1)
    return line.decode()
