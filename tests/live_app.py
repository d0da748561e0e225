"""Serving an ASGI app for a test: uvicorn on a free loopback port, in a thread.

Importable from every test folder (pytest puts tests/ on sys.path for its
conftest.py); shared here because several folders start the whole platform.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def serve_in_thread(app, *, start_timeout_s: float = 60.0, stop_timeout_s: float = 60.0) -> Iterator[str]:
    """Runs `app` (its lifespan included) until the block ends; yields its base URL."""
    sock = socket.socket()
    # Accepted sockets inherit it: asyncio sets no TCP_NODELAY on the connections of a
    # socket handed to uvicorn, and a synchronous client would wait ~40 ms per request
    # on a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout_s)
        sock.close()
