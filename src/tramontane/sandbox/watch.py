"""File watching in a sandbox (`files.watch_dir`): inotify inside it, through its
agent; events stream as they happen, with paths relative to the watched directory.

Events past the sandbox's output budget (nobody reading) are dropped, as inotify
drops its own past its queue; either way the stream says "overflow" where it can.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from .channel import ok_or_raise
from .errors import SandboxError
from .files import _check_path
from .process import ChannelUser

EventType = Literal["start", "create", "write", "remove", "rename", "chmod", "overflow", "end"]
KINDS = frozenset({"create", "write", "remove", "rename", "chmod", "overflow"})


@dataclass
class WatchEvent:
    type: EventType
    name: str = ""  # relative to the watched directory; for "start", the directory itself
    is_dir: bool = False
    error: str | None = None  # for "end": why the watch ended (its directory went away)


class Watches:
    def __init__(self, sandbox: ChannelUser):
        self._sandbox = sandbox

    async def watch_dir(self, path: str, *, recursive: bool = False) -> AsyncGenerator[WatchEvent, None]:
        """Yields "start" once the watch is in place (NotFound if `path` does not
        exist, InvalidArgument if it is not a directory), then the events, until
        the caller stops iterating or the directory goes away ("end")."""
        _check_path(path)
        async with self._sandbox.use() as channel:
            rid, events = channel.open("watch", path=path, recursive=recursive)
            try:
                await channel.drain()
                event = await channel.next_event(events, "watch")
                while True:
                    kind = event.get("ev")
                    if kind == "error":
                        ok_or_raise(event)
                    elif kind == "start":
                        yield WatchEvent("start", name=str(event.get("path", path)))
                    elif kind == "exit":
                        error = event.get("error")
                        yield WatchEvent("end", error=None if error is None else str(error))
                        return
                    elif kind == "fs" and event.get("type") in KINDS:
                        name, is_dir = str(event.get("name", "")), bool(event.get("is_dir"))
                        yield WatchEvent(event["type"], name=name, is_dir=is_dir)
                    elif kind != "fs":
                        raise SandboxError(f"unexpected event {kind!r} on a watch")
                    event = await events.get()
            finally:
                channel.forget(rid, events)
                channel.notify("unwatch", watch=rid)
