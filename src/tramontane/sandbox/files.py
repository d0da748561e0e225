"""Files in a sandbox. Every operation runs inside it, through its agent, so paths
resolve (symlinks included) in the sandbox's own view of the filesystem.
Relative paths are relative to /home/user."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal

from .channel import ok_or_raise
from .errors import InvalidArgument, LimitReached, NotFound, SandboxError, TooLarge
from .process import ChannelUser

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_LIST_DEPTH = 16


@dataclass
class EntryInfo:
    name: str
    path: str
    type: Literal["file", "dir", "symlink"]
    size: int
    mode: int
    modified_at: float
    symlink_target: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> EntryInfo:
        if not isinstance(raw, dict) or raw.get("type") not in ("file", "dir", "symlink"):
            raise SandboxError("the sandbox sent a malformed file entry")
        target = raw.get("symlink_target")
        return cls(
            name=str(raw["name"]),
            path=str(raw["path"]),
            type=raw["type"],
            size=int(raw["size"]),
            mode=int(raw["mode"]),
            modified_at=float(raw["modified_at"]),
            symlink_target=None if target is None else str(target),
        )


def _decode_chunk(event: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(str(event["data"]), validate=True)
    except (KeyError, binascii.Error) as exc:
        raise SandboxError("the sandbox sent malformed file data") from exc


def _check_path(path: str, param: str = "path") -> str:
    if not path or "\0" in path or len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{param} must be 1 to {MAX_PATH_BYTES} bytes without NUL", param=param)
    return path


class Files:
    def __init__(self, sandbox: ChannelUser, max_file_bytes: int = MAX_FILE_BYTES):
        self._sandbox = sandbox
        self.max_file_bytes = max_file_bytes

    async def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        async with self._sandbox.use() as channel:
            return await channel.call(op, **fields)

    async def read(self, path: str) -> bytes:
        """A regular file's content (FIFOs, devices and sockets are refused). It
        arrives in chunks, each within the deadline of an operation."""
        data = bytearray()
        async with self._sandbox.use() as channel:
            rid, events = channel.open("read", path=_check_path(path), max_bytes=self.max_file_bytes)
            try:
                await channel.drain()
                while (event := ok_or_raise(await channel.next_event(events, "read"))).get("ev") == "chunk":
                    chunk = _decode_chunk(event)
                    if len(data) + len(chunk) > self.max_file_bytes:
                        raise TooLarge(f"file is larger than {self.max_file_bytes} bytes", param="path")
                    # Held here until returned: charged to the sandbox like its other output.
                    if not channel.budget.take(len(chunk)):
                        raise LimitReached(
                            "the server holds too much of this sandbox's output already; try again",
                            code="output_limit",
                        )
                    data += chunk
            finally:
                channel.forget(rid, events)
                channel.budget.give(len(data))
        return bytes(data)

    async def write(self, path: str, data: bytes | str) -> EntryInfo:
        """Creates or replaces a file, making its parent directories."""
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > self.max_file_bytes:
            raise TooLarge(f"file is larger than {self.max_file_bytes} bytes", param="data")
        reply = await self._call("write", path=_check_path(path), data=base64.b64encode(raw).decode())
        return EntryInfo.parse(reply.get("entry"))

    async def list(self, path: str = ".", depth: int = 1) -> list[EntryInfo]:
        if not 1 <= depth <= MAX_LIST_DEPTH:
            raise InvalidArgument(f"depth must be between 1 and {MAX_LIST_DEPTH}", param="depth")
        reply = await self._call("list", path=_check_path(path), depth=depth)
        return [EntryInfo.parse(e) for e in reply.get("entries", [])]

    async def get_info(self, path: str) -> EntryInfo:
        return EntryInfo.parse((await self._call("stat", path=_check_path(path))).get("entry"))

    async def exists(self, path: str) -> bool:
        try:
            await self.get_info(path)
        except NotFound:
            return False
        return True

    async def make_dir(self, path: str) -> bool:
        """Creates a directory and its parents; False if it already existed."""
        return bool((await self._call("mkdir", path=_check_path(path))).get("created"))

    async def rename(self, old_path: str, new_path: str) -> EntryInfo:
        reply = await self._call("rename", src=_check_path(old_path, "old_path"), dst=_check_path(new_path, "new_path"))
        return EntryInfo.parse(reply.get("entry"))

    async def remove(self, path: str) -> None:
        """Removes a file, or a directory with everything in it."""
        await self._call("remove", path=_check_path(path))
