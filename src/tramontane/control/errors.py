"""The control plane's errors that callers tell apart, each of the platform's kinds;
others are raised as the kinds themselves (`tramontane.errors`)."""

from __future__ import annotations

from ..errors import NotFound, UpstreamFailed, Unavailable


class DeploymentNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"No deployment named '{name}'", code="deployment_not_found")


class NoCapacity(Unavailable):
    """Nothing fits on the node even after evicting every idle replica."""

    def __init__(self, message: str):
        super().__init__(message, code="insufficient_capacity", retry_after_s=5)


class ReplicaUnavailable(UpstreamFailed):
    """The replica died or could not be reached while serving the request."""

    def __init__(self, message: str):
        super().__init__(message, code="replica_unavailable")
