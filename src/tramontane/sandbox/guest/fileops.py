"""File operations the agent performs inside the sandbox, as the sandbox user.

Relative paths are relative to /home/user. Each operation takes the request
object and returns the reply's fields; errors are `Failure`s whose kind the host
maps to a domain error.

Sandboxed code controls every path, so no operation may block the agent (which
serves all requests from one thread): files are opened non-blocking and anything
that is not a regular file (a FIFO, a device, a socket) is refused before a byte
moves. Every reply fits in MAX_REPLY_BYTES: file contents go out in chunks
(`send` is the agent's), listings are capped.
"""

import binascii
import errno
import os
import stat

HOME = "/home/user"
READ_CHUNK = 768 * 1024  # raw bytes per "chunk" event: about 1 MiB once in base64
MAX_REPLY_BYTES = 2 * 1024 * 1024  # the host refuses longer lines (channel.MAX_LINE_BYTES)
OPEN_FLAGS = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

_ERRNO_KINDS = {
    "ENOENT": "not_found",
    "ENOTDIR": "invalid",
    "EISDIR": "invalid",
    "EEXIST": "exists",
    "ENOTEMPTY": "invalid",
    "EACCES": "permission",
    "EPERM": "permission",
    "EROFS": "permission",
    "ENOSPC": "no_space",
    "EDQUOT": "no_space",
    "EFBIG": "no_space",
    "ENAMETOOLONG": "invalid",
    "ELOOP": "invalid",
    "EXDEV": "cross_device",
    "ENXIO": "not_regular",
    "EAGAIN": "busy",
    "ENOMEM": "memory_exhausted",
    "EMFILE": "nofile_exhausted",
    "ENFILE": "nofile_exhausted",
}


class Failure(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def errno_name(code):
    return errno.errorcode.get(code or 0, "")


def kind_of(name):
    return _ERRNO_KINDS.get(name, "invalid")


def failure_from(exc):
    kind = _ERRNO_KINDS.get(errno_name(exc.errno), "io")
    return Failure(kind, f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror))


def resolve(path):
    if not path or "\0" in path:
        raise Failure("invalid", "empty path or NUL byte in path")
    return os.path.normpath(os.path.join(HOME, path))


def entry(path):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    else:
        kind = "file"
    info = {
        "name": os.path.basename(path),
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "modified_at": st.st_mtime,
    }
    if kind == "symlink":
        info["symlink_target"] = os.readlink(path)
    return info


def open_regular(path, flags):
    """An fd of the regular file at `path`; never blocks, whatever is there."""
    fd = os.open(path, flags | OPEN_FLAGS, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise Failure("invalid", f"{path} is a directory")
        if not stat.S_ISREG(mode):
            raise Failure("not_regular", f"{path} is not a regular file (a FIFO, device or socket)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(request, send):
    path, limit = resolve(request["path"]), request["max_bytes"]
    fd = open_regular(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise Failure("too_large", f"{path} is {size} bytes, more than {limit}")
        sent = 0
        # /proc-like files report size 0 yet have content: read to the end, within the limit.
        while data := os.read(fd, min(READ_CHUNK, limit + 1 - sent)):
            sent += len(data)
            if sent > limit:
                raise Failure("too_large", f"{path} is larger than {limit} bytes")
            send({"id": request["id"], "ev": "chunk", "data": binascii.b2a_base64(data, newline=False).decode()})
    finally:
        os.close(fd)
    return {"size": sent}


def write(request):
    path = resolve(request["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = binascii.a2b_base64(request["data"])
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return {"entry": entry(path)}


def list_dir(request):
    root = resolve(request["path"])
    depth = int(request.get("depth", 1))
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise Failure("invalid", f"{root} is not a directory")
    entries, size = [], 0
    pending = [(root, 1)]
    while pending:
        directory, level = pending.pop()
        with os.scandir(directory) as it:
            for item in it:
                info = entry(item.path)
                size += 160 + 2 * (len(info["path"]) + len(info.get("symlink_target", "")))
                if size > MAX_REPLY_BYTES // 2:
                    raise Failure("too_large", f"listing {root} to depth {depth} is too long; list less at once")
                entries.append(info)
                if info["type"] == "dir" and level < depth:
                    pending.append((item.path, level + 1))
    entries.sort(key=lambda e: e["path"])
    return {"entries": entries}


def stat_path(request):
    return {"entry": entry(resolve(request["path"]))}


def mkdir(request):
    path = resolve(request["path"])
    created = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    return {"created": created}


def rename(request):
    src, dst = resolve(request["src"]), resolve(request["dst"])
    os.rename(src, dst)
    return {"entry": entry(dst)}


def remove(request):
    path = resolve(request["path"])
    if os.path.isdir(path) and not os.path.islink(path):
        # Bottom-up without following links: a symlinked directory is unlinked, not emptied.
        for top, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(top, name))
            for name in dirs:
                full = os.path.join(top, name)
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    os.rmdir(full)
        os.rmdir(path)
    else:
        os.unlink(path)
    return {}


# Operations answered by one reply; "read" streams, see the agent.
OPS = {
    "write": write,
    "list": list_dir,
    "stat": stat_path,
    "mkdir": mkdir,
    "rename": rename,
    "remove": remove,
}
