"""A QMP client over the socket pair a microVM's QEMU was started with.

QEMU runs with `-sandbox spawn=deny`, so it cannot start a helper to write its
state (`exec:` migration); the host hands it a descriptor instead, with `getfd`
and SCM_RIGHTS on this socket. Blocking: call it from a thread.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from ..errors import SandboxError

REPLY_TIMEOUT_S = 30.0
MAX_LINE_BYTES = 1 << 20
INCOMING_POLL_S = 0.01


class MonitorError(SandboxError):
    default_code = "microvm_monitor"


class Monitor:
    """One per QEMU, for its whole life: QEMU greets a connection once."""

    def __init__(self, sock: socket.socket, timeout: float = REPLY_TIMEOUT_S):
        self._sock = sock
        sock.settimeout(timeout)
        self._lines = sock.makefile("rb")
        self._negotiated = False

    def close(self) -> None:
        self._lines.close()
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        try:
            line = self._lines.readline(MAX_LINE_BYTES)
        except OSError as exc:
            raise MonitorError(f"QEMU's monitor did not answer: {exc}") from None
        if not line.endswith(b"\n"):
            raise MonitorError("QEMU's monitor closed (QEMU has exited)")
        return json.loads(line)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, fds: list[int] | None = None) -> Any:
        """The command's return value; its error raised. Events met on the way are skipped."""
        if not self._negotiated:
            self._negotiated = True
            greeting = self._read()
            if "QMP" not in greeting:
                raise MonitorError(f"not a QMP greeting: {str(greeting)[:200]}")
            self.execute("qmp_capabilities")
        message = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}).encode()
        try:
            if fds:
                socket.send_fds(self._sock, [message], fds)
            else:
                self._sock.sendall(message)
        except OSError as exc:
            raise MonitorError(f"QEMU's monitor is gone: {exc}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                raise MonitorError(f"QEMU refused {command}: {error.get('desc', error)}")
            return reply.get("return")


def run_after_incoming(monitor: Monitor, timeout: float) -> None:
    """Starts the CPUs of a VM once it has loaded its saved state: it was saved
    stopped, and QEMU keeps the state it was saved in. Blocking: call it from a thread."""
    deadline = time.monotonic() + timeout
    while (status := monitor.execute("query-status")["status"]) == "inmigrate":
        if time.monotonic() > deadline:
            raise MonitorError("the microVM did not load its saved state in time")
        time.sleep(INCOMING_POLL_S)
    if status != "running":
        monitor.execute("cont")
