"""File operations the agent performs inside the sandbox, as the sandbox user.

Relative paths are relative to /home/user. Each operation takes the request
object and returns the reply's fields; errors are `Failure`s whose kind the host
maps to an HTTP status.
"""

import binascii
import errno
import os
import stat

HOME = "/home/user"

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


def read(request):
    path, limit = resolve(request["path"]), request["max_bytes"]
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise Failure("invalid", f"{path} is a directory")
        if st.st_size > limit:
            raise Failure("too_large", f"{path} is {st.st_size} bytes, more than {limit}")
        data = f.read(limit + 1)  # /proc-like files report size 0 yet have content
    if len(data) > limit:
        raise Failure("too_large", f"{path} is larger than {limit} bytes")
    return {"data": binascii.b2a_base64(data, newline=False).decode()}


def write(request):
    path = resolve(request["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = binascii.a2b_base64(request["data"])
    with open(path, "wb") as f:
        f.write(data)
    return {"entry": entry(path)}


def list_dir(request):
    root = resolve(request["path"])
    depth = int(request.get("depth", 1))
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise Failure("invalid", f"{root} is not a directory")
    entries = []
    pending = [(root, 1)]
    while pending:
        directory, level = pending.pop()
        with os.scandir(directory) as it:
            for item in it:
                info = entry(item.path)
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


OPS = {
    "read": read,
    "write": write,
    "list": list_dir,
    "stat": stat_path,
    "mkdir": mkdir,
    "rename": rename,
    "remove": remove,
}
