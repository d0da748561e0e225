"""The sandbox's interactive surfaces through the whole platform: a key with the
sandbox capability opens a terminal over WebSocket and reaches an exposed port, and
each sandbox's use shows on the Prometheus endpoint with its workspace."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest
from websockets.sync.client import connect

from tramontane.sandbox import Sandbox

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def test_terminal_port_and_prometheus_through_the_platform(live_server) -> None:
    tenant = live_server.create_tenant("sandbox-io", ("sandbox",))
    sbx = Sandbox.create(api_url=live_server.url, api_key=tenant.key, timeout=120)
    try:
        url = live_server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sbx.sandbox_id}/pty/ws"
        with connect(url, additional_headers=tenant.headers, open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "start"
            ws.send(b"python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &\n")
            ws.send(b"echo $((6*7))\n")
            seen = b""
            while b"42" not in seen:
                frame = ws.recv(timeout=30)
                seen += frame if isinstance(frame, bytes) else b""
            deadline = time.monotonic() + 20
            while True:  # the server started from the terminal, served through the router
                got = httpx.get(sbx.get_host(8000) + "/", headers=tenant.headers, timeout=30)
                if got.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert got.status_code == 200 and "Directory listing" in got.text
        sbx.get_metrics()
        exposition = httpx.get(f"{live_server.url}/metrics", timeout=30).text
        series = [line for line in exposition.splitlines() if f'sandbox_id="{sbx.sandbox_id}"' in line]
        assert any(line.startswith("tramontane_sandbox_memory_bytes{") for line in series), series
        assert any(line.startswith("tramontane_sandbox_cpu_seconds_total{") for line in series), series
        assert any(line.startswith("tramontane_sandbox_disk_used_bytes{") for line in series), series
        assert all(f'workspace="{tenant.workspace_id}"' in line for line in series)
    finally:
        sbx.kill()
