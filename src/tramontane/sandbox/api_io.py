"""Routes for a sandbox's interactive surfaces, under /v1/sandboxes/{id}: terminals
(`/pty`, and `/pty/ws` as a WebSocket), exposed ports (`/ports/{port}/...`) and
file watches (`/files/watch`). Bound, authenticated and scoped to the caller's
workspace by `api.create_router`, like the rest of the API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketState

from ..errors import TramontaneError, as_api_error
from .api import Manager, Owner, _as_dicts, _read_body, _SandboxRoute, _stream
from .errors import InvalidArgument
from .host_routing import HOST_ROUTED
from .ports import forwarded_headers
from .ports_ws import proxy_websocket
from .sandbox import ManagedSandbox
from .schemas import TerminalBody, TerminalSizeBody
from .terminal import MAX_INPUT_BYTES

io_router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"], route_class=_SandboxRoute)

Port = Annotated[int, Path(ge=1, le=65535)]
PROXIED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
MAX_CONTROL_FRAME_BYTES = MAX_INPUT_BYTES * 2


# -- terminals


@io_router.post("/{sandbox_id}/pty", response_model=None)
async def open_terminal(
    sandbox_id: str, body: TerminalBody, request: Request, who: Owner, manager: Manager
) -> Response:
    """A shell on a new terminal: its pid ("start"), its output ("stdout") and
    "exit", streamed as NDJSON or server-sent events. Closing the stream kills it."""
    terminals = manager.get(sandbox_id, who).pty
    events = terminals.stream(rows=body.rows, cols=body.cols, cwd=body.cwd, envs=body.envs, timeout=body.timeout)
    return await _stream(request, _as_dicts(events))


@io_router.post("/{sandbox_id}/pty/{pid}/input", status_code=204)
async def terminal_input(sandbox_id: str, pid: int, request: Request, who: Owner, manager: Manager) -> Response:
    """The request's body, as typed on the terminal."""
    terminals = manager.get(sandbox_id, who).pty
    await terminals.send_input(pid, await _read_body(request, MAX_INPUT_BYTES))
    return Response(status_code=204)


@io_router.post("/{sandbox_id}/pty/{pid}/resize", status_code=204)
async def terminal_resize(sandbox_id: str, pid: int, body: TerminalSizeBody, who: Owner, manager: Manager) -> Response:
    await manager.get(sandbox_id, who).pty.resize(pid, body.rows, body.cols)
    return Response(status_code=204)


@io_router.websocket("/{sandbox_id}/pty/ws")
async def terminal_socket(
    websocket: WebSocket,
    sandbox_id: str,
    who: Owner,
    manager: Manager,
    rows: Annotated[int, Query(ge=1, le=1000)] = 24,
    cols: Annotated[int, Query(ge=1, le=1000)] = 80,
    cwd: str | None = None,
) -> None:
    """A terminal over one WebSocket. Server to client: a text frame
    {"type": "start", "pid": n}, the terminal's output as binary frames, then
    {"type": "exit", "exit_code": n} and a normal close. Client to server: binary
    frames are typed as they are; text frames are JSON, {"type": "input", "data": s}
    or {"type": "resize", "rows": r, "cols": c}. Closing the socket kills the shell."""
    try:
        sandbox = manager.get(sandbox_id, who)
        events = sandbox.pty.stream(rows=rows, cols=cols, cwd=cwd)
        first = await anext(events)
    except TramontaneError as exc:
        await websocket.send_denial_response(as_api_error(exc).response())
        return
    await websocket.accept()
    assert first.pid is not None
    await websocket.send_text(json.dumps({"type": "start", "pid": first.pid}))
    output = asyncio.create_task(_terminal_output(websocket, events))
    try:
        await _terminal_input(websocket, sandbox, first.pid, output)
    finally:
        output.cancel()
        with suppress(asyncio.CancelledError):
            await output
        await events.aclose()  # kills the shell if it still runs
    if websocket.application_state is not WebSocketState.DISCONNECTED:
        with suppress(RuntimeError, WebSocketDisconnect):  # the client may be gone already
            await websocket.close()


async def _terminal_output(websocket: WebSocket, events: AsyncIterator[Any]) -> None:
    try:
        async for event in events:
            if event.type == "stdout":
                await websocket.send_bytes(event.data.encode())
            elif event.type == "exit":
                await websocket.send_text(json.dumps({"type": "exit", "exit_code": event.exit_code}))
                await websocket.close()
                return
    except TramontaneError as exc:
        with suppress(RuntimeError, WebSocketDisconnect):
            await websocket.send_text(json.dumps({"type": "error", **as_api_error(exc).body()}))
            await websocket.close(code=1011)
    except (WebSocketDisconnect, RuntimeError):
        return  # the client left


async def _terminal_input(websocket: WebSocket, sandbox: ManagedSandbox, pid: int, output: asyncio.Task[None]) -> None:
    receiving = None
    while not output.done():
        receiving = asyncio.ensure_future(websocket.receive())
        await asyncio.wait({receiving, output}, return_when=asyncio.FIRST_COMPLETED)
        if not receiving.done():
            break
        message = receiving.result()
        receiving = None
        if message["type"] == "websocket.disconnect":
            return
        try:
            await _terminal_message(sandbox, pid, message)
        except TramontaneError as exc:
            # A bad frame is answered and the terminal goes on.
            with suppress(RuntimeError, WebSocketDisconnect):
                await websocket.send_text(json.dumps({"type": "error", **as_api_error(exc).body()}))
    if receiving is not None:
        receiving.cancel()


async def _terminal_message(sandbox: ManagedSandbox, pid: int, message: dict[str, Any]) -> None:
    if message.get("bytes") is not None:
        await sandbox.pty.send_input(pid, message["bytes"])
        return
    text = message.get("text") or ""
    if len(text) > MAX_CONTROL_FRAME_BYTES:
        raise InvalidArgument(f"a text frame is at most {MAX_CONTROL_FRAME_BYTES} bytes", param="frame")
    try:
        control = json.loads(text)
        kind = control["type"]
        if kind == "input":
            await sandbox.pty.send_input(pid, str(control["data"]))
        elif kind == "resize":
            await sandbox.pty.resize(pid, int(control["rows"]), int(control["cols"]))
        else:
            raise InvalidArgument(f"unknown frame type {kind!r}", param="type")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"a text frame is JSON with a type, input or resize: {exc}", param="frame") from exc


# -- exposed ports


async def _proxy(sandbox_id: str, port: int, path: str, request: Request, who: Owner, manager: Manager) -> Response:
    sandbox = manager.get(sandbox_id, who)
    # Reached as {port}-{id}.{domain}, the server is at the root of its own name.
    prefix = "" if request.scope.get(HOST_ROUTED) else f"/v1/sandboxes/{sandbox_id}/ports/{port}"
    target = "/" + path + (f"?{request.url.query}" if request.url.query else "")
    headers = forwarded_headers(request.headers.items(), port, prefix)
    response = await sandbox.ports.request(port, request.method, target, headers, request.stream())
    proxied = StreamingResponse(response.body, status_code=response.status)
    proxied.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    return proxied


async def port_root(sandbox_id: str, port: Port, request: Request, who: Owner, manager: Manager) -> Response:
    """`/` of the HTTP server listening on `port` inside the sandbox (502 if none)."""
    return await _proxy(sandbox_id, port, "", request, who, manager)


async def port_path(sandbox_id: str, port: Port, path: str, request: Request, who: Owner, manager: Manager) -> Response:
    """`/{path}` of the HTTP server listening on `port` inside the sandbox (502 if none).
    The caller's Authorization and cookies are not forwarded."""
    return await _proxy(sandbox_id, port, path, request, who, manager)


# One route per method, each with its own operation id in the OpenAPI document.
for _method in PROXIED_METHODS:
    for _path, _endpoint in (
        ("/{sandbox_id}/ports/{port}", port_root),
        ("/{sandbox_id}/ports/{port}/{path:path}", port_path),
    ):
        _name = f"{_endpoint.__name__}_{_method.lower()}"
        io_router.add_api_route(
            _path, _endpoint, methods=[_method], response_model=None, name=_name, operation_id=_name
        )


async def port_socket(
    websocket: WebSocket, sandbox_id: str, port: Port, who: Owner, manager: Manager, path: str = ""
) -> None:
    """A WebSocket to `/{path}` of the server listening on `port` in the sandbox,
    accepted once that server accepted it (else the HTTP error, e.g. 502)."""
    query = websocket.url.query
    target = "/" + path + (f"?{query}" if query else "")
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        sandbox = manager.get(sandbox_id, who)
        await proxy_websocket(websocket, sandbox, port, target, offered)
    except TramontaneError as exc:
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.send_denial_response(as_api_error(exc).response())


io_router.add_api_websocket_route("/{sandbox_id}/ports/{port}", port_socket)
io_router.add_api_websocket_route("/{sandbox_id}/ports/{port}/{path:path}", port_socket)


# -- file watching


@io_router.get("/{sandbox_id}/files/watch", response_model=None)
async def watch_dir(
    sandbox_id: str, path: str, request: Request, who: Owner, manager: Manager, recursive: bool = False
) -> Response:
    """Events under directory `path` as they happen: "start", then "create", "write",
    "remove", "rename", "chmod" (with `name`, relative to `path`) or "overflow",
    as NDJSON or server-sent events, until the client closes the stream."""
    watches = manager.get(sandbox_id, who).watches

    async def events() -> AsyncIterator[dict[str, Any]]:
        async with aclosing(watches.watch_dir(path, recursive=recursive)) as stream:
            async for event in stream:
                yield {k: v for k, v in dataclasses.asdict(event).items() if v is not None}

    return await _stream(request, events())
