"""`tramontane up` as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from tramontane.cli import app
from tramontane.server import ModelSpec


def test_model_spec_parsing():
    assert ModelSpec.parse("/models/a.gguf") == ModelSpec("/models/a.gguf")
    assert ModelSpec.parse("tiny=/models/a.gguf") == ModelSpec("/models/a.gguf", "tiny")
    assert ModelSpec.parse("C:=x").name == "C:"  # only the first "=" splits


def test_missing_model_fails_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["up", "--model", str(tmp_path / "nope.gguf")])
    assert result.exit_code == 1
    assert "error:" in result.output


@pytest.mark.slow
def test_up_serves_until_interrupted():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tramontane = os.path.join(os.path.dirname(sys.executable), "tramontane")
    proc = subprocess.Popen([tramontane, "up", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
        body = {"model": ids[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "Loaded smollm2-135m-instruct" in output
