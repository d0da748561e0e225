"""Where replicas run. `Backend` is the contract; `LocalBackend` runs each replica
as a process group on this machine."""

from .base import Backend, Pausable, ReplicaHandle
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "Pausable", "ReplicaHandle"]
