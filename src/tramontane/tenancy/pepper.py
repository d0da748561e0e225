"""The server-side secret mixed into every API key hash.

With a pepper, a stolen database alone cannot confirm a guessed key. Servers
sharing one database must share the pepper: set `TRAMONTANE_KEY_PEPPER` on each
(at least 32 characters). Without it, a random one is created once in the
Tramontane home directory, which suits a single host. Losing the pepper
invalidates every key.
"""

from __future__ import annotations

from pathlib import Path

from ..store.private_files import load_server_secret

PEPPER_ENV = "TRAMONTANE_KEY_PEPPER"
PEPPER_FILE = "key-pepper"
_MIN_ENV_LENGTH = 32


def load_pepper(home: Path) -> bytes:
    return load_server_secret(home / PEPPER_FILE, PEPPER_ENV, _MIN_ENV_LENGTH)
