"""WebSockets through an exposed port: the platform accepts the client's socket
only once the server inside the sandbox has accepted its own handshake (made over
the same agent-relayed connection as plain HTTP, see `ports`), then relays
messages both ways until either side closes. `websockets`' sans-I/O client
protocol speaks to the server inside; pings from it are answered there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import suppress

import httpcore
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..errors import TramontaneError
from .errors import UpstreamFailed
from .ports import CONNECT_TIMEOUT_S, PortStream, check_port
from .process import ChannelUser

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
READ_BYTES = 64 * 1024
# Close codes a peer may not send in a close frame (RFC 6455 7.4.1): they stand
# for "none given" and "dropped"; the client is told a normal close instead.
RESERVED_CLOSE_CODES = {CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE}


class PortSocket:
    """The platform's client end of a WebSocket to a server in the sandbox."""

    def __init__(self, sandbox: ChannelUser, port: int, target: str, subprotocols: list[str]):
        self._stream = PortStream(sandbox, check_port(port))
        self._port = port
        offered = [Subprotocol(p) for p in subprotocols] or None
        self.protocol = ClientProtocol(
            parse_uri(f"ws://localhost:{port}{target}"), subprotocols=offered, max_size=MAX_MESSAGE_BYTES
        )
        # Frames that came in the same read as the handshake's response.
        self._early: list[Frame] = []
        self._message: list[bytes] = []
        self._opcode = Opcode.TEXT

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self._stream.write(data)

    async def open(self) -> str | None:
        """Connects and completes the handshake; the subprotocol the server chose."""
        await self._stream.open(CONNECT_TIMEOUT_S)
        try:
            self.protocol.send_request(self.protocol.connect())
            await self._flush()
            while True:
                data = await self._stream.read(READ_BYTES, CONNECT_TIMEOUT_S)
                if data:
                    self.protocol.receive_data(data)
                else:
                    self.protocol.receive_eof()
                events = self.protocol.events_received()
                for index, event in enumerate(events):
                    if isinstance(event, Response):
                        if self.protocol.handshake_exc is not None:
                            raise self.protocol.handshake_exc
                        self._early = [e for e in events[index + 1 :] if isinstance(e, Frame)]
                        return self.protocol.subprotocol
                if not data:
                    raise UpstreamFailed(f"the server on port {self._port} closed before its WebSocket handshake")
        except httpcore.ReadTimeout as exc:
            await self.close()
            raise UpstreamFailed(
                f"the server on port {self._port} did not answer the WebSocket handshake in {CONNECT_TIMEOUT_S:g} s",
                code="port_bad_response",
            ) from exc
        except (InvalidHandshake, ProtocolError) as exc:
            await self.close()
            raise UpstreamFailed(
                f"the server on port {self._port} refused the WebSocket: {exc}", code="port_bad_response"
            ) from exc
        except BaseException:
            await self.close()
            raise

    async def relay(self, client: WebSocket) -> int:
        """Messages both ways until one side closes (or fails); the close code
        for the client."""
        tasks = {asyncio.create_task(self._from_client(client)), asyncio.create_task(self._to_client(client))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed = any(t.exception() is not None and not isinstance(t.exception(), WebSocketDisconnect) for t in done)
        if failed:
            return CloseCode.INTERNAL_ERROR
        received = self.protocol.close_rcvd
        if received is None or received.code in RESERVED_CLOSE_CODES:
            return CloseCode.NORMAL_CLOSURE
        return received.code

    async def _from_client(self, client: WebSocket) -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", CloseCode.NORMAL_CLOSURE)
                if code in RESERVED_CLOSE_CODES:
                    self.protocol.send_close()
                else:
                    self.protocol.send_close(code, message.get("reason") or "")
                await self._flush()
                return
            if message.get("bytes") is not None:
                self.protocol.send_binary(message["bytes"])
            else:
                self.protocol.send_text((message.get("text") or "").encode())
            await self._flush()

    async def _to_client(self, client: WebSocket) -> None:
        if not await self._deliver(client, self._early):
            return
        while True:
            try:
                data = await self._stream.read(READ_BYTES)
            except httpcore.ReadTimeout:
                continue  # a quiet socket is a normal one
            if not data:
                return
            self.protocol.receive_data(data)
            if not await self._deliver(client, self.protocol.events_received()):
                return
            await self._flush()  # pongs

    async def _deliver(self, client: WebSocket, frames: Iterable[object]) -> bool:
        """Sends the client each message these frames complete; False once the
        server closed (the protocol's answer to its close is sent)."""
        for frame in frames:
            if not isinstance(frame, Frame):
                continue
            if frame.opcode is Opcode.CLOSE:
                with suppress(TramontaneError):  # the server may have hung up right after its close
                    await self._flush()
                return False
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._opcode, self._message = frame.opcode, []
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._message.append(bytes(frame.data))
                if frame.fin:
                    message, self._message = b"".join(self._message), []
                    if self._opcode is Opcode.TEXT:
                        await client.send_text(message.decode())
                    else:
                        await client.send_bytes(message)
        return True

    async def close(self) -> None:
        await self._stream.aclose()


async def proxy_websocket(
    client: WebSocket, sandbox: ChannelUser, port: int, target: str, subprotocols: list[str]
) -> None:
    """Errors before the handshake are raised (the caller answers them as HTTP)."""
    socket = PortSocket(sandbox, port, target, subprotocols)
    chosen = await socket.open()
    code = CloseCode.NORMAL_CLOSURE
    try:
        await client.accept(subprotocol=chosen)
        code = await socket.relay(client)
    except WebSocketDisconnect:
        pass
    finally:
        await socket.close()
        with suppress(RuntimeError, WebSocketDisconnect):  # the client may be gone already
            await client.close(code=code)
