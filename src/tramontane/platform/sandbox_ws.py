"""A WebSocket (a terminal, a sandbox port's) relayed to the sandbox's host,
frame by frame, with the subprotocol the host picked and its close code.

A host that refuses the upgrade (the sandbox is gone, the port closed) has its
HTTP answer relayed as the client's handshake answer."""

from __future__ import annotations

import anyio
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..errors import Unavailable

_OPEN_TIMEOUT_S = 5.0


async def relay_websocket(
    scope: Scope, receive: Receive, send: Send, url: str, headers: list[tuple[bytes, bytes]]
) -> None:
    offered = [p.strip() for _, v in _named(scope, b"sec-websocket-protocol") for p in v.split(",") if p.strip()]
    extra = [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if not k.lower().startswith(b"sec-websocket")
    ]
    try:
        upstream = await connect(
            "ws" + url.removeprefix("http"),
            additional_headers=extra,
            subprotocols=offered or None,  # type: ignore[arg-type]
            open_timeout=_OPEN_TIMEOUT_S,
            max_size=None,
            compression=None,
        )
    except InvalidStatus as exc:
        answer = exc.response
        relayed = [(k.lower().encode(), v.encode()) for k, v in answer.headers.raw_items()
                   if k.lower() in ("content-type", "retry-after")]  # fmt: skip
        await send({"type": "websocket.http.response.start", "status": answer.status_code, "headers": relayed})
        await send({"type": "websocket.http.response.body", "body": answer.body or b""})
        return
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Unavailable(
            "The sandbox's host is not answering; retry shortly", code="sandbox_host_unreachable", retry_after_s=1
        ) from exc
    async with upstream:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_to_host, receive, upstream, tasks.cancel_scope)
            tasks.start_soon(_to_client, upstream, send, tasks.cancel_scope)


async def _to_host(receive: Receive, upstream: ClientConnection, done: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(message.get("code", 1000))
            done.cancel()
            return
        if message["type"] != "websocket.receive":
            continue
        data = message.get("bytes")
        try:
            await upstream.send(data if data is not None else message.get("text", ""))
        except ConnectionClosed:
            return  # the other direction relays the close


async def _to_client(upstream: ClientConnection, send: Send, done: anyio.CancelScope) -> None:
    try:
        async for data in upstream:
            key = "bytes" if isinstance(data, bytes) else "text"
            await send({"type": "websocket.send", key: data})
    except ConnectionClosed:
        pass
    # 1005 (no code given) reads as a normal close; 1006 (dropped) as the host failing.
    code = {None: 1000, 1005: 1000, 1006: 1011}.get(upstream.close_code, upstream.close_code)
    try:
        await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})
    finally:
        done.cancel()


def _named(scope: Scope, name: bytes) -> list[tuple[bytes, str]]:
    return [(k, v.decode("latin-1")) for k, v in scope.get("headers", []) if k.lower() == name]
