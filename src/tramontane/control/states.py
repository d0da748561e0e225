"""The replica lifecycle as an explicit state machine.

    PENDING -> STARTING -> RUNNING -> STOPPING -> STOPPED
                  |  ^        | ^ |        ^
                  v  |        v | v        |
                UNHEALTHY <-- SLEEPING ----+

PENDING: placed on the node, resources reserved, not yet launched.
STARTING: the process runs; waiting for its health check to pass.
RUNNING: healthy and taking requests.
SLEEPING: light sleep: scaled down, its process frozen (SIGSTOP) with its weights
  in host memory and its KV cache freed; it holds memory only, is not counted as
  a replica, and wakes in milliseconds (or is stopped: deep sleep).
UNHEALTHY: it exited or failed its checks; it is killed and started again.
STOPPING/STOPPED: being removed (deep sleep, eviction, delete, shutdown).
"""

from __future__ import annotations

from enum import StrEnum


class ReplicaState(StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SLEEPING = "SLEEPING"
    UNHEALTHY = "UNHEALTHY"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.PENDING: frozenset({ReplicaState.STARTING, ReplicaState.STOPPING}),
    ReplicaState.STARTING: frozenset({ReplicaState.RUNNING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING}),
    ReplicaState.RUNNING: frozenset({ReplicaState.SLEEPING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING}),
    ReplicaState.SLEEPING: frozenset({ReplicaState.RUNNING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING}),
    ReplicaState.UNHEALTHY: frozenset({ReplicaState.STARTING, ReplicaState.STOPPING}),
    ReplicaState.STOPPING: frozenset({ReplicaState.STOPPED}),
    ReplicaState.STOPPED: frozenset(),
}

# States that hold resources on the node and count towards a deployment's replicas.
LIVE = frozenset({ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UNHEALTHY})


class InvalidTransition(RuntimeError):
    pass


def check_transition(current: ReplicaState, new: ReplicaState) -> None:
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"replica cannot go from {current} to {new}")
