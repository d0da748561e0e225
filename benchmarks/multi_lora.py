"""Multi-LoRA serving throughput: the same concurrent streams on the base model, all on
one adapter, and spread over N different adapters for each N asked (S-LoRA's shape: many
adapters should cost little more than one).

Random rank-r adapters on all seven projections are written in PEFT's layout to a
temporary folder and loaded into one engine on the default model; all adapters are
resident (max_loras = the largest N), so the figures measure batched compute, not
loading. With more adapters than streams, the streams take every (N / streams)-th
adapter: as many distinct adapters as streams, their slots spread over all N.

    python benchmarks/multi_lora.py [--streams 50] [--adapters 5,50,200] [--tokens 32] [--rank 8] [--rounds 1]
"""

from __future__ import annotations  # noqa: I001  (tramontane must load before torch)

import argparse
import json
import tempfile
import time
from pathlib import Path

import tramontane  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)
import torch
from safetensors.torch import save_file
from tramontane.engine import EngineConfig, LLMEngine, ModelConfig, SamplingParams
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.lora import target_shapes

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def write_adapter(path: Path, config: ModelConfig, rank: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for target, (fan_in, fan_out) in target_shapes(config).items():
            module = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{module}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.01
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    targets = list(target_shapes(config))
    config_json = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets}
    (path / "adapter_config.json").write_text(json.dumps(config_json))


def throughput(engine: LLMEngine, prompt: list[int], loras: list[str | None], tokens: int) -> tuple[float, float]:
    """(end-to-end output tok/s, decode-only tok/s) for one stream per entry of `loras`."""
    for i, lora in enumerate(loras):
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, lora=lora)
        engine.add_request(f"{time.monotonic()}-{i}", prompt, params)
    start = time.perf_counter()
    decode_start = None
    while engine.has_work():
        engine.step()
        if decode_start is None and not engine.scheduler.waiting and all(
            s.num_output_tokens > 0 for s in engine.scheduler.running
        ):
            decode_start = time.perf_counter()
    end = time.perf_counter()
    assert decode_start is not None
    return len(loras) * tokens / (end - start), len(loras) * (tokens - 1) / (end - decode_start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--adapters", default="5,50,200", help="comma-separated adapter counts")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="scenarios interleaved; the best round is kept")
    parser.add_argument("--quantization", default="auto")
    args = parser.parse_args()
    counts = [int(n) for n in args.adapters.split(",")]
    total = max(counts)

    config = EngineConfig(
        quantization=args.quantization, enable_prefix_caching=False, max_num_seqs=max(64, args.streams),
        max_loras=total, max_lora_rank=args.rank,
    )
    engine = LLMEngine.from_path(default_chat_model_path(), config)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(total):
            write_adapter(Path(tmp) / f"a{i}", engine.model_config, args.rank, seed=i)
            engine.add_lora(f"a{i}", str(Path(tmp) / f"a{i}"))
    prompt = engine.tokenizer.encode(PROMPT)
    scenarios = {"no adapter": [None] * args.streams, "1 adapter": ["a0"] * args.streams}
    for n in counts:
        stride = max(1, n // args.streams)
        scenarios[f"{n} adapters"] = [f"a{(i * stride) % n}" for i in range(args.streams)]
    # Warm-up, which also makes every adapter resident (in slot order).
    throughput(engine, prompt, [f"a{i}" for i in range(total)], 2)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, loras in scenarios.items():
            result = throughput(engine, prompt, loras, args.tokens)
            best[name] = max(best.get(name, result), result)
    print(
        f"{args.streams} streams x {args.tokens} tokens, {len(prompt)}-token prompt, rank-{args.rank} LoRA on "
        f"q/k/v/o/gate/up/down, quantization {engine.runner.quantization}, {torch.get_num_threads()} threads"
    )
    base, one = best["no adapter"][1], best["1 adapter"][1]
    print(f"{'':<14}{'end-to-end tok/s':>18}{'decode tok/s':>14}{'vs no adapter':>15}{'vs 1 adapter':>14}")
    for name, (e2e, decode) in best.items():
        print(f"{name:<14}{e2e:>18.1f}{decode:>14.1f}{decode / base:>14.0%}{decode / one:>13.0%}")


if __name__ == "__main__":
    main()
