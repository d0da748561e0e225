"""A follower that becomes the leader while a request waits for one serves that
request itself, whole: the app behind it still hears of the client's
disconnect only when the client really goes away."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from tramontane.control.forwarding import FollowerForwarding

CHUNKS = [b"one ", b"two ", b"three"]


class Seat:
    """The part of a `ControlSeat` the forwarding reads: no leader yet (a takeover)."""

    def __init__(self) -> None:
        self.leading = False
        self.leader = None
        self.changed = asyncio.Event()
        self.poll_s = 0.05
        self.plane = None

    def take_over(self) -> None:
        self.leading = True
        self.changed.set()
        self.changed = asyncio.Event()


async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Relays a response in chunks and stops at the client's disconnect, as the
    deployments' router does."""
    message = await receive()
    assert message["type"] == "http.request" and message["body"] == b"payload"
    relay = asyncio.current_task()
    assert relay is not None

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        relay.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for chunk in CHUNKS:
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except asyncio.CancelledError:
        return  # the client left: the response ends here
    finally:
        watcher.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_a_request_waiting_through_a_takeover_is_served_whole_by_the_new_leader() -> None:
    seat = Seat()
    async with httpx.AsyncClient() as forwarding_client:
        app = FollowerForwarding(streaming_app, seat, ("/serve",), client=forwarding_client, wait_s=5.0)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            request = asyncio.create_task(client.post("/serve/echo/anything", content=b"payload"))
            await asyncio.sleep(0.2)  # waiting for a leader
            assert not request.done()
            seat.take_over()
            response = await asyncio.wait_for(request, 5)
    assert response.status_code == 200
    assert response.content == b"".join(CHUNKS)
