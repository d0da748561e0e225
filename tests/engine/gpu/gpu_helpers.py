"""Tiny random Llama/Mistral/Mixtral models for the GPU path's CPU tests."""

from __future__ import annotations

import dataclasses

import torch

from tramontane.engine import EngineConfig, LLMEngine
from tramontane.engine.checkpoint import Checkpoint
from tramontane.engine.config import ModelConfig
from tramontane.engine.sampling_params import SamplingParams
from tramontane.engine.tokenizer import Tokenizer


def tiny_config(**overrides) -> ModelConfig:
    base = dict(
        architecture="mistral", vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        bos_token_id=1, eos_token_ids=[2],
    )
    return ModelConfig(**{**base, **overrides})


def tiny_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=gen) * (scale if scale is not None else shape[-1] ** -0.5)

    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    t = {"model.embed_tokens.weight": w(cfg.vocab_size, h, scale=1.0), "model.norm.weight": 1 + 0.1 * w(h, scale=1.0),
         "lm_head.weight": w(cfg.vocab_size, h)}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * w(h, scale=1.0)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * w(h, scale=1.0)
        t[p + "self_attn.q_proj.weight"] = w(cfg.num_attention_heads * d, h)
        t[p + "self_attn.k_proj.weight"] = w(cfg.num_key_value_heads * d, h)
        t[p + "self_attn.v_proj.weight"] = w(cfg.num_key_value_heads * d, h)
        t[p + "self_attn.o_proj.weight"] = w(h, cfg.num_attention_heads * d)
        if cfg.is_moe:
            t[p + "block_sparse_moe.gate.weight"] = w(cfg.num_local_experts, h)
            for e in range(cfg.num_local_experts):
                t[p + f"block_sparse_moe.experts.{e}.w1.weight"] = w(i, h)
                t[p + f"block_sparse_moe.experts.{e}.w3.weight"] = w(i, h)
                t[p + f"block_sparse_moe.experts.{e}.w2.weight"] = w(h, i)
        else:
            t[p + "mlp.gate_proj.weight"] = w(i, h)
            t[p + "mlp.up_proj.weight"] = w(i, h)
            t[p + "mlp.down_proj.weight"] = w(h, i)
    return t


ARCHS = {
    "mistral": {},
    "sliding-window": {"sliding_window": 8},
    "mixtral": {"architecture": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
}


def word_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Word-level ids "t0".."tN": the tests feed ids, the engine only detokenizes.
    (No model package needed, so these tests also run on a bare GPU machine.)"""
    import tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    hf = tokenizers.Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    hf.pre_tokenizer = WhitespaceSplit()
    return Tokenizer(hf, bos_token_id=1, eos_token_ids=[2], chat_templates={}, byte_level=False)


def greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    out: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for _ in range(10_000):
        if not engine.has_work():
            return [out[str(i)] for i in range(len(prompts))]
        for o in engine.step():
            for c in o.outputs:
                out[o.request_id] += c.delta_token_ids
    raise AssertionError("engine did not finish")


def engine_pair(checkpoint: Checkpoint, **config) -> tuple[LLMEngine, LLMEngine]:
    """The CPU engine (our kernels, float32) and the GPU path forced on the CPU."""
    base = dict(num_kv_blocks=48, quantization="none", dtype="float32", **config)
    cpu = LLMEngine(checkpoint, EngineConfig(**base))
    flex = LLMEngine(dataclasses.replace(checkpoint), EngineConfig(attention_backend="flex", **base))
    return cpu, flex


def tp_logits(arch_overrides: dict, parallel=None) -> torch.Tensor:
    """Logits of a prompt step then a decode step of a tiny model, on this process's
    tensor-parallel slice (`parallel`), or whole."""
    from tramontane.engine.gpu.paged_flex import StepShape
    from tramontane.engine.gpu.runner import GPUModelRunner

    cfg = tiny_config(**arch_overrides)
    config = EngineConfig(num_kv_blocks=8, block_size=4, quantization="none", dtype="float32",
                          attention_backend="flex")
    runner = GPUModelRunner(cfg, tiny_tensors(cfg), config, parallel=parallel)
    ids = torch.randint(3, cfg.vocab_size, (12,), generator=torch.Generator().manual_seed(5))
    table = [3, 0, 6, 1]
    prompt = runner._run(ids[:11], torch.arange(11), runner._metadata([StepShape(0, 11, table)]))
    decode = runner._run(ids[11:], torch.tensor([11]), runner._metadata([StepShape(11, 1, table)]))
    return torch.cat([prompt, decode])


def tp_worker(rank: int, world: int, port: int, out_dir: str, archs: list[dict]) -> None:
    """One rank of the tensor-parallel test: joins a gloo group on loopback and
    writes its logits for each architecture (every rank holds the gathered logits)."""
    import datetime
    import os

    import torch.distributed as dist

    from tramontane.engine.gpu.parallel import init_tensor_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        parallel = init_tensor_parallel(torch.device("cpu"))
        results = [tp_logits(arch, parallel) for arch in archs]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        # The engine over both ranks: rank 0 schedules and samples, rank 1 mirrors.
        cfg = tiny_config(**archs[-1])
        config = tp_engine_config(tensor_parallel_size=world)
        if rank == 0:
            engine = LLMEngine(Checkpoint(cfg, tiny_tensors(cfg), word_tokenizer(cfg.vocab_size), "tiny"), config)
            tokens = greedy(engine, TP_PROMPTS, 6)
            engine.sleep()  # mirrored too
            engine.wake_up()
            tokens += greedy(engine, TP_PROMPTS[:1], 6)
            engine.runner.shutdown()
            torch.save(tokens, os.path.join(out_dir, "engine.pt"))
        else:
            from tramontane.engine.gpu.runner import serve_tensor_parallel_worker

            serve_tensor_parallel_worker(cfg, tiny_tensors(cfg), config)
    finally:
        dist.destroy_process_group()


TP_PROMPTS = [list(range(5, 35)), list(range(40, 49)), list(range(5, 21)) + [7, 8, 9]]


def tp_engine_config(**overrides) -> EngineConfig:
    return EngineConfig(num_kv_blocks=32, block_size=8, max_num_batched_tokens=24, quantization="none",
                        dtype="float32", attention_backend="flex", **overrides)
