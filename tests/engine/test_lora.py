"""Multi-LoRA in the engine: adapters read from PEFT's layout give the logits of the
merged weights (and of HF transformers + peft), batches mixing adapters give every
request what it gets alone, and the prefix cache never serves one adapter's KV to another."""

import dataclasses

import pytest
import torch

from tramontane.engine import (
    AsyncEngine,
    Checkpoint,
    InvalidRequestError,
    LLMEngine,
    ModelLoadError,
    SamplingParams,
)
from tramontane.engine.lora import LoRABatch, LoRAStack, load_lora

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "1, 2, 3, 4, 5,"]
LOGPROB_ATOL = 1e-3


def merged_engine(engine: LLMEngine, checkpoint: Checkpoint, path) -> LLMEngine:
    """The reference: a plain engine on W + scale * B @ A, computed here in float."""
    adapter = load_lora("ref", str(path), checkpoint.config, max_rank=64)
    tensors = dict(checkpoint.tensors)
    for (layer, target), (a, b) in adapter.weights.items():
        module = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        key = f"model.layers.{layer}.{module}.{target}.weight"
        tensors[key] = tensors[key].float() + b @ a  # b carries the scale
    return LLMEngine(dataclasses.replace(checkpoint, tensors=tensors), dataclasses.replace(engine.config))


def greedy(engine: LLMEngine, requests: dict[str, tuple[list[int], str | None]], run, tokens: int = 12) -> dict:
    """All requests in one batch; {request id: (token ids, first-token top logprobs)}."""
    for rid, (ids, lora) in requests.items():
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, logprobs=5, lora=lora)
        engine.add_request(rid, ids, params)
    results = run(engine)
    return {rid: (results[(rid, 0)].token_ids, results[(rid, 0)].delta_logprobs) for rid in requests}


def first_logprobs(engine: LLMEngine, ids: list[int], lora: str | None, run) -> list[tuple[int, float]]:
    engine.add_request("lp", ids, SamplingParams(temperature=0, max_tokens=1, logprobs=5, lora=lora))
    (lp,) = run(engine)[("lp", 0)].delta_logprobs
    return lp.top


def assert_close(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert abs(a - b) < LOGPROB_ATOL


def test_adapter_equals_merged_weights(make_engine, smollm_checkpoint, make_lora, run):
    engine = make_engine()
    path = make_lora(smollm_checkpoint.config, seed=1)
    engine.add_lora("a", str(path))
    reference = merged_engine(engine, smollm_checkpoint, path)
    for text in PROMPTS[:2]:
        ids = engine.tokenizer.encode(text)
        got = first_logprobs(engine, ids, "a", run)
        assert_close(got, first_logprobs(reference, ids, None, run))
        assert got != first_logprobs(engine, ids, None, run)  # the adapter changes the output
    ids = engine.tokenizer.encode(PROMPTS[2])
    assert greedy(engine, {"x": (ids, "a")}, run)["x"][0] == greedy(reference, {"x": (ids, None)}, run)["x"][0]


def test_adapter_on_attention_only_with_rslora_scale(make_engine, smollm_checkpoint, make_lora, run):
    engine = make_engine()
    path = make_lora(smollm_checkpoint.config, rank=4, alpha=8, targets=("q_proj", "v_proj"), seed=2)
    config = path / "adapter_config.json"
    config.write_text(config.read_text().replace('"bias"', '"use_rslora": true, "bias"'))
    engine.add_lora("qv", str(path))
    ids = engine.tokenizer.encode(PROMPTS[0])
    reference = merged_engine(engine, smollm_checkpoint, path)
    assert_close(first_logprobs(engine, ids, "qv", run), first_logprobs(reference, ids, None, run))


def test_adapter_matches_transformers_peft(make_engine, smollm_checkpoint, make_lora, run):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    import os

    from tramontane.engine.defaults import default_chat_model_path

    gguf = default_chat_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    path = make_lora(smollm_checkpoint.config, seed=3)
    hf = peft.PeftModel.from_pretrained(hf, str(path)).eval()
    engine = make_engine()
    engine.add_lora("a", str(path))
    ids = engine.tokenizer.encode(PROMPTS[1])
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    for token, logprob in first_logprobs(engine, ids, "a", run):
        assert abs(logprob - float(want[token])) < LOGPROB_ATOL


def test_mixed_batch_gives_each_request_its_solo_tokens(make_engine, smollm_checkpoint, make_lora, run):
    # float32: batch-invariant to within LOGPROB_ATOL (the int4 kernel is not: its logprobs
    # move by ~0.1 with the batch size, adapter or none; the server tests run int4).
    engine = make_engine()
    for i, name in enumerate("abc"):
        engine.add_lora(name, str(make_lora(smollm_checkpoint.config, name, rank=4 + 4 * i, seed=10 + i)))
    ids = [engine.tokenizer.encode(p) for p in PROMPTS]
    requests = {
        "a0": (ids[0], "a"), "b0": (ids[0], "b"), "c0": (ids[0], "c"), "base0": (ids[0], None),
        "a1": (ids[1], "a"), "base2": (ids[2], None), "c3": (ids[3], "c"),
    }
    together = greedy(engine, requests, run, tokens=8)
    for rid, request in requests.items():
        tokens, logprobs = greedy(engine, {rid: request}, run, tokens=8)[rid]
        assert tokens == together[rid][0], rid
        solo, batched = dict(logprobs[-1].top), dict(together[rid][1][-1].top)
        assert all(abs(solo[t] - batched[t]) < LOGPROB_ATOL for t in solo.keys() & batched.keys())
    # Same prompt, four models: four different distributions, so a mix-up would show.
    last = [dict(together[r][1][-1].top) for r in ("a0", "b0", "c0", "base0")]
    for i, x in enumerate(last):
        for y in last[i + 1 :]:
            assert x.keys() != y.keys() or max(abs(x[t] - y[t]) for t in x) > 0.05


@pytest.mark.parametrize(
    "row_slots",
    [
        [3, 3, 3, 3],  # one adapter
        [0, 1, 2, 3],  # one each, in slot order: no gather or scatter
        [5, 0, 5, None],  # packed slots with rows out of order and a row without adapter
        [0, 2, 2, 2],  # a range of slots with one unused (read through a view)
        [7, 0, None, 0],  # slots far apart (gathered)
    ],
)
def test_stack_adds_each_rows_own_delta(row_slots):
    """Every batch layout gives each row x @ A^T @ B^T of its own adapter, fused parts
    in their columns, ranks below the stack's and untargeted parts included."""
    torch.manual_seed(0)
    fan_in, outs, length = 16, [12, 4, 4], 3
    stack = LoRAStack(fan_in, outs, slots=8, rank=8, dtype=torch.float32, device="cpu")
    weights, ranks = {}, {}
    for slot in range(8):
        ranks[slot] = 8 if slot % 2 else 4
        parts = [(torch.randn(ranks[slot], fan_in), torch.randn(out, ranks[slot])) for out in outs]
        parts[slot % 3] = None
        stack.load(slot, parts)
        weights[slot] = parts
    x = torch.randn(len(row_slots), length, fan_in)
    y = torch.randn(len(row_slots), length, sum(outs))
    want = y.clone()
    for row, slot in enumerate(row_slots):
        if slot is not None:
            parts = zip(weights[slot], outs, strict=True)
            want[row] += torch.cat([x[row] @ p[0].T @ p[1].T if p else torch.zeros(length, n) for p, n in parts], -1)
    batch = LoRABatch.build([(s, ranks[s]) if s is not None else None for s in row_slots], torch.device("cpu"))
    assert batch is not None
    stack.apply(y, x, batch)
    torch.testing.assert_close(y, want)


def test_more_adapters_than_slots_wait_for_one(make_engine, smollm_checkpoint, make_lora, run):
    engine = make_engine(max_loras=2)
    names = [f"l{i}" for i in range(5)]
    for i, name in enumerate(names):
        engine.add_lora(name, str(make_lora(smollm_checkpoint.config, name, seed=20 + i)))
    ids = engine.tokenizer.encode(PROMPTS[0])
    together = greedy(engine, {n: (ids, n) for n in names}, run, tokens=6)
    for name in names:
        assert greedy(engine, {name: (ids, name)}, run, tokens=6)[name][0] == together[name][0]


def test_prefix_cache_is_per_adapter(make_engine, smollm_checkpoint, make_lora, run, chat_prompt):
    engine = make_engine()
    engine.add_lora("a", str(make_lora(smollm_checkpoint.config, "a", seed=30)))
    engine.add_lora("b", str(make_lora(smollm_checkpoint.config, "b", seed=31)))
    ids = chat_prompt(engine, "Write a haiku about the sea and the wind over the water, please.")
    assert len(ids) > 2 * engine.config.block_size

    def cached(lora: str | None) -> tuple[int, list[int]]:
        engine.add_request("p", ids, SamplingParams(temperature=0, max_tokens=4, lora=lora))
        for _ in range(100):
            outs = engine.step()
            if outs:
                break
        cached_tokens = outs[0].num_cached_prompt_tokens
        return cached_tokens, run(engine)[("p", 0)].token_ids

    fresh_a = make_engine()
    fresh_a.add_lora("a", str(make_lora(smollm_checkpoint.config, "a", seed=30)))
    fresh_a.add_request("p", ids, SamplingParams(temperature=0, max_tokens=4, lora="a"))
    solo_a = run(fresh_a)[("p", 0)].token_ids

    assert cached(None)[0] == 0
    hits_a, tokens_a = cached("a")
    assert hits_a == 0 and tokens_a == solo_a  # the base model's blocks were not reused
    assert cached("b")[0] == 0
    assert cached("a")[0] > 0  # its own blocks are
    # A name re-added with other weights is another adapter: its old blocks are not reused.
    engine.remove_lora("a")
    engine.add_lora("a", str(make_lora(smollm_checkpoint.config, "a2", seed=32)))
    assert cached("a")[0] == 0


def test_bad_adapters_and_names(make_engine, smollm_checkpoint, make_lora, tmp_path):
    engine = make_engine(max_lora_rank=8)
    ids = engine.tokenizer.encode(PROMPTS[0])
    with pytest.raises(InvalidRequestError, match="'nope' is not loaded"):
        engine.add_request("r", ids, SamplingParams(lora="nope"))
    other_model = dataclasses.replace(smollm_checkpoint.config, hidden_size=64, intermediate_size=128)
    with pytest.raises(ModelLoadError, match="trained for another model"):
        engine.add_lora("other", str(make_lora(other_model, "other")))
    with pytest.raises(ModelLoadError, match="exceeds this engine's max_lora_rank 8"):
        engine.add_lora("big", str(make_lora(smollm_checkpoint.config, "big", rank=16)))
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        engine.add_lora("missing", str(tmp_path / "missing"))
    engine.add_lora("a", str(make_lora(smollm_checkpoint.config, "a")))
    with pytest.raises(InvalidRequestError, match="already loaded"):
        engine.add_lora("a", str(make_lora(smollm_checkpoint.config, "a")))
    with pytest.raises(InvalidRequestError):
        engine.remove_lora("nope")
    assert list(engine.loras.adapters) == ["a"]


def test_removed_adapter_finishes_running_requests(make_engine, smollm_checkpoint, make_lora, run):
    engine = make_engine()
    path = make_lora(smollm_checkpoint.config, seed=40)
    engine.add_lora("a", str(path))
    ids = engine.tokenizer.encode(PROMPTS[0])
    solo = greedy(engine, {"solo": (ids, "a")}, run)["solo"][0]
    engine.add_request("r", ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, lora="a"))
    engine.step()
    engine.remove_lora("a")
    assert run(engine)[("r", 0)].token_ids == solo
    with pytest.raises(InvalidRequestError):
        engine.add_request("after", ids, SamplingParams(lora="a"))


async def test_async_engine_adds_and_removes_adapters(make_engine, smollm_checkpoint, make_lora):
    engine = AsyncEngine(make_engine())
    await engine.start()
    try:
        await engine.add_lora("a", str(make_lora(smollm_checkpoint.config, seed=50)))
        ids = engine.tokenizer.encode(PROMPTS[0])
        params = SamplingParams(temperature=0, max_tokens=4, lora="a")
        outputs = [out async for out in engine.generate("r1", ids, params)]
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 4
        with pytest.raises(ModelLoadError):
            await engine.add_lora("bad", str(make_lora(smollm_checkpoint.config, "bad", rank=32)))
        await engine.remove_lora("a")
        with pytest.raises(InvalidRequestError):
            [out async for out in engine.generate("r2", ids, params)]
    finally:
        await engine.shutdown()
