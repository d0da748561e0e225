"""The per-process workspace gate: concurrency slots, a bounded queue, 429s past them."""

from __future__ import annotations

import asyncio

import pytest

from tramontane.errors import Limited
from tramontane.tenancy import AdmissionLimits
from tramontane.tenancy.limits import WorkspaceGate


async def test_slots_queue_and_refusals_are_per_workspace():
    gate = WorkspaceGate(AdmissionLimits(max_concurrent=2, max_queued=1, max_queue_wait_s=5))
    await gate.enter("a")
    await gate.enter("a")
    queued = asyncio.create_task(gate.enter("a"))
    await asyncio.sleep(0)
    assert gate.running("a") == 2 and gate.queued("a") == 1
    with pytest.raises(Limited) as refused:
        await gate.enter("a")
    assert refused.value.code == "workspace_queue_full" and refused.value.retry_after_s == 1.0
    await gate.enter("b")  # another workspace is not held up by a's line
    gate.leave("a")  # the freed slot goes to the queued request
    await asyncio.wait_for(queued, 1)
    assert gate.running("a") == 2 and gate.queued("a") == 0
    for _ in range(2):
        gate.leave("a")
    gate.leave("b")
    assert gate.running("a") == gate.running("b") == 0


async def test_a_queued_request_gives_up_after_the_wait_limit():
    gate = WorkspaceGate(AdmissionLimits(max_concurrent=1, max_queued=4, max_queue_wait_s=0.05))
    await gate.enter("a")
    with pytest.raises(Limited) as refused:
        await gate.enter("a")
    assert refused.value.code == "workspace_queue_timeout"
    assert gate.queued("a") == 0
    gate.leave("a")
    await gate.enter("a")  # the slot was not lost
    gate.leave("a")


async def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot():
    gate = WorkspaceGate(AdmissionLimits(max_concurrent=1, max_queued=4, max_queue_wait_s=5))
    await gate.enter("a")
    waiter = asyncio.create_task(gate.enter("a"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued("a") == 0
    gate.leave("a")
    assert gate.running("a") == 0


async def test_a_workspace_limit_replaces_the_default():
    gate = WorkspaceGate(AdmissionLimits(max_concurrent=1, max_queued=0))
    for _ in range(3):
        await gate.enter("big", max_concurrent=3)
    with pytest.raises(Limited):
        await gate.enter("big", max_concurrent=3)


def test_weights_must_be_positive():
    assert AdmissionLimits(weights={"w": 2.0}).weight("w") == 2.0
    assert AdmissionLimits().weight("other") == 1.0
    with pytest.raises(ValueError):
        AdmissionLimits(weights={"w": 0.0})
