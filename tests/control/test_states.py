"""The replica state machine: every pair of states, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from tramontane.control.states import InvalidTransition, ReplicaState, check_transition

S = ReplicaState
ALLOWED = {
    (S.PENDING, S.STARTING), (S.PENDING, S.STOPPING),
    (S.STARTING, S.RUNNING), (S.STARTING, S.UNHEALTHY), (S.STARTING, S.STOPPING),
    (S.RUNNING, S.SLEEPING), (S.RUNNING, S.UNHEALTHY), (S.RUNNING, S.STOPPING),
    (S.SLEEPING, S.RUNNING), (S.SLEEPING, S.UNHEALTHY), (S.SLEEPING, S.STOPPING),
    (S.UNHEALTHY, S.STARTING), (S.UNHEALTHY, S.STOPPING),
    (S.STOPPING, S.STOPPED),
}  # fmt: skip


@pytest.mark.parametrize(("current", "new"), list(itertools.product(S, S)), ids=lambda s: s.value)
def test_transition(current: ReplicaState, new: ReplicaState) -> None:
    if (current, new) in ALLOWED:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, new)
