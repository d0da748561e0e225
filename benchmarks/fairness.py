"""Fair sharing under load: one workspace's flood against another's single stream.

A server (its own process: `tramontane up`'s app with the default chat model, a
SQLite tenancy in a temporary directory) serves two workspaces. In one run:

1. idle: workspace B sends `--b-requests` streamed chat completions one after the
   other (`--b-tokens` each); their time to first token and tokens/s.
2. flood: workspace A opens `--a-streams` long streams (min_tokens keeps them
   generating) and sends `--abandoned` requests whose clients give up after
   `--abandon-after-s` (half non-streamed chat completions, half non-streamed
   conversations: the routes that used to run on for nobody). Once A's streams
   all generate, B sends the same requests again, then A's clients all leave.

Reports B's TTFT p50 and tokens/s median in both phases (with sample counts), A's
throughput during B's measurement, B's rate against A's per-stream rate (its
fair share: equal weights, comparable per-stream service), and two checks read
from the server's /metrics: 2 s after the abandoned clients left only A's
streams and B's request run, and 2 s after the last client left nothing does.

    python benchmarks/fairness.py [--a-streams 32] [--abandoned 10] [--b-requests 5] [--b-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import socket
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as MODEL

B_PROMPT = [{"role": "user", "content": "Describe the sea in three sentences."}]
A_PROMPT = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]


def serve(home: str, conn: Connection) -> None:
    """The server process: tenants A and B, then uvicorn until terminated."""
    import uvicorn

    from tramontane.inference import ModelRegistry, ModelSpec
    from tramontane.platform.app import create_app
    from tramontane.engine.defaults import default_chat_model_path
    from tramontane.tenancy import Capability, Tenancy

    tenancy = Tenancy.open(f"sqlite:///{home}/tramontane.db", home=Path(home))
    keys = {name: tenancy.create_tenant(name, frozenset({Capability.INFERENCE}))[1] for name in ("a", "b")}
    registry = ModelRegistry()
    registry.load(ModelSpec(default_chat_model_path(), MODEL, "chat"))
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    conn.send((f"http://127.0.0.1:{sock.getsockname()[1]}", keys))
    app = create_app(registry, tenancy)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])


async def running_requests(http: httpx.AsyncClient) -> int:
    """Requests the engine runs or queues, from /metrics."""
    text = (await http.get("/metrics")).text
    found = re.findall(r'^tramontane_requests_(?:running|waiting)\{model="[^"]+"\} ([0-9.]+)$', text, re.M)
    return int(sum(float(v) for v in found))


async def b_stream(http: httpx.AsyncClient, key: str, tokens: int) -> tuple[float, float]:
    """One streamed request: (time to first token, tokens/s after the first)."""
    body = {"model": MODEL, "messages": B_PROMPT, "max_tokens": tokens, "min_tokens": tokens, "stream": True}
    start = time.perf_counter()
    first = last = None
    count = 0
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=_auth(key)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    assert first is not None and last is not None and count > 1
    return first - start, (count - 1) / (last - first)


async def b_phase(http: httpx.AsyncClient, key: str, n: int, tokens: int) -> tuple[list[float], list[float]]:
    ttfts, rates = [], []
    for _ in range(n):
        ttft, rate = await b_stream(http, key, tokens)
        ttfts.append(ttft)
        rates.append(rate)
    return ttfts, rates


async def a_stream(http: httpx.AsyncClient, key: str, tokens: int, received: list[int], started: asyncio.Event) -> None:
    body = {"model": MODEL, "messages": A_PROMPT, "max_tokens": tokens, "min_tokens": tokens, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=_auth(key)) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                received.append(1)
                started.set()


async def abandoned(http: httpx.AsyncClient, key: str, i: int, after_s: float) -> bool:
    """A non-streamed request whose client gives up after `after_s` (False: it was
    answered before, the model having ended its text)."""
    if i % 2:
        path = "/v1/conversations"
        body = {"model": MODEL, "inputs": A_PROMPT[0]["content"], "completion_args": {"max_tokens": 3000}}
    else:
        path = "/v1/chat/completions"
        body = {"model": MODEL, "messages": A_PROMPT, "max_tokens": 3000, "min_tokens": 3000}
    try:
        await http.post(path, json=body, headers=_auth(key), timeout=httpx.Timeout(60, read=after_s))
    except httpx.ReadTimeout:
        return True
    return False


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def summary(name: str, ttfts: list[float], rates: list[float]) -> dict[str, float]:
    row = {"ttft_p50_ms": statistics.median(ttfts) * 1000, "tokens_per_s_median": statistics.median(rates)}
    print(f"  {name}: TTFT p50 {row['ttft_p50_ms']:.0f} ms, {row['tokens_per_s_median']:.1f} tokens/s "
          f"(median of {len(ttfts)} requests)")
    return row


async def run(args: argparse.Namespace, url: str, keys: dict[str, str]) -> None:
    limits = httpx.Limits(max_connections=args.a_streams + args.abandoned + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await b_stream(http, keys["b"], 4)  # warm-up
        print("B alone:")
        idle = summary("B", *await b_phase(http, keys["b"], args.b_requests, args.b_tokens))

        received: list[int] = []
        started = asyncio.Event()
        flood = [
            asyncio.create_task(a_stream(http, keys["a"], args.a_tokens, received, started))
            for _ in range(args.a_streams)
        ]
        gone = [asyncio.create_task(abandoned(http, keys["a"], i, args.abandon_after_s)) for i in range(args.abandoned)]
        await asyncio.wait_for(started.wait(), 300)
        num_abandoned = sum(await asyncio.gather(*gone))
        left = time.monotonic()
        print(f"B under A's flood ({args.a_streams} streams, {args.abandoned} abandoned requests):")
        a_before, t0 = len(received), time.perf_counter()
        b_task = asyncio.create_task(b_phase(http, keys["b"], args.b_requests, args.b_tokens))
        expected = args.a_streams + 1
        gone_after = await until_at_most(http, expected, left)
        loaded = summary("B", *await b_task)
        window = time.perf_counter() - t0
        a_rate = (len(received) - a_before) / window
        finished_early = sum(task.done() for task in flood)
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        all_left = time.monotonic()
        all_gone_after = await until_at_most(http, 0, all_left)

    per_stream = a_rate / args.a_streams
    print(f"  A: {a_rate:.1f} tokens/s over its {args.a_streams} streams ({per_stream:.1f} per stream) "
          f"during B's {window:.1f} s; {finished_early} of its streams ended before B was done")
    print(f"  B's TTFT under the flood: {loaded['ttft_p50_ms'] / idle['ttft_p50_ms']:.2f}x its idle p50 "
          "(goal: within 2x)")
    print(f"  B's tokens/s against A's per-stream rate (its fair share): "
          f"{loaded['tokens_per_s_median'] / per_stream:.2f}x (goal: at least 1x)")
    print(f"Orphans: the {num_abandoned} abandoned requests (of {args.abandoned}; the others were answered "
          f"first) left the engine {_seconds(gone_after)} after their clients (goal: within 2 s)")
    print(f"         every request had left it {_seconds(all_gone_after)} after the last client left")


def _seconds(value: float | None) -> str:
    return "more than 30 s" if value is None else f"{value:.1f} s"


async def until_at_most(http: httpx.AsyncClient, count: int, since: float, limit_s: float = 30.0) -> float | None:
    """Seconds from `since` until the engine holds at most `count` requests (None: not within `limit_s`)."""
    while time.monotonic() - since < limit_s:
        if await running_requests(http) <= count:
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-streams", type=int, default=32)
    parser.add_argument("--a-tokens", type=int, default=4000, help="each of A's streams (cut when B is done)")
    parser.add_argument("--abandoned", type=int, default=10)
    parser.add_argument("--abandon-after-s", type=float, default=3.0)
    parser.add_argument("--b-requests", type=int, default=5)
    parser.add_argument("--b-tokens", type=int, default=64)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as home:
        ours, theirs = context.Pipe()
        server = context.Process(target=serve, args=(home, theirs), daemon=True)
        server.start()
        try:
            url, keys = ours.recv()
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.2)
            asyncio.run(run(args, url, keys))
        finally:
            server.terminate()
            server.join(timeout=30)


if __name__ == "__main__":
    main()
