"""The scheduler shares the engine between workspaces by weight and priority class.

Driven without a model: each step does what LLMEngine.step does to the scheduled
sequences (tokens computed, one sampled token when a prompt is done or a decode
ran), so these run in milliseconds and count exactly.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from tramontane.engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    EngineOverloadedError,
    Priority,
    SamplingParams,
    Tenant,
)
from tramontane.engine.block_manager import BlockManager
from tramontane.engine.scheduler import FAIR_LAG_TOKENS, Scheduler
from tramontane.engine.sequence import SeqStatus, Sequence

BLOCK = 4
_arrivals = itertools.count()


def make_scheduler(*, blocks: int = 4096, max_num_seqs: int = 64, budget: int = 64) -> Scheduler:
    config = EngineConfig(
        block_size=BLOCK, num_kv_blocks=blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget
    )
    return Scheduler(config, BlockManager(blocks, BLOCK, enable_prefix_caching=False), loras=None)  # type: ignore[arg-type]


def submit(
    scheduler: Scheduler,
    tenant: Tenant,
    *,
    prompt: int = 8,
    max_tokens: int = 10_000,
    priority: Priority = Priority.INTERACTIVE,
) -> Sequence:
    seq = Sequence(
        f"req-{next(_arrivals)}", 0, [7] * prompt, SamplingParams(), max_tokens,
        decoder=None, arrival=next(_arrivals), tenant=tenant, priority=priority,  # type: ignore[arg-type]
    )
    scheduler.add(seq)
    return seq


def step(scheduler: Scheduler) -> dict[Sequence, int]:
    """One engine step; returns the tokens each scheduled sequence computed."""
    batch = scheduler.schedule()
    if batch is None:
        return {}
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:  # the logits of its last token: sample one
            seq.token_ids.append(1)
            if seq.num_output_tokens >= seq.max_tokens:
                scheduler.remove(seq)
                seq.status = SeqStatus.FINISHED
    return dict(zip(batch.seqs, batch.num_new_tokens, strict=True))


A = Tenant("ws-a", "key-a")
B = Tenant("ws-b", "key-b")


def test_one_stream_gets_the_per_stream_service_of_a_32_stream_flood():
    scheduler = make_scheduler()
    flood = [submit(scheduler, A) for _ in range(32)]
    mine = submit(scheduler, B)
    for _ in range(60):
        step(scheduler)
    per_stream_a = sum(s.num_output_tokens for s in flood) / len(flood)
    assert mine.num_output_tokens >= per_stream_a > 10


def test_a_new_prompt_waits_for_at_most_one_step_of_a_flood():
    """B's time to first token under A's flood is the step in progress plus its own
    prefill, never a queue behind A's decodes (docs/fair-sharing.md has the arithmetic)."""
    scheduler = make_scheduler()
    flood = [submit(scheduler, A) for _ in range(32)]
    for _ in range(10):
        step(scheduler)
    assert all(s.num_output_tokens > 0 for s in flood)
    for last_step_was_prefill in (False, True):
        scheduler._last_was_prefill = last_step_was_prefill
        mine = submit(scheduler, B, prompt=30, max_tokens=2)
        steps = 0
        while mine.num_output_tokens == 0:
            step(scheduler)
            steps += 1
        # After a prefill step the decodes go first, once; else B's prompt goes at once.
        assert steps == (2 if last_step_was_prefill else 1)
        while mine.status != SeqStatus.FINISHED:
            step(scheduler)


def test_a_late_workspace_takes_back_its_share_of_full_slots():
    scheduler = make_scheduler(max_num_seqs=8)
    flood = [submit(scheduler, A) for _ in range(20)]
    for _ in range(6):
        step(scheduler)
    assert sum(s.status == SeqStatus.RUNNING for s in flood) == 8
    mine = [submit(scheduler, B) for _ in range(2)]
    for _ in range(4):
        step(scheduler)
    # First come first served would keep B waiting until A's 8 streams finished.
    assert all(s.status == SeqStatus.RUNNING and s.num_output_tokens > 0 for s in mine)
    held = Counter(s.tenant.workspace for s in scheduler.running)
    assert held == {"ws-a": 6, "ws-b": 2}
    # ...and no more than its share: with 4 more, B ends at half the slots, not all.
    mine += [submit(scheduler, B) for _ in range(4)]
    for _ in range(12):
        step(scheduler)
    assert Counter(s.tenant.workspace for s in scheduler.running) == {"ws-a": 4, "ws-b": 4}


def test_a_long_prompt_does_not_hold_back_another_workspaces_prompt():
    scheduler = make_scheduler(budget=64)
    long = submit(scheduler, A, prompt=4000)
    step(scheduler)
    assert long.num_computed_tokens == 64
    short = submit(scheduler, B, prompt=20)
    computed = step(scheduler)
    # The short prompt is done in the next prefill step, the long one shares the rest.
    assert computed[short] == 20 and computed[long] == 44
    assert short.num_output_tokens == 1


def test_prefill_budget_is_split_by_weight():
    scheduler = make_scheduler(budget=60)
    heavy, light = Tenant("ws-heavy", "k1", weight=2.0), Tenant("ws-light", "k2", weight=1.0)
    heavy_seqs = [submit(scheduler, heavy, prompt=3000) for _ in range(2)]
    light_seqs = [submit(scheduler, light, prompt=3000) for _ in range(2)]
    for _ in range(20):
        step(scheduler)
    got_heavy = sum(s.num_computed_tokens for s in heavy_seqs)
    got_light = sum(s.num_computed_tokens for s in light_seqs)
    assert got_heavy + got_light == 20 * 60
    assert got_heavy / got_light == pytest.approx(2.0, rel=0.1)


def test_keys_of_one_workspace_share_its_service_equally():
    scheduler = make_scheduler(budget=40)
    busy = [submit(scheduler, Tenant("ws", "busy"), prompt=2000) for _ in range(3)]
    quiet = submit(scheduler, Tenant("ws", "quiet"), prompt=2000)
    for _ in range(10):
        step(scheduler)
    assert quiet.num_computed_tokens == pytest.approx(sum(s.num_computed_tokens for s in busy), rel=0.1)


def test_interactive_work_preempts_batch_work_when_the_cache_is_full():
    scheduler = make_scheduler(blocks=24, budget=256)
    batch = [submit(scheduler, A, prompt=16, max_tokens=40, priority=Priority.BATCH) for _ in range(4)]
    for _ in range(8):
        step(scheduler)
    assert scheduler.blocks.num_free <= 4 and all(s.status == SeqStatus.RUNNING for s in batch)
    urgent = submit(scheduler, B, prompt=16, max_tokens=4)
    step(scheduler)
    assert urgent.status == SeqStatus.RUNNING and urgent.num_output_tokens == 1
    assert scheduler.num_preemptions >= 1
    assert any(s.status == SeqStatus.WAITING for s in batch)
    # Interactive work never gives way to batch work; the batch work resumes and finishes.
    for _ in range(400):
        if not scheduler.has_work():
            break
        step(scheduler)
        assert urgent.status != SeqStatus.WAITING
    assert all(s.status == SeqStatus.FINISHED for s in [*batch, urgent])


def test_a_full_cache_preempts_the_most_served_workspaces_newest_stream():
    scheduler = make_scheduler(blocks=40, budget=256)
    flood = [submit(scheduler, A, prompt=8) for _ in range(6)]
    mine = submit(scheduler, B, prompt=8)
    for _ in range(60):
        step(scheduler)
        assert mine.status == SeqStatus.RUNNING
    assert scheduler.num_preemptions > 0
    assert mine.num_output_tokens >= max(s.num_output_tokens for s in flood)


def test_idle_time_banks_no_credit():
    scheduler = make_scheduler(budget=32)
    for _ in range(4):
        submit(scheduler, A, prompt=20_000)
    for _ in range(300):  # A alone for 300 steps
        step(scheduler)
    late = [submit(scheduler, B, prompt=20_000) for _ in range(4)]
    assert scheduler.fair.workspace_vtime["ws-b"] == min(scheduler.fair.workspace_vtime.values())
    for _ in range(40):
        step(scheduler)
    # B goes first, but only until it caught up (at once here: it joined at A's level).
    assert sum(s.num_computed_tokens for s in late) <= 40 * 32 * 0.6
    vtimes = scheduler.fair.workspace_vtime
    assert abs(vtimes["ws-a"] - vtimes["ws-b"]) <= FAIR_LAG_TOKENS


# -- load shedding, on the real engine ----------------------------------------------------


def test_a_saturated_engine_sheds_the_newest_request_of_the_lowest_class(make_engine, chat_prompt):
    engine = make_engine(max_waiting_requests=3)
    prompt = chat_prompt(engine, "Hi")
    params = SamplingParams(max_tokens=2)
    engine.add_request("batch-old", prompt, params, priority=Priority.BATCH)
    engine.add_request("batch-new", prompt, params, priority=Priority.BATCH)
    engine.add_request("eval", prompt, params, priority=Priority.EVALUATION)
    engine.add_request("chat-1", prompt, params)
    engine.add_request("chat-2", prompt, params)
    shed = engine.pop_shed()
    assert [request_id for request_id, _ in shed] == ["eval", "batch-new"]
    assert all(isinstance(exc, EngineOverloadedError) and exc.retry_after_s > 0 for _, exc in shed)
    # Batch work never sheds interactive work; interactive work that finds only its
    # own class queued is refused itself (the newest of the lowest class).
    with pytest.raises(EngineOverloadedError):
        engine.add_request("batch-3", prompt, params, priority=Priority.BATCH)
    engine.add_request("chat-3", prompt, params)
    assert [r for r, _ in engine.pop_shed()] == ["batch-old"]
    with pytest.raises(EngineOverloadedError):
        engine.add_request("chat-4", prompt, params)
    assert sorted(engine.requests) == ["chat-1", "chat-2", "chat-3"]
    assert engine.stats().num_shed == 3


def test_interactive_work_waiting_too_long_is_shed_not_left_to_time_out(make_engine, chat_prompt):
    engine = make_engine(max_queue_wait_s=0.0)
    prompt = chat_prompt(engine, "Hi")
    engine.add_request("chat", prompt, SamplingParams(max_tokens=2))
    engine.add_request("batch", prompt, SamplingParams(max_tokens=2), priority=Priority.BATCH)
    engine.step()
    assert [r for r, _ in engine.pop_shed()] == ["chat"]
    assert list(engine.requests) == ["batch"]  # batch work waits as long as it takes


async def test_a_shed_request_raises_for_its_async_caller(make_engine, chat_prompt):
    engine = AsyncEngine(make_engine(max_queue_wait_s=0.0))
    await engine.start()
    try:
        with pytest.raises(EngineOverloadedError):
            async for _ in engine.generate("chat", chat_prompt(engine.engine, "Hi"), SamplingParams(max_tokens=2)):
                pass
    finally:
        await engine.shutdown()


async def test_shutdown_fails_requests_still_waiting(make_engine, chat_prompt):
    engine = AsyncEngine(make_engine())
    await engine.start()
    stream = engine.generate("long", chat_prompt(engine.engine, "Hi"), SamplingParams(max_tokens=500, min_tokens=500))
    await anext(stream)
    await engine.shutdown()
    with pytest.raises(EngineDeadError):
        async for _ in stream:
            pass
    with pytest.raises(EngineDeadError):
        await anext(engine.generate("late", [1, 2, 3], SamplingParams(max_tokens=2)))


def test_a_request_without_max_tokens_is_bounded_by_the_default(make_engine, chat_prompt):
    engine = make_engine(default_max_tokens=3)
    assert engine.check_request(chat_prompt(engine, "Hi"), SamplingParams()) == 3
    assert engine.check_request(chat_prompt(engine, "Hi"), SamplingParams(max_tokens=9)) == 9
