"""What the HTTP layer costs on top of the engine, with the default chat model.

The same engine serves both paths: `engine.generate` called directly, and
POST /v1/chat/completions through uvicorn on loopback, from clients in a separate
process: for sequential requests one keep-alive connection of the standard
library's lean HTTP client (as a load generator would hold), for concurrent
streams httpx. The HTTP path includes what every deployment pays per
request: the API key's check and the usage record (SQLite in a temporary
directory, a workspace without limits). min_tokens = max_tokens makes every
request generate exactly the same number of tokens.

    python benchmarks/http_overhead.py [--requests 100] [--concurrency 32] [--tokens 16]

Prints, for sequential non-streamed requests, latency p50/p99 of each path and
the HTTP layer's own share: per request, the client's latency minus the time the
request spent in `engine.generate` (measured around that call in the server), so
that the engine's run-to-run variance, far larger than the layer's cost on a
2-core machine, cancels out; then, for `--concurrency` streamed requests at once, requests/s and
time-to-first-token p50/p99 of each path.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import multiprocessing
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import uvicorn

from tramontane.engine import SamplingParams
from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, default_chat_model_path
from tramontane.inference import ModelRegistry, ModelSpec
from tramontane.platform.app import create_app
from tramontane.tenancy import Capability, Tenancy

MESSAGES = [{"role": "user", "content": "Describe the sea in one sentence."}]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class TimedApp:
    """The ASGI app, timed per POST from its call to the last byte of its response
    handed to uvicorn: with the engine's span, it splits the HTTP layer's share into
    what the app does and what uvicorn, loopback and the client do."""

    def __init__(self, app):
        self.app = app
        self.spans: list[float] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.spans.append(time.perf_counter() - start)

        await self.app(scope, receive, timed_send)


def serve(app: TimedApp) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited: no delayed-ACK stalls
    sock.bind(("127.0.0.1", 0))
    # Keep-alive past uvicorn's 5 s default: with long requests, the sequential client's
    # connection otherwise idles out while the direct path runs.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=600))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


async def direct_request(engine, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(time to first token, total) of one request straight to the engine."""
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    first = None
    async for out in engine.generate(uuid.uuid4().hex, prompt, params):
        if first is None and out.outputs[0].delta_token_ids:
            first = time.perf_counter() - start
    return first or math.nan, time.perf_counter() - start


def sequential_client(url: str, key: str, tokens: int, orders: Connection) -> None:
    """Runs in a client process: one request per order received, on one keep-alive
    connection, sending back its latency (or the error)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    body = json.dumps(
        {
            "model": DEFAULT_CHAT_MODEL_NAME,
            "messages": MESSAGES,
            "max_tokens": tokens,
            "min_tokens": tokens,
            "temperature": 0,
        }
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    while orders.recv():
        start = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body, headers)
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        orders.send(elapsed if response.status == 200 else f"HTTP {response.status}")
    connection.close()


def time_in_engine(engine) -> list[float]:
    """Wraps `engine.generate` to append, per call, the seconds from the call to its
    last output: what the engine took for a request, its queueing included."""
    spans: list[float] = []
    generate = engine.generate

    async def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            async for out in generate(*args, **kwargs):
                yield out
        finally:
            spans.append(time.perf_counter() - start)

    engine.generate = timed
    return spans


def http_batch(url: str, key: str, tokens: int, stream: bool, count: int) -> tuple[list[tuple[float, float]], float]:
    """Runs in a client process, so that the client's own Python work does not take
    the server's GIL: `count` requests at once, their (TTFT, total) and the wall time."""

    async def one(client: httpx.AsyncClient) -> tuple[float, float]:
        body = {
            "model": DEFAULT_CHAT_MODEL_NAME,
            "messages": MESSAGES,
            "max_tokens": tokens,
            "min_tokens": tokens,
            "temperature": 0,
            "stream": stream,
        }
        start = time.perf_counter()
        first = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if first is None and '"content":"' in line and '"content":""' not in line:
                    first = time.perf_counter() - start
        return first or math.nan, time.perf_counter() - start

    async def run() -> tuple[list[tuple[float, float]], float]:
        limits = httpx.Limits(max_connections=count)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*(one(client) for _ in range(count)))
            return list(results), time.perf_counter() - start

    return asyncio.run(run())


def http_cpu_s(server_thread: threading.Thread) -> float:
    """CPU time used so far by the threads that serve HTTP, the engine's excluded:
    uvicorn's event loop, the worker threads it hands blocking calls to and the
    writers of usage records and request logs. On a busy machine this stays
    meaningful where wall-clock differences drown."""
    threads = [
        t
        for t in threading.enumerate()
        if t is server_thread or t.name.startswith("AnyIO worker") or t.name.endswith("-writer")
    ]
    return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident)) for t in threads if t.ident)


async def measure(args, engine, app: TimedApp, url: str, key: str, clients: ProcessPoolExecutor, server_thread) -> None:
    tokenizer = engine.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template(MESSAGES))
    loop = asyncio.get_running_loop()

    def http(stream: bool, count: int):
        return loop.run_in_executor(clients, http_batch, url, key, args.tokens, stream, count)

    orders, client_end = multiprocessing.get_context("spawn").Pipe()
    client = multiprocessing.get_context("spawn").Process(
        target=sequential_client, args=(url, key, args.tokens, client_end), daemon=True
    )
    client.start()
    client_end.close()  # so that a client that dies is an EOFError here, not a hang

    async def over_http_once() -> float:
        orders.send(True)
        result = await loop.run_in_executor(None, orders.recv)
        if isinstance(result, str):
            raise RuntimeError(result)
        return result

    await over_http_once()  # warm-up: client process, connection, prefix cache
    await direct_request(engine, prompt, args.tokens)
    engine_spans = time_in_engine(engine)
    direct, over_http, http_layer, in_app = [], [], [], []
    http_cpu = 0.0
    for _ in range(args.requests):  # interleaved, so that load drift hits both paths alike
        direct.append((await direct_request(engine, prompt, args.tokens))[1])
        cpu_before = http_cpu_s(server_thread)
        over_http.append(await over_http_once())
        # Both spans were appended before the client had its response.
        http_layer.append(over_http[-1] - engine_spans[-1])
        in_app.append(app.spans[-1] - engine_spans[-1])
        await asyncio.sleep(0.05)  # the usage record is written after the response
        http_cpu += http_cpu_s(server_thread) - cpu_before
    orders.send(False)
    client.join()
    print(f"\nsequential, non-streamed, {args.requests} requests of {args.tokens} tokens (ms)")
    print(f"{'':12}{'p50':>10}{'p99':>10}")
    for name, values in (("engine", direct), ("HTTP", over_http)):
        print(f"{name:12}{percentile(values, 50) * 1e3:10.1f}{percentile(values, 99) * 1e3:10.1f}")
    print(
        f"{'HTTP layer':12}{percentile(http_layer, 50) * 1e3:10.2f}{percentile(http_layer, 99) * 1e3:10.2f}"
        "  (each HTTP request's latency minus its time in engine.generate)"
    )
    outside = [layer - app_part for layer, app_part in zip(http_layer, in_app, strict=True)]
    for name, values, what in (
        ("  in the app", in_app, "key check, parsing, prompt, response; the engine's span excluded"),
        ("  outside", outside, "uvicorn, loopback and the client process"),
    ):
        print(f"{name:12}{percentile(values, 50) * 1e3:10.2f}{percentile(values, 99) * 1e3:10.2f}  ({what})")
    cpu_ms = http_cpu / args.requests * 1e3
    print(f"HTTP layer CPU per request (event loop, worker and writer threads): {cpu_ms:.2f} ms")

    print(f"\n{args.concurrency} concurrent streamed requests of {args.tokens} tokens")
    print(f"{'':12}{'req/s':>10}{'TTFT p50':>12}{'TTFT max':>12}  (n={args.concurrency}: too few for a p99)")
    start = time.perf_counter()
    results = await asyncio.gather(*(direct_request(engine, prompt, args.tokens) for _ in range(args.concurrency)))
    rows = [("engine", list(results), time.perf_counter() - start), ("HTTP", *(await http(True, args.concurrency)))]
    for name, results, elapsed in rows:
        ttft = [r[0] for r in results]
        print(
            f"{name:12}{len(results) / elapsed:10.2f}"
            f"{percentile(ttft, 50) * 1e3:10.0f}ms{max(ttft) * 1e3:10.0f}ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    registry = ModelRegistry()
    registry.load(ModelSpec(default_chat_model_path(), DEFAULT_CHAT_MODEL_NAME, "chat"))
    with tempfile.TemporaryDirectory() as home:
        tenancy = Tenancy.open(f"sqlite:///{Path(home) / 'bench.db'}", home=Path(home))
        _, key = tenancy.create_tenant("bench", frozenset({Capability.INFERENCE}))
        app = TimedApp(create_app(registry, tenancy))
        url, server, thread = serve(app)  # the app's lifespan starts the engine
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
                engine = registry.chat(DEFAULT_CHAT_MODEL_NAME).engine
                asyncio.run(measure(args, engine, app, url, key, clients, thread))
        finally:
            server.should_exit = True
            thread.join()
            tenancy.close()


if __name__ == "__main__":
    main()
