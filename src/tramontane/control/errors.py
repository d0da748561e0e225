"""Control-plane failures, rendered as OpenAI-style error bodies by the tenancy
error handler (the API and the router install it)."""

from __future__ import annotations

from ..tenancy.errors import TenancyError


class ControlError(TenancyError):
    """A deployment request that cannot be honoured: status, message and code."""


class DeploymentNotFound(ControlError):
    def __init__(self, name: str):
        super().__init__(404, f"No deployment named '{name}'", code="deployment_not_found")


class NoCapacity(ControlError):
    """Nothing fits on the node even after evicting every idle replica."""

    def __init__(self, message: str):
        super().__init__(503, message, code="insufficient_capacity", retry_after_s=5)


class ReplicaUnavailable(ControlError):
    """The replica died or could not be reached while serving the request."""

    def __init__(self, message: str):
        super().__init__(502, message, code="replica_unavailable")
