"""Where replicas run. `Backend` is the contract; `LocalBackend` runs each replica
as a process group on this machine; `RayBackend` (module `backends.ray`, which
needs the `ray` extra) runs each as a Ray actor on a cluster's nodes."""

from .base import Backend, Pausable, ReplicaHandle
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "Pausable", "ReplicaHandle"]
