"""The SDK's interactive parts, shaped like E2B's: `sbx.pty` (terminals),
`sbx.files.watch_dir()` and `sbx.get_host(port)`."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

if TYPE_CHECKING:
    from .client import Sandbox


class PtySize(NamedTuple):
    rows: int
    cols: int


@dataclass
class FilesystemEvent:
    name: str  # relative to the watched directory
    type: str  # create, write, remove, rename, chmod, overflow
    is_dir: bool = False


def _lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    from .client import _raise_for_event

    for line in response.iter_lines():
        if line:
            event = json.loads(line)
            if event.get("type") == "error":
                _raise_for_event(event)
            yield event


class PtyHandle:
    """A shell on a terminal in the sandbox; iterate it (or `wait()`) for its output."""

    def __init__(self, pty: Pty, response: httpx.Response, pid: int, events: Iterator[dict[str, Any]]):
        self._pty, self._response, self.pid, self._events = pty, response, pid, events
        self.exit_code: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for event in self._events:
                if event["type"] == "stdout":
                    yield event["data"].encode()
                elif event["type"] == "exit":
                    self.exit_code = int(event["exit_code"])
                    return
        finally:
            self._response.close()

    def wait(self, on_pty: Callable[[bytes], Any] | None = None) -> int | None:
        """Reads the output until the shell exits; its exit code."""
        for data in self:
            if on_pty is not None:
                on_pty(data)
        return self.exit_code

    def send_stdin(self, data: bytes | str) -> None:
        self._pty.send_stdin(self.pid, data)

    def resize(self, size: PtySize) -> None:
        self._pty.resize(self.pid, size)

    def kill(self) -> bool:
        return self._pty.kill(self.pid)

    def disconnect(self) -> None:
        """Stops reading; closing the stream also ends the shell."""
        self._response.close()


class Pty:
    def __init__(self, sandbox: Sandbox):
        self._sandbox = sandbox

    def create(
        self,
        size: PtySize = PtySize(24, 80),
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PtyHandle:
        """Starts a login shell on a new terminal of `size`."""
        from .client import SandboxException, _raise_for

        body = {"rows": size.rows, "cols": size.cols, "cwd": cwd, "envs": envs or {}, "timeout": timeout}
        request = self._sandbox._http.build_request("POST", self._sandbox._path("pty"), json=body)
        response = self._sandbox._http.send(request, stream=True)
        try:
            _raise_for(response)
            events = _lines(response)
            start = next(events, None)
            if start is None or start.get("type") != "start":
                raise SandboxException("the terminal did not start")
        except BaseException:
            response.close()
            raise
        return PtyHandle(self, response, int(start["pid"]), events)

    def send_stdin(self, pid: int, data: bytes | str) -> None:
        content = data.encode() if isinstance(data, str) else data
        self._sandbox._call("POST", f"pty/{pid}/input", content=content)

    def resize(self, pid: int, size: PtySize) -> None:
        self._sandbox._call("POST", f"pty/{pid}/resize", json={"rows": size.rows, "cols": size.cols})

    def kill(self, pid: int) -> bool:
        return self._sandbox.commands.kill(pid)


class WatchHandle:
    """Events of one watched directory, read in a background thread: poll them
    with `get_new_events()`, or have `on_event` called with each; `stop()` ends it."""

    def __init__(self, response: httpx.Response, events: Iterator[dict[str, Any]],
                 on_event: Callable[[FilesystemEvent], Any] | None):  # fmt: skip
        self._response = response
        self._events = events
        self._on_event = on_event
        self._queue: queue.SimpleQueue[FilesystemEvent] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._events:
                if raw["type"] == "end":
                    return
                event = FilesystemEvent(str(raw.get("name", "")), str(raw["type"]), bool(raw.get("is_dir")))
                if self._on_event is not None:
                    self._on_event(event)
                else:
                    self._queue.put(event)
        except (httpx.HTTPError, ValueError):
            return  # stopped, or the connection went away

    def get_new_events(self) -> list[FilesystemEvent]:
        events = []
        while not self._queue.empty():
            events.append(self._queue.get())
        return events

    def stop(self) -> None:
        self._response.close()
        self._thread.join(5)


def watch_dir(
    sandbox: Sandbox, path: str, on_event: Callable[[FilesystemEvent], Any] | None, recursive: bool
) -> WatchHandle:
    from .client import SandboxException, _raise_for

    params = {"path": path, "recursive": recursive}
    request = sandbox._http.build_request("GET", sandbox._path("files/watch"), params=params)
    response = sandbox._http.send(request, stream=True)
    try:
        _raise_for(response)
        events = _lines(response)
        start = next(events, None)
        if start is None or start.get("type") != "start":
            raise SandboxException("the watch did not start")
    except BaseException:
        response.close()
        raise
    return WatchHandle(response, events, on_event)
