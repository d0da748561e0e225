"""File watching in the sandbox, for `files.watch_dir`: inotify on a directory
(and, when recursive, on each directory below it, new ones included), reported
as "fs" events of the request that opened the watch, with paths relative to it.

A sandbox holds at most MAX_WATCHES watches and a recursive one at most
MAX_DIRS directories; past the kernel's queue, inotify says so and the watcher
reports one "overflow" event, as it does when the host cannot keep up.
"""

import ctypes
import os
import selectors
import stat
import struct

from .fileops import Failure, failure_from, resolve

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
IN_DONT_FOLLOW, IN_ONLYDIR = 0x2000000, 0x1000000
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
HEADER = struct.Struct("iIII")
MAX_WATCHES = 16
MAX_DIRS = 4096
# inotify's flag -> the event reported, in the order checked; a move is reported
# as the rename of the old name and the creation of the new one.
KINDS = ((IN_CREATE, "create"), (IN_MOVED_TO, "create"), (IN_MODIFY, "write"), (IN_DELETE, "remove"),
         (IN_MOVED_FROM, "rename"), (IN_ATTRIB, "chmod"))  # fmt: skip

LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result, path):
    if result < 0:
        code = ctypes.get_errno()
        raise failure_from(OSError(code, os.strerror(code), path))
    return result


class Watch:
    def __init__(self, watches, rid, root, recursive):
        self.watches, self.rid, self.root, self.recursive = watches, rid, root, recursive
        self.fd = _check(LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), root)
        self.dirs = {}  # watch descriptor -> directory path relative to root ("" for root)
        self.closed = False
        try:
            self.add("", IN_ONLYDIR)
            if recursive:
                for path, names, _ in os.walk(root):
                    if len(self.dirs) >= MAX_DIRS:
                        break
                    for name in names:
                        self.add(os.path.relpath(os.path.join(path, name), root))
        except BaseException:
            os.close(self.fd)
            raise
        watches.agent.sel.register(self.fd, selectors.EVENT_READ, self)

    def add(self, relative, flags=0):
        if len(self.dirs) >= MAX_DIRS:
            return
        path = os.path.join(self.root, relative) if relative else self.root
        wd = _check(LIBC.inotify_add_watch(self.fd, os.fsencode(path), MASK | IN_DONT_FOLLOW | flags), path)
        self.dirs[wd] = relative

    def on_ready(self, fd, mask):
        if self.closed or fd != self.fd:
            return
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + HEADER.size <= len(data):
            wd, flags, _cookie, length = HEADER.unpack_from(data, offset)
            name = data[offset + HEADER.size : offset + HEADER.size + length].rstrip(b"\0").decode(errors="replace")
            offset += HEADER.size + length
            self.handle(wd, flags, name)
            if self.closed:
                return

    def handle(self, wd, flags, name):
        if flags & IN_Q_OVERFLOW:
            self.emit("overflow", "")
            return
        base = self.dirs.get(wd)
        if base is None:
            return
        if flags & IN_IGNORED:
            del self.dirs[wd]
        if flags & (IN_DELETE_SELF | IN_MOVE_SELF) and base == "":
            self.close("the watched directory was removed or moved")
            return
        if not name:
            return
        relative = os.path.join(base, name) if base else name
        for flag, kind in KINDS:
            if flags & flag:
                self.emit(kind, relative, bool(flags & IN_ISDIR))
                break
        if self.recursive and flags & IN_ISDIR and flags & (IN_CREATE | IN_MOVED_TO):
            self.follow(relative)

    def follow(self, relative):
        """Watches a directory that appeared under the root, and reports what it
        already holds: entries made before its watch was in place would be missed."""
        if len(self.dirs) >= MAX_DIRS:
            return
        try:
            self.add(relative)
            entries = list(os.scandir(os.path.join(self.root, relative)))
        except (Failure, OSError):
            return  # gone again already
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            self.emit("create", os.path.join(relative, entry.name), is_dir)
            if is_dir:
                self.follow(os.path.join(relative, entry.name))

    def emit(self, kind, name, is_dir=False):
        self.watches.agent.send({"id": self.rid, "ev": "fs", "type": kind, "name": name, "is_dir": is_dir})

    def close(self, reason=None):
        if self.closed:
            return
        self.closed = True
        self.watches.agent.sel.unregister(self.fd)
        os.close(self.fd)
        self.watches.open_watches.pop(self.rid, None)
        self.watches.agent.send({"id": self.rid, "ev": "exit", "exit_code": 0, "error": reason})


class Watches:
    """The agent's "watch" and "unwatch" requests."""

    def __init__(self, agent):
        self.agent = agent
        self.open_watches = {}  # rid of the watch request -> Watch

    def ops(self):
        return {"watch": self.watch, "unwatch": self.unwatch}

    def watch(self, request):
        if len(self.open_watches) >= MAX_WATCHES:
            raise Failure("busy", f"at most {MAX_WATCHES} watches per sandbox at once")
        root = resolve(request.get("path"))
        try:
            mode = os.stat(root).st_mode
        except OSError as exc:
            raise failure_from(exc) from None
        if not stat.S_ISDIR(mode):
            raise Failure("invalid", f"not a directory: {root}")
        self.open_watches[request["id"]] = Watch(self, request["id"], root, bool(request.get("recursive")))
        self.agent.send({"id": request["id"], "ev": "start", "path": root})
        return None

    def unwatch(self, request):
        watch = self.open_watches.get(request.get("watch"))
        if watch is not None:
            watch.close()
        return {}
