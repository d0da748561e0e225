"""Health probes: a TCP connect, or an HTTP GET answered below 500."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from .spec import HealthCheck


async def probe(check: HealthCheck, host: str, port: int, client: httpx.AsyncClient) -> bool:
    try:
        if check.type == "tcp":
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands as the connection completes, and then a
            # stopping replica's supervisor would never end.
            async with asyncio.timeout(check.timeout_s):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        response = await client.get(f"http://{host}:{port}{check.path}", timeout=check.timeout_s)
        return response.status_code < 500
    except (OSError, TimeoutError, httpx.HTTPError):
        return False
