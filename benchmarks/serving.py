"""Serving speed over HTTP: `tramontane up` against llama.cpp's own server with
parallel slots (`llama-server --parallel N`), on the default model, driven by the same
client.

Each round starts each server in a fresh process (the order alternates between
rounds), with the same OMP_WAIT_POLICY, OMP_NUM_THREADS and thread count, and sends it
streamed chat completions over loopback with httpx: first one at a time (concurrency 1),
then `--concurrency` at once. Every request asks for exactly `--tokens` tokens (our
`min_tokens`, llama-server's `ignore_eos`), and every prompt starts with its own
number, so neither server can reuse another request's prompt from its prefix cache.
Prints per server and concurrency the median over rounds, with the number of rounds
and the range, of: output tokens/s of the whole batch, time to first token (the
round's median), and each stream's decode tokens/s after its first token (the
round's median).

    sh benchmarks/build-llama-cpp.sh 0.3.36 build/bench   # once
    python benchmarks/serving.py --llama-server build/bench/llama.cpp-0.3.36/build/bin/llama-server \\
        [--rounds 3] [--concurrency 16] [--requests 32] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPT = (
    "Explain, step by step and in plain words, how a refrigerator keeps food cold, "
    "what the compressor does, and why the back of it is warm."
)
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600


@dataclass
class Server:
    name: str
    url: str
    headers: dict[str, str]
    model: str
    exact_tokens: Callable[[int], dict]  # the body fields that make it generate exactly n tokens


@dataclass
class Stream:
    ttft_s: float
    decode_tok_s: float | None
    tokens: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


@contextmanager
def running(command: list[str], ready_url: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(process, ready_url, log)
        yield process
    except BaseException:
        # The server's side of a failed request: its log dies with the temporary directory.
        print(f"--- last lines of {log.name}:\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def tramontane(args, home: Path) -> Iterator[Server]:
    """`tramontane up` as a user starts it, serving the chat model only, and an
    inference key made through its admin API."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(args) | {"TRAMONTANE_HOME": str(home)}
    command = [args.tramontane, "up", "--host", "127.0.0.1", "--port", str(port), "--model", f"{args.name}={args.model}"]
    # Rounds share the prepared (quantized, repacked) model, as restarts of one server do.
    shared = home.parent / "prepared"
    shared.mkdir(exist_ok=True)
    (home / "prepared").symlink_to(shared)
    log = home / "tramontane.log"
    with running(command, f"{url}/ready", env, log):
        # Not a terminal: the first start writes its admin key to an owner-only file.
        admin_key = (home / "admin-key").read_text().strip()
        admin = {"Authorization": f"Bearer {admin_key}"}
        workspace = httpx.get(f"{url}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]
        body = {"name": "bench", "capabilities": ["inference"]}
        created = httpx.post(f"{url}/v1/admin/workspaces/{workspace}/keys", headers=admin, json=body)
        created.raise_for_status()
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        yield Server("tramontane", url, headers, args.name, lambda n: {"min_tokens": n})


@contextmanager
def llama_server(args, home: Path) -> Iterator[Server]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The context is split between the slots: each gets ctx / parallel tokens.
    command = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--parallel", str(args.concurrency), "--ctx-size", str(512 * args.concurrency)]
    command += ["--threads", str(args.threads), "--threads-batch", str(args.threads), "--no-webui"]
    with running(command, f"{url}/health", server_env(args), home / "llama-server.log"):
        yield Server("llama-server", url, {}, args.name, lambda n: {"ignore_eos": True})


async def stream_one(client: httpx.AsyncClient, server: Server, index: int, tokens: int) -> Stream:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": f"Request {index}. {PROMPT}"}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        **server.exact_tokens(tokens),
    }
    start = time.perf_counter()
    first = last = None
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=server.headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{server.name}: {response.status_code} {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line.removeprefix("data: ")).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
    if first is None:
        raise RuntimeError(f"{server.name}: a stream without content")
    decode = (chunks - 1) / (last - first) if chunks > 1 and last > first else None
    return Stream(first - start, decode, chunks)


async def batch(server: Server, concurrency: int, requests: int, tokens: int, first_index: int) -> dict:
    """`requests` streams, `concurrency` in flight at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> Stream:
            async with gate:
                return await stream_one(client, server, first_index + i, tokens)

        start = time.perf_counter()
        streams = await asyncio.gather(*(gated(i) for i in range(requests)))
        wall = time.perf_counter() - start
    decodes = [s.decode_tok_s for s in streams if s.decode_tok_s is not None]
    return {
        "throughput": sum(s.tokens for s in streams) / wall,
        "ttft_ms": statistics.median(s.ttft_s for s in streams) * 1000,
        "stream_decode": statistics.median(decodes) if decodes else float("nan"),
        "tokens_per_request": statistics.median(s.tokens for s in streams),
    }


def measure(server: Server, args, round_no: int) -> dict[int, dict]:
    asyncio.run(batch(server, 1, 2, 8, first_index=10**6 * (round_no + 1)))  # warm-up
    results = {}
    for concurrency, requests in ((1, args.sequential_requests), (args.concurrency, args.requests)):
        first_index = 10**6 * (round_no + 1) + 1000 * concurrency
        results[concurrency] = asyncio.run(batch(server, concurrency, requests, args.tokens, first_index))
    return results


def describe(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(results: dict[str, list[dict[int, dict]]], args) -> None:
    print(
        f"\nmedian [min-max] over rounds, each server in a fresh process per round, {args.threads} threads, "
        f"OMP_WAIT_POLICY={args.omp_wait_policy}, {args.tokens} tokens per request, "
        f"{args.sequential_requests} requests at concurrency 1, {args.requests} at {args.concurrency}"
    )
    widths = (24, 26, 24)
    titles = ("output tok/s", "TTFT ms", "per-stream tok/s")
    print(f"{'server':<14}{'conc.':>6}{'n':>3}" + "".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True)))
    for name, rounds in results.items():
        for concurrency in (1, args.concurrency):
            runs = [r[concurrency] for r in rounds]
            cells = [describe([r[k] for r in runs]) for k in ("throughput", "ttft_ms", "stream_decode")]
            row = "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
            print(f"{name:<14}{concurrency:>6}{len(runs):>3}" + row)
    ours, theirs = results.get("tramontane"), results.get("llama-server")
    if ours and theirs:
        for concurrency in (1, args.concurrency):
            a = statistics.median(r[concurrency]["throughput"] for r in ours)
            b = statistics.median(r[concurrency]["throughput"] for r in theirs)
            print(f"tramontane / llama-server output tok/s at concurrency {concurrency} (this run): {a / b:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True, help="path of the llama-server binary")
    parser.add_argument("--tramontane", default=shutil.which("tramontane") or "tramontane")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests at --concurrency")
    parser.add_argument("--sequential-requests", type=int, default=8, help="requests at concurrency 1")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"])
    parser.add_argument("--model", help="GGUF file (default: the bundled chat model)")
    parser.add_argument("--name", default="smollm2-135m-instruct", help="the model's name in requests")
    args = parser.parse_args()
    if args.model is None:
        from tramontane.engine.defaults import default_chat_model_path

        args.model = default_chat_model_path()

    servers = {"tramontane": tramontane, "llama-server": llama_server}
    results: dict[str, list[dict[int, dict]]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="tramontane-serving-") as tmp:
        for round_no in range(args.rounds):
            order = list(servers) if round_no % 2 == 0 else list(servers)[::-1]
            print(f"round {round_no + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
            for name in order:
                home = Path(tmp) / f"{name}-{round_no}"
                home.mkdir()
                with servers[name](args, home) as server:
                    results[name].append(measure(server, args, round_no))
    report(results, args)


if __name__ == "__main__":
    main()
