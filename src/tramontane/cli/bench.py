"""`tramontane bench`: concurrent streaming chat requests against a running server."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .chat import ApiKey, Url, client, first_chat_model
from .sse import DONE, parse_line

console = Console()


@dataclass
class Result:
    status: int | str  # HTTP status, or the connection error's name
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)  # between content chunks
    output_tokens: int = 0


def bench(
    url: Url = "http://127.0.0.1:8000",
    model: Annotated[str | None, typer.Option(help="Model name; default: the server's first chat model.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")] = 8,
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests in total.")] = 32,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of each request.")] = 64,
    prompt: Annotated[str, typer.Option(help="User message of each request.")] = "Tell me a story about the sea.",
    api_key: ApiKey = None,
) -> None:
    """Measure requests/s, output tokens/s, time to first token and inter-token latency."""
    with client(url, api_key, timeout=30) as http:
        model = model or first_chat_model(http)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    results = asyncio.run(_run(url, api_key, body, concurrency, requests))
    elapsed = time.perf_counter() - started
    console.print(report(results, elapsed, model, concurrency))


async def _run(url: str, api_key: str | None, body: dict, concurrency: int, total: int) -> list[Result]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=None, limits=limits) as http:

        async def one() -> Result:
            async with semaphore:
                return await _one(http, body)

        return await asyncio.gather(*(one() for _ in range(total)))


async def _one(http: httpx.AsyncClient, body: dict) -> Result:
    started = last = time.perf_counter()
    result = Result(status=0)
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            result.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                return result
            async for line in response.aiter_lines():
                event = parse_line(line)
                if event is DONE or not isinstance(event, dict):
                    continue
                if "error" in event:
                    result.status = "stream error"
                    return result
                if event.get("usage"):
                    result.output_tokens = event["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - started
                    else:
                        result.gaps.append(now - last)
                    last = now
    except httpx.HTTPError as exc:
        result.status = type(exc).__name__
    return result


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def report(results: list[Result], elapsed: float, model: str, concurrency: int) -> Table:
    ok = [r for r in results if r.status == 200]
    statuses = Counter(str(r.status) for r in results)
    tokens = sum(r.output_tokens for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    table = Table(title=f"{model}: {len(results)} streaming requests, {concurrency} at a time", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("responses", ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    table.add_row("duration", f"{elapsed:.2f} s")
    table.add_row("requests/s", f"{len(ok) / elapsed:.2f}")
    table.add_row("output tokens/s", f"{tokens / elapsed:.1f}")
    for name, values in (("TTFT", ttft), ("inter-token latency", gaps)):
        figures = " / ".join(f"{percentile(values, p) * 1000:.1f}" for p in (50, 90, 99))
        table.add_row(f"{name} p50 / p90 / p99 (n={len(values)})", f"{figures} ms")
    return table
