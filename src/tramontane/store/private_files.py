"""Files only the server's user may read, holding the server's own secrets: the
pepper of key hashes, the port links' signing secret, the encryption keys of
workspace secrets.

Each is created once, on first start. Two processes starting together must end
up with the same secret, so a new file is linked into place: the loser of the
race keeps the winner's.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_server_secret(path: Path, env: str, min_chars: int) -> bytes:
    """`$env` when set (servers sharing one database or one host name must share
    it: at least `min_chars` characters), else a random secret kept in `path`."""
    configured = os.environ.get(env)
    if configured:
        if len(configured) < min_chars:
            raise ValueError(f"{env} must be at least {min_chars} characters")
        return configured.encode()
    if not path.exists():
        create_once(path, secrets.token_hex(32))
    return path.read_bytes().strip()


def create_once(path: Path, content: str) -> None:
    """Writes `path`, mode 0600, unless it exists (then it is left as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temporary(path, content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def replace(path: Path, content: str) -> None:
    """Rewrites `path`, mode 0600, at once: a reader sees the old or the new file."""
    os.replace(_write_temporary(path, content), path)


def _write_temporary(path: Path, content: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return tmp
