"""What an API key may do."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Capability(StrEnum):
    INFERENCE = "inference"
    DEPLOY = "deploy"
    SANDBOX = "sandbox"
    FINE_TUNE = "fine-tune"
    # Administers the key's organisation; on the platform organisation, every one.
    ADMIN = "admin"


ALL_CAPABILITIES = frozenset(Capability)


def parse_capabilities(names: Iterable[str]) -> frozenset[Capability]:
    """Capability names to a set; raises ValueError naming any unknown one."""
    capabilities = set()
    for name in names:
        try:
            capabilities.add(Capability(name.strip()))
        except ValueError:
            valid = ", ".join(c.value for c in Capability)
            raise ValueError(f"unknown capability {name!r} (valid: {valid})") from None
    return frozenset(capabilities)


def serialise_capabilities(capabilities: Iterable[Capability]) -> str:
    return " ".join(sorted(c.value for c in capabilities))


def deserialise_capabilities(stored: str) -> frozenset[Capability]:
    return parse_capabilities(stored.split())
