"""What a sandbox may use: resource limits and network policy.

A `SandboxSpec` is validated once, at creation, so everything downstream (bwrap
argv, cgroup files, rlimits) can trust its numbers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import InvalidArgument, Unprocessable

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


MAX_ALLOW_OUT = 64
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical_ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class EgressRule:
    """One allow-list entry: `host:port`, where host is a DNS name, `*.domain`
    (its subdomains), `*` (any public host), or an IP literal (IPv6 in brackets),
    and port is a number or `*`. Private, loopback and link-local addresses are
    only reachable through an IP rule naming that address and its port exactly."""

    host: str  # lower-case name, "*.suffix", "*", or an IP address in its canonical form
    port: int | None  # None: any port
    ip: IPAddress | None = None

    def matches(self, host: str, port: int) -> bool:
        """Whether a request for `host` (a lower-case name or a canonical IP) may proceed."""
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return self.host == host

    def unlocks(self, address: IPAddress, port: int) -> bool:
        """Whether this rule names `address:port` exactly, as a non-public address needs."""
        return self.ip == address and self.port == port


def valid_host_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def parse_egress_rule(entry: str) -> EgressRule:
    """The rule an allow-list entry means; ValueError says what is wrong with it."""
    text = entry.strip().lower()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{entry!r}: expected host:port, e.g. example.com:443 or 10.0.0.5:8080")
    if port_text == "*":
        port = None
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"{entry!r}: the port must be 1-65535 or *")
    if host.startswith("[") and host.endswith("]"):
        ip = canonical_ip(host[1:-1])
        if ip is None:
            raise ValueError(f"{entry!r}: {host} is not an IP address")
        return EgressRule(str(ip), port, ip)
    if ":" in host:
        raise ValueError(f"{entry!r}: write an IPv6 address in brackets, e.g. [2001:db8::1]:443")
    ip = canonical_ip(host)
    if ip is not None:
        return EgressRule(str(ip), port, ip)
    if host == "*" or (host.startswith("*.") and valid_host_name(host[2:])) or valid_host_name(host):
        return EgressRule(host, port)
    raise ValueError(f"{entry!r}: {host!r} is not a host name, *.domain, * or an IP address")


@dataclass(frozen=True)
class NetworkPolicy:
    """Network access. Every tier-1 sandbox has its own network namespace with
    only a loopback interface. A non-empty `allow_out` adds one way out: an HTTP
    proxy on the host (see `egress`), reachable through a Unix socket in the
    sandbox and relayed from 127.0.0.1:3128, that only goes where a rule allows.
    """

    allow_out: tuple[str, ...] = ()

    def rules(self) -> tuple[EgressRule, ...]:
        return tuple(parse_egress_rule(entry) for entry in self.allow_out)

    def validate(self) -> NetworkPolicy:
        if len(self.allow_out) > MAX_ALLOW_OUT:
            raise Unprocessable(f"allow_out is limited to {MAX_ALLOW_OUT} entries", param="network.allow_out")
        try:
            self.rules()
        except ValueError as exc:
            raise Unprocessable(str(exc), param="network.allow_out") from None
        return self


@dataclass(frozen=True)
class SandboxSpec:
    """Everything fixed when a sandbox is created."""

    # None: the platform's default template (the manager names the one it got here).
    template: str | None = None
    timeout_s: float = 300.0  # absolute lifetime, extendable with set_timeout
    idle_timeout_s: float | None = None  # reclaimed after this long without an API call
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    # The workspace that created it; other owners are told it does not exist.
    owner: str | None = None

    def validate(self, *, templates: frozenset[str], max_limits: Limits, max_timeout_s: float) -> SandboxSpec:
        if self.template is not None and self.template not in templates:  # None: the manager's default
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
