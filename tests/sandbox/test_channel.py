"""The host's end of the agent channel, against a scripted agent: what a process
that is not the agent, or an agent gone wrong, can make the server do."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tramontane.sandbox.channel import MAX_LINE_BYTES, AgentChannel, ByteBudget, OutputBudget, ok_or_raise
from tramontane.sandbox.errors import AgentTimeout, LimitReached, SandboxDied

KEY = b"k" * 32


def signed(seq: int, event: dict[str, Any], key: bytes = KEY) -> bytes:
    line = json.dumps(event).encode()
    tag = hashlib.blake2b(seq.to_bytes(8, "big") + line, key=key, digest_size=16).hexdigest().encode()
    return tag + b" " + line + b"\n"


class _Writer:
    """Collects what the host writes to the agent."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


@asynccontextmanager
async def channel(limit: int = 1 << 20, total: int = 1 << 30) -> AsyncIterator[tuple[AgentChannel, asyncio.StreamReader]]:
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    budget = OutputBudget(limit, ByteBudget(total))
    agent = AgentChannel(reader, _Writer(), KEY, budget)  # type: ignore[arg-type]
    try:
        yield agent, reader
    finally:
        agent.close()


async def test_the_key_goes_first_and_authentic_lines_are_delivered() -> None:
    async with channel() as (agent, reader):
        assert bytes(agent._writer.written).startswith(KEY.hex().encode() + b"\n")  # type: ignore[attr-defined]
        call = asyncio.create_task(agent.call("ps"))
        await asyncio.sleep(0)
        reader.feed_data(signed(0, {"id": 1, "ev": "ok", "processes": []}))
        assert (await call)["processes"] == []


@pytest.mark.parametrize(
    "forged",
    [
        signed(0, {"id": 1, "ev": "ok", "forged": True}, key=b"x" * 32),  # another key
        signed(5, {"id": 1, "ev": "ok", "forged": True}),  # out of sequence (a replay)
        json.dumps({"id": 1, "ev": "ok", "forged": True}).encode() + b"\n",  # no MAC at all
    ],
)
async def test_a_line_the_agent_did_not_sign_ends_the_channel(forged: bytes) -> None:
    async with channel() as (agent, reader):
        call = asyncio.create_task(agent.call("ps"))
        await asyncio.sleep(0)
        reader.feed_data(forged)
        with pytest.raises(SandboxDied):
            await call
        assert agent.closed.done()


async def test_a_rekeyed_channel_drops_the_old_channels_lines_until_the_new_key_passes() -> None:
    """A microVM resumed from disk: its agent still signs with the old key and
    sequence until it reads the new key; those lines, and the tail of one cut by
    the pause, are dropped. Once a line passes the new key, a bad one is a breach."""
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    budget = OutputBudget(1 << 20, ByteBudget(1 << 30))
    agent = AgentChannel(reader, _Writer(), KEY, budget, rekey=True)  # type: ignore[arg-type]
    try:
        written = bytes(agent._writer.written)  # type: ignore[attr-defined]
        assert written.startswith(b"\n") and json.loads(written) == {"id": -1, "op": "rekey", "key": KEY.hex()}
        call = asyncio.create_task(agent.call("ps"))
        await asyncio.sleep(0)
        reader.feed_data(b'rocesses": []}\n')  # the tail of a line the pause cut
        reader.feed_data(signed(41, {"id": 1, "ev": "ok", "processes": ["old"]}, key=b"o" * 32))
        reader.feed_data(signed(0, {"id": -1, "ev": "ok"}))
        reader.feed_data(signed(1, {"id": 1, "ev": "ok", "processes": []}))
        assert (await call)["processes"] == []
        assert agent.budget.dropped_bytes > 0
        again = asyncio.create_task(agent.call("ps"))
        await asyncio.sleep(0)
        reader.feed_data(signed(2, {"id": 2, "ev": "ok", "forged": True}, key=b"o" * 32))
        with pytest.raises(SandboxDied):
            await again
    finally:
        agent.close()


async def test_an_oversized_line_ends_the_channel_without_being_held() -> None:
    async with channel() as (agent, reader):
        call = asyncio.create_task(agent.call("ps"))
        await asyncio.sleep(0)
        reader.feed_data(b"0" * (MAX_LINE_BYTES + 1))
        with pytest.raises(SandboxDied):
            await asyncio.wait_for(call, 5)
        assert len(reader._buffer) <= 2 * MAX_LINE_BYTES  # type: ignore[attr-defined]


async def test_unknown_events_and_unclaimed_replies_are_dropped_and_counted() -> None:
    async with channel() as (agent, reader):
        rid, stream = agent.open("exec", cmd="x")
        reader.feed_data(signed(0, {"id": rid, "ev": "surprise", "data": "x" * 1000}))
        reader.feed_data(signed(1, {"id": 999, "ev": "stdout", "data": "y" * 1000}))
        reader.feed_data(signed(2, {"id": rid, "ev": "exit", "exit_code": 0}))
        assert (await stream.get())["ev"] == "exit"
        assert agent.budget.dropped_bytes > 2000 and agent.budget.used == 0


async def test_output_past_the_sandbox_budget_is_dropped_and_released_with_the_sandbox() -> None:
    total = ByteBudget(1 << 30)
    async with channel(limit=64 * 1024) as (agent, reader):
        agent.budget.total = total
        rid, stream = agent.open("exec", cmd="x")
        for seq in range(100):  # 100 x 10 KB that nobody reads
            reader.feed_data(signed(seq, {"id": rid, "ev": "stdout", "data": "z" * 10_000}))
        await asyncio.sleep(0.05)
        assert agent.budget.used <= 64 * 1024 and agent.budget.dropped_bytes >= 30 * 10_000
        assert total.used == agent.budget.used > 0
    assert total.used == 0  # the sandbox went away: nothing of it is held


async def test_a_chunk_past_the_budget_fails_its_request_clearly() -> None:
    async with channel(limit=16 * 1024) as (agent, reader):
        rid, stream = agent.open("read", path="f")
        reader.feed_data(signed(0, {"id": rid, "ev": "chunk", "data": "A" * 20_000}))
        event = await stream.get()
        assert event["kind"] == "output_limit"
        with pytest.raises(LimitReached) as caught:
            ok_or_raise(event)
        assert caught.value.code == "output_limit"


async def test_an_agent_that_does_not_answer_misses_its_deadline() -> None:
    async with channel() as (agent, _):
        with pytest.raises(AgentTimeout):
            await agent.call("stat", timeout=0.2, path="fifo")


async def test_a_busy_agent_is_not_taken_for_a_hung_one() -> None:
    """It serves one request at a time: a request queued behind a long one waits
    past the deadline, as long as the agent keeps talking."""
    async with channel() as (agent, reader):
        busy, _ = agent.open("read", path="big")
        call = asyncio.create_task(agent.call("stat", timeout=0.3, path="small"))
        for seq in range(6):  # 0.6 s of another request's chunks
            await asyncio.sleep(0.1)
            reader.feed_data(signed(seq, {"id": busy, "ev": "chunk", "data": "QQ=="}))
        reader.feed_data(signed(6, {"id": 2, "ev": "ok", "entry": None}))
        assert (await call)["ev"] == "ok"
