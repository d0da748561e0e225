"""Egress allow-lists: a tier-1 sandbox created with `network.allow_out` reaches
exactly what the list names, only through its HTTP proxy; without the field it
has no network at all."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from isolation_helpers import NETWORK_PROBE, py, sh

from tramontane.sandbox import Sandbox
from tramontane.sandbox.egress import MAX_CONNECTIONS
from tramontane.sandbox.policy import canonical_ip, parse_egress_rule

PAGE = b"hello from the host"
# The sandbox's NO_PROXY exempts 127.0.0.1, its own loopback; these probes aim at
# the host's, which only the proxy can reach.
THROUGH_PROXY = {"NO_PROXY": "", "no_proxy": ""}


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def host_pages() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on the host's loopback: the first is allowed, the second not."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def egress(live, host_pages: tuple[int, int]) -> Iterator[Sandbox]:
    allowed, unlisted = host_pages
    # localhost:unlisted names a loopback port by name only: that is not enough.
    sandbox = live.create(timeout=120, allow_out=[f"127.0.0.1:{allowed}", "*:80", f"localhost:{unlisted}"])
    yield sandbox
    sandbox.kill()
    sandbox.close()


def test_allow_list_entries_parse_and_match() -> None:
    rule = parse_egress_rule("*.Example.com:443")
    assert rule.matches("api.example.com", 443) and not rule.matches("example.com", 443)
    assert not rule.matches("api.example.com", 80)
    assert parse_egress_rule("[::1]:8080").ip == canonical_ip("::1")
    assert parse_egress_rule("*:*").matches("anything.org", 1)
    metadata = canonical_ip("169.254.169.254")
    assert metadata is not None and not parse_egress_rule("*:80").unlocks(metadata, 80)
    assert parse_egress_rule("169.254.169.254:80").unlocks(metadata, 80)


def test_bad_entries_are_422(live) -> None:
    bad = ["example.com", "example.com:0", "example.com:http", "10.0.0.0/8:80", "::1:80", "a b.com:443",
           "*foo.com:443", "-bad.com:443", ":443", "[nope]:443"]  # fmt: skip
    before = len(live.manager.list())
    with live.http() as http:
        for entry in bad:
            answer = http.post("/v1/sandboxes", json={"network": {"allow_out": [entry]}})
            assert answer.status_code == 422, entry
            assert answer.json()["error"]["param"] == "network.allow_out", entry
        vm = http.post("/v1/sandboxes", json={"template": "microvm", "network": {"allow_out": ["example.com:443"]}})
        assert vm.status_code == 400 and vm.json()["error"]["code"] == "egress_tier1_only"  # a domain Invalid
    assert len(live.manager.list()) == before


def test_listed_port_is_reachable_through_the_proxy(egress: Sandbox, host_pages: tuple[int, int]) -> None:
    allowed, _ = host_pages
    url = f"http://127.0.0.1:{allowed}/"
    assert egress.commands.run(f"curl -sS {url}", envs=THROUGH_PROXY).stdout == PAGE.decode()
    # Through a CONNECT tunnel, as for https.
    assert egress.commands.run(f"curl -sS --proxytunnel {url}", envs=THROUGH_PROXY).stdout == PAGE.decode()
    code = f'import urllib.request; print(urllib.request.urlopen("{url}", timeout=10).read().decode())'
    assert egress.commands.run(f"python3 -c '{code}'", envs=THROUGH_PROXY).stdout.strip() == PAGE.decode()


def test_unlisted_port_is_refused_by_the_proxy(
    egress: Sandbox, host_pages: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, unlisted = host_pages
    caplog.set_level(logging.INFO, logger="tramontane.sandbox.egress")
    url = f"http://127.0.0.1:{unlisted}/secret?token=hunter2"
    status = egress.commands.run(f"curl -s -o /dev/null -w '%{{http_code}}' '{url}'", envs=THROUGH_PROXY)
    assert status.stdout == "403"
    code, out = sh(egress, f"NO_PROXY= no_proxy= curl -sS --proxytunnel '{url}'")
    assert code != 0 and "403" in out
    denied = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
    assert denied and all(f"127.0.0.1:{unlisted}" in m and "hunter2" not in m for m in denied)


def test_non_public_addresses_need_their_exact_ip_and_port(egress: Sandbox, host_pages: tuple[int, int]) -> None:
    _, unlisted = host_pages
    # "*:80" matches any host on port 80, but never a link-local address.
    for url in ("http://169.254.169.254/latest/meta-data/", f"http://localhost:{unlisted}/"):
        status = egress.commands.run(f"curl -s -o /dev/null -w '%{{http_code}}' {url}", envs=THROUGH_PROXY)
        assert status.stdout == "403", url


def test_connections_per_sandbox_are_bounded(live, egress: Sandbox) -> None:
    path = str(live.manager.get(egress.sandbox_id).runtime.egress.path)
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held = socket.socket(socket.AF_UNIX)
            held.connect(path)
            idle.append(held)
        time.sleep(0.2)  # let the proxy accept them all
        with socket.socket(socket.AF_UNIX) as extra:
            extra.settimeout(5)
            extra.connect(path)
            assert extra.recv(1024).startswith(b"HTTP/1.1 503 ")
    finally:
        for held in idle:
            held.close()


def test_direct_connections_still_fail(egress: Sandbox, host_pages: tuple[int, int]) -> None:
    allowed, _ = host_pages
    result = py(egress, NETWORK_PROBE.replace("HOST_PORT", str(allowed)))
    assert result["host_loopback"] == "ConnectionRefusedError"  # the sandbox's own loopback
    assert result["external"] != "connected" and result["metadata"] != "connected"
    assert result["dns"] != "resolved" and result["interfaces"] == ["lo"]
    code, _ = sh(egress, f"curl -sS --noproxy '*' --max-time 5 http://127.0.0.1:{allowed}/")
    assert code != 0


def test_proxy_environment_inside(egress: Sandbox) -> None:
    env = egress.commands.run("env").stdout.splitlines()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert f"{name}=http://127.0.0.1:3128" in env
    assert "NO_PROXY=localhost,127.0.0.1,::1" in env
    # The forwarder is part of the sandbox, not a listed command.
    assert all("forwarder" not in p.cmd for p in egress.commands.list())


def test_no_field_means_no_proxy(live, sbx: Sandbox) -> None:
    assert live.manager.get(sbx.sandbox_id).runtime.egress is None
    assert "PROXY" not in sbx.commands.run("env").stdout.upper()
    code, _ = sh(sbx, "curl -sS --max-time 5 -x http://127.0.0.1:3128 http://example.com/")
    assert code == 7  # nothing listens on 3128
    assert sh(sbx, "ls /run/tramontane")[0] != 0


def test_proxy_is_torn_down_with_the_sandbox(live, host_pages: tuple[int, int]) -> None:
    sandbox = live.create(timeout=60, allow_out=[f"127.0.0.1:{host_pages[0]}"])
    proxy = live.manager.get(sandbox.sandbox_id).runtime.egress
    assert proxy is not None and Path(proxy.path).exists()
    sandbox.kill()
    sandbox.close()
    deadline = time.monotonic() + 10
    while Path(proxy.path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(proxy.path).exists()
