"""Errors of the sandbox layer, each with the HTTP status the API answers with."""

from __future__ import annotations

from ..errors import APIError


class SandboxError(APIError):
    status = 500
    default_code = "sandbox_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(self.status, message, code=code or self.default_code, param=param)


class InvalidArgument(SandboxError):
    status = 400
    default_code = "invalid_argument"


class Unprocessable(InvalidArgument):
    """Well-formed but unusable, like a bad network allow-list entry."""

    status = 422
    default_code = "invalid_value"


class Forbidden(SandboxError):
    """The sandbox refused it: a read-only path, a file the sandbox user cannot touch."""

    status = 403
    default_code = "permission_denied"


class NotFound(SandboxError):
    status = 404
    default_code = "not_found"


class Conflict(SandboxError):
    """The sandbox is not in a state that allows the operation (paused, killed)."""

    status = 409
    default_code = "conflict"


class TooLarge(SandboxError):
    status = 413
    default_code = "too_large"


class OutOfSpace(SandboxError):
    """The sandbox's filesystem is full (its size limit)."""

    status = 507
    default_code = "insufficient_storage"


class Unavailable(SandboxError):
    """The host cannot run (more) sandboxes: bwrap or cgroups missing, capacity reached."""

    status = 503
    default_code = "unavailable"


class SandboxDied(SandboxError):
    """The sandbox's agent went away mid-operation (killed, timed out, OOM)."""

    status = 409
    default_code = "sandbox_died"
