"""The server-side secret mixed into every API key hash.

With a pepper, a stolen database alone cannot confirm a guessed key. Servers
sharing one database must share the pepper: set `TRAMONTANE_KEY_PEPPER` on each
(at least 32 characters). Without it, a random one is created once in the
Tramontane home directory, which suits a single host. Losing the pepper
invalidates every key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PEPPER_ENV = "TRAMONTANE_KEY_PEPPER"
PEPPER_FILE = "key-pepper"
_MIN_ENV_LENGTH = 32


def load_pepper(home: Path) -> bytes:
    configured = os.environ.get(PEPPER_ENV)
    if configured:
        if len(configured) < _MIN_ENV_LENGTH:
            raise ValueError(f"{PEPPER_ENV} must be at least {_MIN_ENV_LENGTH} characters")
        return configured.encode()
    path = home / PEPPER_FILE
    if not path.exists():
        _create(path)
    return path.read_bytes().strip()


def _create(path: Path) -> None:
    """Writes a new pepper atomically: two processes starting together must not
    end up with different peppers, so the loser of the race keeps the winner's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
