"""Sandboxes across nodes: what placement and relaying cost.

One `tramontane up` gateway that hosts no sandboxes and two `tramontane node`
hosts on this machine share the PostgreSQL database at `--database-url` (a
throwaway one: the benchmark writes a tenant into it). It times, each `--samples`
times, a sandbox's creation through the gateway (placement, the host's creation,
the record) and straight on a node's internal API, then `commands.run("true")`
both ways. Needs root and bubblewrap, as sandboxes do.

    python benchmarks/sandbox_nodes.py --database-url postgresql+psycopg://... [--samples 30]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tramontane.inference.registry import default_embedding_model_path
from tramontane.sandbox.hosts import HostDirectory
from tramontane.sandbox.node import NODE_PREFIX, WORKSPACE_HEADER, host_token
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    tramontane = os.path.join(os.path.dirname(sys.executable), "tramontane")
    command = [tramontane, *args, "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def _timed(call, samples: int) -> list[float]:
    took = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def _report(what: str, took: list[float]) -> None:
    ordered = sorted(took)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    print(f"{what:<46} median {statistics.median(took):7.1f} ms  p90 {p90:7.1f} ms  (n={len(took)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="A throwaway PostgreSQL database.")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tramontane-sandbox-nodes-"))
    pepper = secrets.token_hex(24)
    os.environ.update(
        TRAMONTANE_DATABASE_URL=args.database_url, TRAMONTANE_KEY_PEPPER=pepper, TRAMONTANE_HOME=str(home)
    )
    store = open_store(args.database_url)
    tenancy = Tenancy(store, home=home, pepper=pepper.encode())
    workspace, key = tenancy.create_tenant(f"bench-{secrets.token_hex(3)}", frozenset({Capability.SANDBOX}))
    model = f"all-minilm-l6-v2={default_embedding_model_path()}"
    started = [
        _start("up", "--model", model, "--no-sandbox-host", "--sandbox-default-template", "base"),
        *(
            _start("node", "--name", f"bench-{n}", "--pool-size", "4", "--microvm-pool-size", "0",
                   "--default-template", "base")
            for n in range(2)
        ),
    ]  # fmt: skip
    (_, gateway), nodes = started[0], [url for _, url in started[1:]]
    try:
        _until(lambda: _ok(f"{gateway}/ready") and all(_ok(f"{n}/health") for n in nodes), 180, "the processes")
        directory = HostDirectory(store)
        _until(lambda: len(directory.live_hosts()) >= 2, 60, "both nodes to register")
        time.sleep(3)  # the nodes' warm pools fill
        client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        node = httpx.Client(headers={"Authorization": f"Bearer {host_token(pepper.encode())}",
                                     WORKSPACE_HEADER: workspace}, timeout=60)  # fmt: skip
        made: list[str] = []

        def create(http: httpx.Client, url: str) -> None:
            answer = http.post(url, json={"timeout": 600})
            answer.raise_for_status()
            made.append(url + "/" + answer.json()["sandbox_id"])

        # Alternating, so that both see the same pool refills and machine load;
        # each sandbox killed again, untimed, so that the hosts stay as empty.
        through, direct = [], []
        for _ in range(args.samples):
            through += _timed(lambda: create(client, f"{gateway}/v1/sandboxes"), 1)
            client.delete(made.pop())
            direct += _timed(lambda: create(node, f"{nodes[0]}{NODE_PREFIX}/v1/sandboxes"), 1)
            node.delete(made.pop())
        _report("create: through the gateway (placed)", through)
        _report("create: straight on a node", direct)
        create(client, f"{gateway}/v1/sandboxes")
        sandbox = made[0].rsplit("/", 1)[1]
        with store.engine.connect() as connection:
            placed = connection.exec_driver_sql(
                "SELECT host FROM sandbox_placements WHERE sandbox_id = %s", (sandbox,)
            ).scalar()
        on_node = nodes[int(str(placed).rsplit("-", 1)[1])]
        body = {"cmd": "true", "stream": False}
        through, direct = [], []
        for _ in range(args.samples):
            through += _timed(lambda: client.post(f"{gateway}/v1/sandboxes/{sandbox}/commands", json=body), 1)
            direct += _timed(lambda: node.post(f"{on_node}{NODE_PREFIX}/v1/sandboxes/{sandbox}/commands", json=body), 1)
        _report('commands.run("true"): through the gateway', through)
        _report('commands.run("true"): straight on its node', direct)
        client.delete(made[0])
    finally:
        for proc, _ in started:
            proc.send_signal(signal.SIGINT)
        for proc, _ in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        tenancy.usage_writer.close()
        tenancy.request_logs.close()
        store.close()
        _remove(home)


def _remove(home: Path) -> None:
    """The benchmark's home, unless something is still mounted under it (a
    template build's /proc or /dev/shm): removing through a mount removes the host's files."""
    with open("/proc/mounts") as mounts:
        if any(line.split()[1].startswith(str(home)) for line in mounts):
            print(f"left {home}: something is still mounted under it")
            return
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
