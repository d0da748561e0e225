"""Secrets given to a replica as files, on the node that runs it: a private
directory per replica (0700; each file 0400, owned by the server's user), on a
memory-backed file system where there is one so that values never reach a disk,
removed when the replica stops. Each start of a replica gets a directory of its
own (a restart's must not be removed by its predecessor's cleanup), named after
the replica id, so that a control plane reaping what a killed predecessor left
can remove it too."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

# Where a replica finds its secret files (a process on the host; in a container,
# CONTAINER_DIR).
SECRETS_DIR_ENV = "TRAMONTANE_SECRETS_DIR"
CONTAINER_DIR = "/run/secrets"


def base_dir() -> Path:
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    return root / f"tramontane-secrets-{os.getuid()}"


def relative(path: str) -> PurePosixPath:
    """Where the file of spec path `path` lies in the replica's directory."""
    return PurePosixPath(path.lstrip("/"))


def write(replica_id: str, files: Mapping[str, str]) -> Path:
    """Writes `files` (spec path -> content) into a fresh directory of the replica."""
    if not replica_id or "/" in replica_id or replica_id.startswith("."):
        raise ValueError(f"{replica_id!r} is not a replica id")
    directory = _own_base() / f"{replica_id}.{secrets.token_hex(8)}"
    directory.mkdir(mode=0o700)
    try:
        for path, content in files.items():
            target = directory / relative(path)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            with os.fdopen(fd, "wb") as file:
                file.write(content.encode())
    except BaseException:
        remove_dir(directory)
        raise
    return directory


def remove_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def directories_of(replica_id: str) -> list[Path]:
    if not replica_id or "/" in replica_id or replica_id.startswith("."):
        return []
    return list(base_dir().glob(f"{replica_id}.*"))


def remove(replica_id: str) -> None:
    """Every directory of the replica (one killed with its control plane)."""
    for directory in directories_of(replica_id):
        remove_dir(directory)


def _own_base() -> Path:
    """The base directory, created 0700; refused when someone else made it first
    (it may sit in a world-writable /dev/shm or /tmp)."""
    base = base_dir()
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise OSError(f"{base} is not a private directory of this user; remove it")
    return base


def replica_of(pid: int) -> str | None:
    """The replica id a process was started with (its environment), if any."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"TRAMONTANE_REPLICA_ID="):
            return entry.split(b"=", 1)[1].decode(errors="replace")
    return None
