"""The sandbox API server's resident memory before and after a run of the resource
attacks of the isolation suite, each driven through the REST API and the SDK.

The server (a SandboxManager behind the sandbox router, the manager's defaults but
a small pool) runs in a process of its own, whose VmRSS is read from /proc. One
round, in fresh tier-1 sandboxes:

- a code cell whose value is a 100 MiB string;
- eight command streams of 200 MB each that the client never reads (3 s), closed;
- four concurrent reads of a 60 MiB file;
- a detached fork bomb, a command and a cell refused for it, then kill_all;
- reads of a FIFO and of /dev/zero.

It prints each attack's outcome, then the server's RSS after warm-up, after each
round's attacks (their sandboxes still alive) and after they are killed, with the
medians over the rounds. Needs root and bubblewrap.

    python benchmarks/sandbox_attacks.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from tramontane.sandbox import ManagerConfig, Sandbox, SandboxManager, create_router

MiB = 1024 * 1024


def serve(sock: socket.socket) -> None:
    manager = SandboxManager(ManagerConfig(pool_size=2, microvm_pool_size=0, default_template="base"))

    async def lifespan(app: FastAPI) -> Any:
        await manager.start()
        yield
        await manager.shutdown()

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(manager))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def outcome(attempt: Callable[[], Any]) -> str:
    try:
        return f"ok: {str(attempt())[:80]}"
    except Exception as exc:  # the outcome is what is reported
        return f"{type(exc).__name__} {getattr(exc, 'status', '')} {getattr(exc, 'code', '')}".strip()


def huge_result(url: str) -> str:
    with Sandbox.create(api_url=url, timeout=120) as sbx:
        execution = sbx.run_code("'x' * (100 << 20)", timeout=120)
        return f"error {execution.error.name if execution.error else None}, text {len(execution.text or '')} chars"


def unread_floods(url: str) -> str:
    with Sandbox.create(api_url=url, timeout=120) as sbx, httpx.Client(base_url=url, timeout=60) as http:
        body = {"cmd": "head -c 200000000 /dev/zero | tr '\\0' x", "background": True, "stream": True}
        floods = [
            http.send(http.build_request("POST", f"/v1/sandboxes/{sbx.sandbox_id}/commands", json=body), stream=True)
            for _ in range(8)
        ]
        time.sleep(3)
        for flood in floods:
            flood.close()
        return "8 streams opened, unread for 3 s, closed"


def big_reads(url: str) -> str:
    with Sandbox.create(api_url=url, timeout=120, disk_mb=128) as sbx:
        sbx.commands.run("head -c 62914560 /dev/urandom > big.bin")
        sizes: list[str] = []
        readers = [
            threading.Thread(target=lambda: sizes.append(outcome(lambda: len(sbx.files.read("big.bin", "bytes")))))
            for _ in range(4)
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
        return "; ".join(sizes)


def fork_bomb(url: str) -> str:
    with Sandbox.create(api_url=url, timeout=120, cpu=0.5) as sbx:
        sbx.commands.run("setsid python3 -c 'import os\nwhile True:\n  try: os.fork()\n  except OSError: pass' &")
        deadline = time.monotonic() + 30
        while sbx.get_metrics()["pids"] < 230 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        command = outcome(lambda: sbx.commands.run("echo hi").stdout)
        cell = outcome(lambda: sbx.run_code("1").text)
        killed = outcome(lambda: sbx.commands.kill_all())
        after = outcome(lambda: sbx.commands.run("echo alive").stdout.strip())
        return f"command: {command}; cell: {cell}; kill_all: {killed}; then: {after}"


def fifo(url: str) -> str:
    with Sandbox.create(api_url=url, timeout=60) as sbx:
        sbx.commands.run("mkfifo pipe")
        return f"FIFO: {outcome(lambda: sbx.files.read('pipe'))}; /dev/zero: {outcome(lambda: sbx.files.read('/dev/zero'))}"


ATTACKS = {
    "100 MiB cell result": huge_result,
    "unread floods": unread_floods,
    "4 x 60 MiB file reads": big_reads,
    "detached fork bomb": fork_bomb,
    "FIFO and device reads": fifo,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = multiprocessing.get_context("fork").Process(target=serve, args=(sock,), daemon=True)
    server.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/v1/sandboxes").raise_for_status()
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
    try:
        with Sandbox.create(api_url=url, timeout=60) as warm:  # first sandbox, first cell, first file
            warm.run_code("1")
            warm.files.write("a", "b")
        baseline = rss_mib(server.pid)
        print(f"server RSS after warm-up: {baseline:.0f} MiB")
        during, after = [], []
        for round_ in range(1, args.rounds + 1):
            for name, attack in ATTACKS.items():
                print(f"  round {round_}, {name}: {attack(url)}")
                during.append(rss_mib(server.pid))
            time.sleep(1)  # sandboxes killed by the `with` blocks: their output is released
            after.append(rss_mib(server.pid))
            print(f"round {round_}: server RSS peak seen {max(during):.0f} MiB, after {after[-1]:.0f} MiB")
        print(
            f"server RSS: warm {baseline:.0f} MiB; after each attack median {statistics.median(during):.0f} MiB "
            f"(max {max(during):.0f}, n={len(during)}); after each round median {statistics.median(after):.0f} MiB "
            f"(n={len(after)})"
        )
    finally:
        server.terminate()
        server.join(30)


if __name__ == "__main__":
    main()
