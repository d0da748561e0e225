"""A deployment's replica logs: the last lines of its files, and those lines
followed as the replicas write more (what `GET .../logs?follow=true` streams).

Each replica writes one file, `<replica id>.log`; a line is shown prefixed with its
replica id. Following reads what the files gained since the last look, complete
lines only (a line still being written waits for its newline)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .clock import Clock

FOLLOW_POLL_S = 0.5
# A quiet follower still hears from the server this often (an empty batch), so that
# proxies with an idle timeout keep the stream open and the client knows it is alive.
KEEPALIVE_S = 15.0
MAX_READ_BYTES = 1 << 20  # per file and look: a replica writing faster is read over several looks


def _files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)


def tail(folder: Path, count: int) -> tuple[list[str], dict[Path, int]]:
    """The last `count` lines over every replica's file (oldest file first), and each
    file's size when read: where following starts."""
    lines: list[str] = []
    offsets: dict[Path, int] = {}
    for path in _files(folder):
        with path.open("rb") as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a partial last line is left for following
        offsets[path] = end
        text = data[:end].decode("utf-8", "replace")
        lines.extend(f"[{path.stem}] {line}" for line in deque(text.splitlines(), maxlen=count))
    return lines[-count:], offsets


def _new_lines(path: Path, offsets: dict[Path, int]) -> list[str]:
    start = offsets.get(path, 0)
    size = path.stat().st_size
    if size < start:  # truncated: a replica started over in the same file
        start = 0
    if size == start:
        return []
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(min(size - start, MAX_READ_BYTES))
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) < MAX_READ_BYTES:
        return []  # no complete line yet
    end = end or len(data)  # a line longer than a read is cut rather than held forever
    offsets[path] = start + end
    return [f"[{path.stem}] {line}" for line in data[:end].decode("utf-8", "replace").splitlines()]


async def follow(
    folder: Path,
    count: int,
    alive: Callable[[], bool],
    clock: Clock,
    poll_s: float = FOLLOW_POLL_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[list[str]]:
    """The last `count` lines, then each batch of new ones (an empty one after
    `keepalive_s` without any), until `alive()` is false (the deployment was
    deleted) or the consumer stops."""
    lines, offsets = tail(folder, count)
    yield lines
    last = clock.now()
    while alive():
        await clock.sleep(poll_s)
        fresh = [line for path in _files(folder) for line in _new_lines(path, offsets)]
        if fresh or clock.now() - last >= keepalive_s:
            last = clock.now()
            yield fresh

