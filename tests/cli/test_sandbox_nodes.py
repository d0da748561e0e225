"""Sandboxes across nodes: two `tramontane up` gateways that host no sandboxes
and two `tramontane node` hosts, sharing one real PostgreSQL database, on
loopback. Sandboxes made through one gateway spread over both nodes and are
reached through the other; another workspace cannot reach them; a node
SIGKILLed has its sandboxes declared lost, clearly and within a bounded time,
while the other node's carry on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sandbox_support import tier1_unavailable_reason
from test_up import home, launch_up, wait_ready  # noqa: F401  (home: the fixture)
from typer.testing import CliRunner
from websockets.sync.client import connect

from tramontane.cli import app
from tramontane.inference.registry import default_embedding_model_path
from tramontane.sandbox.node import NODE_PREFIX, WORKSPACE_HEADER, host_token

PEPPER = "a-pepper-gateways-and-nodes-share-0123456789"
TTL_S = 5.0  # sandbox.hosts.DEFAULT_TTL_S


def launch_node(name: str) -> tuple[subprocess.Popen[str], list[str], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tramontane = os.path.join(os.path.dirname(sys.executable), "tramontane")
    proc = subprocess.Popen(
        [tramontane, "node", "--name", name, "--port", str(port), "--pool-size", "1", "--microvm-pool-size", "0",
         "--default-template", "base"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def cluster(postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch):
    reason = tier1_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("TRAMONTANE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("TRAMONTANE_KEY_PEPPER", PEPPER)
    model = f"all-minilm-l6-v2={default_embedding_model_path()}"
    gateways, nodes = [], []
    database = sa.create_engine(postgres_url)
    try:
        # Base as the default template: no template build in the background.
        options = ("--model", model, "--no-sandbox-host", "--sandbox-default-template", "base")
        gateways.append(launch_up(*options))
        wait_ready(gateways[0][0], gateways[0][3])  # the first creates the schema and the admin key
        gateways.append(launch_up(*options))
        nodes = {name: launch_node(name) for name in ("node-a", "node-b")}
        wait_ready(gateways[1][0], gateways[1][3])

        def registered() -> bool:
            for proc, lines, _ in nodes.values():
                assert proc.poll() is None, "".join(lines)
            with database.connect() as c:
                return c.execute(sa.text("SELECT count(*) FROM sandbox_hosts")).scalar() == 2

        _wait(registered, 60, "both nodes to register")
        yield [g[3] for g in gateways], nodes, database
    finally:
        for proc, _, _ in dict(nodes).values():
            _stop(proc)
        for proc, _, reader, _ in gateways:
            _stop(proc)
            reader.join(timeout=10)
        database.dispose()


def _keys(url: str, home: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """A sandbox key of the admin's workspace, a key of another workspace holding
    every capability, and that workspace's id."""
    admin = {"Authorization": f"Bearer {(home / 'admin-key').read_text().strip()}"}
    workspace = httpx.get(f"{url}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]
    other = httpx.post(f"{url}/v1/admin/workspaces", headers=admin, json={"name": "stranger"}).json()["id"]
    made = []
    for ws in (workspace, other):
        key = httpx.post(f"{url}/v1/admin/workspaces/{ws}/keys", headers=admin,
                         json={"name": "k", "capabilities": ["inference", "deploy", "sandbox", "fine-tune"]})
        assert key.status_code == 201, key.text
        made.append({"Authorization": f"Bearer {key.json()['key']}"})
    return made[0], made[1], other


def _hosts(database: sa.Engine) -> dict[str, str]:
    with database.connect() as c:
        return dict(c.execute(sa.text("SELECT sandbox_id, host FROM sandbox_placements")).all())


@pytest.mark.slow
def test_sandboxes_across_nodes(cluster, home: Path):
    (gw_a, gw_b), nodes, database = cluster
    key, stranger, stranger_workspace = _keys(gw_a, home)
    client = httpx.Client(headers=key, timeout=60)

    # Created through gateway A, spread over both nodes (least loaded first).
    ids = []
    for n in range(4):
        made = client.post(f"{gw_a}/v1/sandboxes", json={"timeout": 300, "metadata": {"n": str(n)}})
        assert made.status_code == 201, made.text
        ids.append(made.json()["sandbox_id"])
    where = _hosts(database)
    assert sorted(where[i] for i in ids) == ["node-a", "node-a", "node-b", "node-b"], "".join(
        line for node in nodes.values() for line in node[1][-40:]
    )

    # Each node shows its own sandboxes' use on its /metrics.
    for name, (_, _, node_url) in nodes.items():
        scraped = httpx.get(f"{node_url}/metrics", timeout=30).text
        shown = {i for i in ids if f'tramontane_sandbox_memory_bytes{{sandbox_id="{i}"' in scraped}
        assert shown == {i for i in ids if where[i] == name}, scraped[-2000:]

    # Commands, files, processes, streams and the lifecycle through gateway B.
    for n, sandbox_id in enumerate(ids):
        ran = client.post(f"{gw_b}/v1/sandboxes/{sandbox_id}/commands", json={"cmd": f"echo hi-{n}", "stream": False})
        assert ran.status_code == 200 and ran.json()["stdout"] == f"hi-{n}\n", ran.text
    first, other = ids[0], next(i for i in ids if where[i] != where[ids[0]])
    up = client.put(f"{gw_a}/v1/sandboxes/{first}/files", params={"path": "/home/user/a.txt"}, content=b"across")
    assert up.status_code == 200, up.text
    assert client.get(f"{gw_b}/v1/sandboxes/{first}/files", params={"path": "/home/user/a.txt"}).content == b"across"
    assert client.get(f"{gw_b}/v1/sandboxes/{other}/files", params={"path": "/home/user/a.txt"}).status_code == 404
    with client.stream("POST", f"{gw_b}/v1/sandboxes/{first}/commands",
                       json={"cmd": "for i in 1 2 3; do echo $i; done", "stream": True}) as stream:
        events = [json.loads(line) for line in stream.iter_lines() if line]
    assert "".join(e.get("data", "") for e in events if e["type"] == "stdout") == "1\n2\n3\n"
    assert events[-1] == {"type": "exit", "exit_code": 0} or events[-1].get("exit_code") == 0, events[-1]
    listed = client.get(f"{gw_b}/v1/sandboxes").json()["sandboxes"]
    assert sorted(s["sandbox_id"] for s in listed) == sorted(ids)
    assert [s["sandbox_id"] for s in client.get(f"{gw_b}/v1/sandboxes", params={"metadata": "n=2"}).json()[
        "sandboxes"]] == [ids[2]]
    assert client.post(f"{gw_b}/v1/sandboxes/{first}/timeout", json={"timeout": 200}).status_code == 200
    # A terminal over a WebSocket, relayed to the node.
    ws_url = gw_b.replace("http://", "ws://") + f"/v1/sandboxes/{first}/pty/ws"
    with connect(ws_url, additional_headers=key, open_timeout=15) as ws:
        assert json.loads(ws.recv(timeout=15))["type"] == "start"
        ws.send(b"echo $((6*7))\n")
        seen = b""
        while b"42" not in seen:
            frame = ws.recv(timeout=15)
            seen += frame if isinstance(frame, bytes) else b""
        ws.send(b"exit\n")

    # A server in the sandbox, reached on its port through the other gateway, with
    # the key and by a link signed on the first gateway.
    serve = {"cmd": "python3 -m http.server 8000 --bind 127.0.0.1", "cwd": "/home/user", "background": True,
             "stream": False}
    assert client.post(f"{gw_a}/v1/sandboxes/{first}/commands", json=serve).status_code == 200
    port_url = f"{gw_b}/v1/sandboxes/{first}/ports/8000/a.txt"
    _wait(lambda: client.get(port_url).status_code == 200, 15, "the server in the sandbox")
    assert client.get(port_url).content == b"across"
    link = client.post(f"{gw_a}/v1/sandboxes/{first}/port-links/8000", json={"expires_in": 60})
    assert link.status_code == 201, link.text
    opened = httpx.get(link.json()["path_url"].replace(gw_a, gw_b))
    assert opened.status_code == 200 and "a.txt" in opened.text

    # Another workspace reaches none of them, through either gateway: 404 as if absent.
    for url in (gw_a, gw_b):
        assert httpx.get(f"{url}/v1/sandboxes/{first}", headers=stranger).status_code == 404
        refused = httpx.post(f"{url}/v1/sandboxes/{first}/commands", headers=stranger, json={"cmd": "id"})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "sandbox_not_found"
        assert httpx.delete(f"{url}/v1/sandboxes/{first}", headers=stranger).status_code == 404
        assert httpx.get(f"{url}/v1/sandboxes", headers=stranger).json()["sandboxes"] == []
        with pytest.raises(Exception, match="404"):
            connect(ws_url, additional_headers=stranger, open_timeout=15)
        assert httpx.get(port_url.replace(gw_b, url), headers=stranger).status_code == 404
        linked = httpx.post(f"{url}/v1/sandboxes/{first}/port-links/8000", headers=stranger, json={})
        assert linked.status_code == 404
    # An erased workspace's sandboxes stop on their hosts at the next heartbeat.
    theirs = httpx.post(f"{gw_a}/v1/sandboxes", headers=stranger, json={}, timeout=60)
    assert theirs.status_code == 201, theirs.text
    their_node = nodes[_hosts(database)[theirs.json()["sandbox_id"]]][2]
    their_url = f"{their_node}{NODE_PREFIX}/v1/sandboxes/{theirs.json()['sandbox_id']}"
    as_gateway = {"Authorization": f"Bearer {host_token(PEPPER.encode())}", WORKSPACE_HEADER: stranger_workspace}
    assert httpx.get(their_url, headers=as_gateway).status_code == 200
    admin = {"Authorization": f"Bearer {(home / 'admin-key').read_text().strip()}"}
    time.sleep(1.5)  # a heartbeat has seen it placed (one never seen goes RECORD_WITHIN_S after its creation)
    assert httpx.delete(f"{gw_b}/v1/admin/workspaces/{stranger_workspace}", headers=admin).status_code == 200
    _wait(lambda: httpx.get(their_url, headers=as_gateway).status_code == 404, 5, "the erased workspace's sandbox")

    # The node API takes the hosts' token only, never a tenant's key.
    node_a = nodes[where[first]][2]
    assert httpx.get(f"{node_a}{NODE_PREFIX}/v1/sandboxes/{first}", headers=key).status_code == 401

    # Platform admins see the hosts; a tenant's key does not.
    listed_hosts = httpx.get(f"{gw_b}/v1/admin/sandbox-hosts", headers=admin).json()["data"]
    assert [(h["name"], h["live"], "base" in h["tiers"]) for h in listed_hosts] == [
        ("node-a", True, True), ("node-b", True, True)
    ]
    assert sum(h["placed"] for h in listed_hosts) == len(ids)
    assert httpx.get(f"{gw_b}/v1/admin/sandbox-hosts", headers=key).status_code == 403

    # Node A dies: its sandboxes are declared lost within its TTL plus a sweep;
    # node B's go on; new sandboxes go to node B.
    doomed = [i for i in ids if where[i] == "node-a"]
    kept = [i for i in ids if where[i] == "node-b"]
    # Frozen first (a host cut off answers nothing): a call in flight is answered
    # once its heartbeat lapses, not left hanging; then killed outright.
    in_flight: dict[str, object] = {}

    def long_call() -> None:
        started = time.monotonic()
        answer = httpx.post(f"{gw_b}/v1/sandboxes/{doomed[0]}/commands", headers=key, timeout=60,
                            json={"cmd": "sleep 30", "stream": False})  # fmt: skip
        in_flight.update(status=answer.status_code, body=answer.json(), took=time.monotonic() - started)

    caller = threading.Thread(target=long_call)
    caller.start()
    time.sleep(1.0)
    nodes["node-a"][0].send_signal(signal.SIGSTOP)
    killed = time.monotonic()
    caller.join(timeout=30)
    assert in_flight["status"] == 409 and in_flight["body"]["error"]["code"] == "sandbox_lost", in_flight
    assert time.monotonic() - killed < TTL_S + 5
    nodes["node-a"][0].send_signal(signal.SIGKILL)
    nodes["node-a"][0].wait(timeout=10)

    def lost() -> bool:
        answer = client.get(f"{gw_b}/v1/sandboxes/{doomed[0]}")
        assert answer.status_code in (200, 503), answer.text  # 503: unreachable, not yet declared lost
        return answer.status_code == 200 and answer.json()["state"] == "lost"

    _wait(lost, TTL_S + 10, "the dead node's sandboxes to be declared lost")
    print(f"lost: declared {time.monotonic() - killed:.1f} s after SIGSTOP (TTL {TTL_S} s); "
          f"the call in flight answered after {in_flight['took']:.1f} s")
    for sandbox_id in doomed:
        started = time.monotonic()
        answer = client.post(f"{gw_a}/v1/sandboxes/{sandbox_id}/commands", json={"cmd": "echo hi"})
        assert time.monotonic() - started < 2
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "sandbox_lost", answer.text
        assert "lost" in answer.json()["error"]["message"]
    for sandbox_id in kept:
        ran = client.post(f"{gw_a}/v1/sandboxes/{sandbox_id}/commands", json={"cmd": "echo still", "stream": False})
        assert ran.status_code == 200 and ran.json()["stdout"] == "still\n"
    assert [h["live"] for h in httpx.get(f"{gw_a}/v1/admin/sandbox-hosts", headers=admin).json()["data"]] == [
        False, True
    ]
    states = {s["sandbox_id"]: s["state"] for s in client.get(f"{gw_a}/v1/sandboxes").json()["sandboxes"]}
    assert states == {**{i: "lost" for i in doomed}, **{i: "running" for i in kept}}
    with database.connect() as c:
        tiers = {tier for (offered,) in c.execute(sa.text("SELECT tiers FROM sandbox_hosts")) for tier in offered}
    if "microvm" not in tiers:  # no host here boots one: waiting would not help, and the answer says so
        no_vm = client.post(f"{gw_b}/v1/sandboxes", json={"template": "microvm"})
        assert no_vm.status_code == 503 and no_vm.json()["error"]["code"] == "tier_unavailable", no_vm.text
        assert "retry-after" not in no_vm.headers
    fresh = client.post(f"{gw_b}/v1/sandboxes", json={})
    assert fresh.status_code == 201, fresh.text
    assert _hosts(database)[fresh.json()["sandbox_id"]] == "node-b"
    # A lost sandbox, deleted, is forgotten; a live one, deleted, is killed on its node.
    assert client.delete(f"{gw_b}/v1/sandboxes/{doomed[0]}").status_code == 204
    assert client.get(f"{gw_a}/v1/sandboxes/{doomed[0]}").status_code == 404
    assert client.delete(f"{gw_a}/v1/sandboxes/{kept[0]}").status_code == 204
    assert client.get(f"{gw_b}/v1/sandboxes/{kept[0]}").status_code == 404

    # No live host with room: creation is refused cleanly, with Retry-After.
    nodes["node-b"][0].send_signal(signal.SIGKILL)
    nodes["node-b"][0].wait(timeout=10)
    with database.begin() as c:  # its heartbeat as if it had lapsed, rather than waiting the TTL out
        c.execute(sa.text("UPDATE sandbox_hosts SET heartbeat_at = 0"))
    refused = client.post(f"{gw_a}/v1/sandboxes", json={})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "no_sandbox_host"
    client.close()


def test_a_node_needs_the_gateways_postgresql(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["node", "--database-url", f"sqlite:///{tmp_path / 'one.db'}"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output
