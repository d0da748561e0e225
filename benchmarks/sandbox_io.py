"""Figures of a sandbox's interactive surfaces through the REST API (tier 1 by
default, `--template microvm` for tier 2): a small GET through an exposed port, a
large POST echoed back through it (throughput, both directions), a keystroke's
round trip on a terminal over WebSocket, and the delay from a file write to its
watch event. The server runs in a process of its own, as in production. Needs
root and bubblewrap.

    python benchmarks/sandbox_io.py [--requests 50] [--bulk 5] [--bulk-mb 8] [--keys 50] [--writes 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from percentiles import summary
from websockets.sync.client import connect

from tramontane.sandbox import ManagerConfig, Sandbox, SandboxManager, create_router

ECHO_SERVER = r"""
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def do_POST(self):
        size = int(self.headers["Content-Length"])
        self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
        while size:
            chunk = self.rfile.read(min(size, 1 << 16)); self.wfile.write(chunk); size -= len(chunk)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Echo).serve_forever()
"""


def _serve(port: int, template: str) -> None:
    vm_pool = 1 if template == "microvm" else 0  # a VM booting meanwhile would skew tier 1's figures
    manager = SandboxManager(ManagerConfig(pool_size=1, microvm_pool_size=vm_pool, microvm_accelerator="auto"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        yield
        await manager.shutdown()

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(manager))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/v1/sandboxes", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the API server did not start")


def ports(sbx: Sandbox, requests: int, bulk: int, bulk_mb: int) -> None:
    sbx.files.write("echo_server.py", ECHO_SERVER)
    sbx.commands.run("python3 echo_server.py", background=True)
    url = sbx.get_host(8000)
    with httpx.Client(timeout=120) as http:
        deadline = time.monotonic() + 30
        while http.get(url + "/").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            http.get(url + "/").raise_for_status()
            latencies.append(time.perf_counter() - started)
        print(f"  port, GET 2 bytes:        {summary(latencies, scale=1000)}")
        body = b"x" * (bulk_mb * 1024 * 1024)
        rates = []
        for _ in range(bulk):
            started = time.perf_counter()
            echoed = http.post(url + "/", content=body)
            assert echoed.content == body
            rates.append(2 * len(body) / (time.perf_counter() - started) / 1e6)
        print(f"  port, POST {bulk_mb} MiB echoed:  median {statistics.median(rates):.1f} MB/s both ways (n={bulk})")


def terminal(api: str, sbx: Sandbox, keys: int) -> None:
    url = api.replace("http://", "ws://") + f"/v1/sandboxes/{sbx.sandbox_id}/pty/ws"
    with connect(url, open_timeout=60) as ws:
        json.loads(ws.recv(timeout=60))
        ws.send(b"stty -echo; cat\n")  # from here on, each key comes back once, from cat
        time.sleep(0.5)
        while True:
            try:
                ws.recv(timeout=0.2)
            except TimeoutError:
                break
        latencies = []
        for i in range(keys):
            key = f"{i % 10}\n".encode()
            started = time.perf_counter()
            ws.send(key)
            seen = b""
            while key.strip() not in seen:
                frame = ws.recv(timeout=10)
                seen += frame if isinstance(frame, bytes) else b""
            latencies.append(time.perf_counter() - started)
        print(f"  terminal, key round trip: {summary(latencies, scale=1000)}")


def watch(sbx: Sandbox, writes: int) -> None:
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched")
    latencies = []
    try:
        for i in range(writes):
            started = time.perf_counter()
            sbx.files.write(f"watched/{i}.txt", "x")
            while not any(e.name == f"{i}.txt" for e in handle.get_new_events()):
                if time.perf_counter() - started > 10:
                    raise RuntimeError("no watch event within 10 s")
                time.sleep(0.001)
            latencies.append(time.perf_counter() - started)
    finally:
        handle.stop()
    print(f"  watch, write to event:    {summary(latencies, scale=1000)} (the write's own API call included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", default="base")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--bulk", type=int, default=5)
    parser.add_argument("--bulk-mb", type=int, default=8)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--writes", type=int, default=20)
    args = parser.parse_args()
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, args.template), daemon=True)
    server.start()
    api = f"http://127.0.0.1:{port}"
    try:
        _wait_up(api)
        print(f"sandbox {args.template}, through the REST API")
        with Sandbox.create(template=args.template, api_url=api, timeout=600) as sbx:
            ports(sbx, args.requests, args.bulk, args.bulk_mb)
            terminal(api, sbx, args.keys)
            watch(sbx, args.writes)
    finally:
        server.terminate()
        server.join(30)


if __name__ == "__main__":
    main()
