"""Errors of the sandbox layer, on the platform's domain taxonomy (`tramontane.errors`).

`SandboxError` marks a failure of this layer (callers such as the agents' code tool
catch it); each kind below is also one of the platform's domain kinds, so the HTTP
edge's one table picks its status. Nothing here knows about HTTP.
"""

from __future__ import annotations

from .. import errors as domain


class SandboxError(domain.TramontaneError):
    """A sandbox failure with no better kind: the agent sent something malformed."""

    default_code = "sandbox_error"


class InvalidArgument(SandboxError, domain.Invalid):
    default_code = "invalid_argument"


class Unprocessable(InvalidArgument):
    """Well-formed but unusable, like a bad network allow-list entry."""

    default_code = "invalid_value"


class Forbidden(SandboxError, domain.Forbidden):
    """The sandbox refused it: a read-only path, a file the sandbox user cannot touch."""

    default_code = "permission_denied"


class NotFound(SandboxError, domain.NotFound):
    default_code = "not_found"


class Conflict(SandboxError, domain.Conflict):
    """The sandbox is not in a state that allows the operation (paused, killed, full)."""

    default_code = "conflict"


class TooLarge(SandboxError, domain.TooLarge):
    default_code = "too_large"


class OutOfSpace(Conflict):
    """The sandbox's filesystem is full (its size limit); freeing space makes the
    operation possible again."""

    default_code = "no_space"


class LimitReached(Conflict):
    """The sandbox used up one of its own limits: its code is the cause, and ending
    some of its processes (or freeing memory) is the cure. `code` names the limit:
    pids_exhausted, memory_exhausted, nofile_exhausted, output_limit."""

    default_code = "limit_reached"


class Unavailable(SandboxError, domain.Unavailable):
    """The host cannot run (more) sandboxes: bwrap or cgroups missing, capacity or
    host memory reached."""

    default_code = "unavailable"


class SandboxDied(Conflict):
    """The sandbox's agent went away mid-operation (killed, timed out, OOM)."""

    default_code = "sandbox_died"


class AgentTimeout(Unavailable):
    """The sandbox's agent did not answer an operation within its deadline."""

    default_code = "agent_timeout"


class UpstreamFailed(SandboxError, domain.UpstreamFailed):
    """A server inside the sandbox, reached through an exposed port, failed (502)."""

    default_code = "upstream_failed"


class PortRefused(UpstreamFailed):
    """Nothing listens on the sandbox's port asked for."""

    default_code = "port_not_listening"
