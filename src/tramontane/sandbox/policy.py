"""What a sandbox may use: resource limits and network policy.

A `SandboxSpec` is validated once, at creation, so everything downstream (bwrap
argv, cgroup files, rlimits) can trust its numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import InvalidArgument

MiB = 1024 * 1024

# Environment variable names a shell accepts; anything else could smuggle syntax.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_BYTES = 128 * 1024
MAX_METADATA_ITEMS = 64
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-sandbox ceilings, enforced by the cgroup, tmpfs sizes and rlimits."""

    cpu: float = 1.0  # cores, as a CFS quota
    memory_mb: int = 512  # RAM, tmpfs pages included (no swap)
    pids: int = 256  # tasks (threads count too)
    workspace_mb: int = 256  # /home/user
    tmp_mb: int = 64  # /tmp and /dev/shm, each
    nofile: int = 1024  # open files per process

    def validate(self, maximum: Limits) -> Limits:
        checks = (
            ("cpu", 0.05, maximum.cpu),
            ("memory_mb", 32, maximum.memory_mb),
            ("pids", 16, maximum.pids),
            ("workspace_mb", 1, maximum.workspace_mb),
            ("tmp_mb", 1, maximum.tmp_mb),
            ("nofile", 64, maximum.nofile),
        )
        for name, low, high in checks:
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidArgument(f"{name} must be between {low} and {high}, got {value}", param=name)
        return self


@dataclass(frozen=True)
class NetworkPolicy:
    """Network access. Tier 1 gives each sandbox its own network namespace with
    only a loopback interface, so nothing outside the sandbox is reachable.

    `allow_out` (host names or CIDRs reachable through an egress proxy) is part of
    the shape so clients can ask for it, but tier 1 refuses a non-empty list:
    the proxy (a Unix socket bound into the sandbox, forwarding CONNECTs that
    match the list) is not built yet.
    """

    allow_out: tuple[str, ...] = ()

    def validate(self) -> NetworkPolicy:
        if self.allow_out:
            raise InvalidArgument(
                "egress allow-lists are not available yet: tier-1 sandboxes have no network access",
                param="network",
                code="egress_unavailable",
            )
        return self


@dataclass(frozen=True)
class SandboxSpec:
    """Everything fixed when a sandbox is created."""

    template: str = "base"
    timeout_s: float = 300.0  # absolute lifetime, extendable with set_timeout
    idle_timeout_s: float | None = None  # reclaimed after this long without an API call
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    # The workspace that created it; other owners are told it does not exist.
    owner: str | None = None

    def validate(self, *, templates: frozenset[str], max_limits: Limits, max_timeout_s: float) -> SandboxSpec:
        if self.template not in templates:
            raise InvalidArgument(
                f"unknown template {self.template!r}; available: {', '.join(sorted(templates))}",
                param="template",
                code="template_not_found",
            )
        validate_timeout(self.timeout_s, max_timeout_s)
        if self.idle_timeout_s is not None and not 1 <= self.idle_timeout_s <= max_timeout_s:
            raise InvalidArgument(f"idle_timeout must be between 1 and {max_timeout_s} s", param="idle_timeout")
        validate_env(self.env)
        _validate_metadata(self.metadata)
        self.limits.validate(max_limits)
        self.network.validate()
        return self


def validate_timeout(seconds: float, maximum: float) -> None:
    if not 1 <= seconds <= maximum:
        raise InvalidArgument(f"timeout must be between 1 and {maximum:g} s, got {seconds:g}", param="timeout")


def validate_env(env: dict[str, str]) -> None:
    size = 0
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise InvalidArgument(f"invalid environment variable name {name!r}", param="envs")
        if "\0" in value:
            raise InvalidArgument(f"environment variable {name} contains a NUL byte", param="envs")
        size += len(name) + len(value.encode()) + 2
    if size > MAX_ENV_BYTES:
        raise InvalidArgument(f"environment larger than {MAX_ENV_BYTES} bytes", param="envs")


def _validate_metadata(metadata: dict[str, str]) -> None:
    size = sum(len(k) + len(v) for k, v in metadata.items())
    if len(metadata) > MAX_METADATA_ITEMS or size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"metadata is limited to {MAX_METADATA_ITEMS} items and {MAX_METADATA_BYTES} bytes", param="metadata"
        )
