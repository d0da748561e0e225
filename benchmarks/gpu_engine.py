"""Our engine's GPU path against HF transformers, on the same random weights.

    python benchmarks/gpu_engine.py                        # on a GPU: Mistral-7B and a Mixtral-architecture MoE
    python benchmarks/gpu_engine.py --device cpu --tiny    # tiny models on the CPU (the test suite runs this)

Each engine runs in its own process (a fresh CUDA context and allocator) and builds
the same bf16 weights from one seed. Per engine and architecture it measures:
batch-1 decode tok/s (median of runs, after the first token), time to first token
for a 512-token prompt (p50 over fresh prompts, so no prefix-cache hits), offline
output tok/s on a batch of requests (128-1024 prompt tokens, 256 output tokens, one
run after a shorter warm-up run), and, ours only, the wake from light sleep. HF
transformers' offline figure comes from its continuous-batching `generate_batch`,
on fewer requests (its rate is what counts; its full run would not fit the budget).

Prints a markdown table and one JSON line per run; `--out-dir` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Sizes:
    decode_prompt: int = 128
    decode_tokens: int = 256
    hf_decode_tokens: int = 128
    decode_runs: int = 3
    ttft_prompt: int = 512
    ttft_runs: int = 5
    requests: int = 512
    hf_requests: int = 64
    prompt_range: tuple[int, int] = (128, 1024)
    output_tokens: int = 256
    warmup_output_tokens: int = 16
    wake_runs: int = 3
    kv_cache_gb: float = 30.0
    max_num_seqs: int = 256
    max_batched_tokens: int = 4096


TINY = Sizes(decode_prompt=8, decode_tokens=6, hf_decode_tokens=6, decode_runs=2, ttft_prompt=24, ttft_runs=2,
             requests=6, hf_requests=3, prompt_range=(8, 24), output_tokens=6, warmup_output_tokens=2,
             wake_runs=2, kv_cache_gb=0.002, max_num_seqs=8, max_batched_tokens=64)


def model_config(arch: str, tiny: bool):
    from tramontane.engine.config import ModelConfig

    if tiny:
        dims = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    else:  # Mistral-7B v0.3's shape; the MoE keeps Mixtral-8x7B's layer, 8 layers deep (23 GB).
        dims = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    moe = dict(num_local_experts=8, num_experts_per_tok=2, num_hidden_layers=2 if tiny else 8)
    return ModelConfig(architecture=arch, **{**dims, **(moe if arch == "mixtral" else {})},
                       rope_theta=1e6, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=[2])


def random_weights(cfg, device, seed: int = 0) -> dict:
    """Our (HF-named) tensors, bf16, N(0, 0.02) like HF's init, norms at 1."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16) * 0.02

    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    ones = torch.ones(h, dtype=torch.bfloat16, device=device)
    t = {"model.embed_tokens.weight": w(cfg.vocab_size, h), "model.norm.weight": ones,
         "lm_head.weight": w(cfg.vocab_size, h)}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = ones
        t[p + "post_attention_layernorm.weight"] = ones
        for name, rows in (("q", cfg.num_attention_heads * d), ("k", cfg.num_key_value_heads * d),
                           ("v", cfg.num_key_value_heads * d)):
            t[p + f"self_attn.{name}_proj.weight"] = w(rows, h)
        t[p + "self_attn.o_proj.weight"] = w(h, cfg.num_attention_heads * d)
        if cfg.is_moe:
            t[p + "block_sparse_moe.gate.weight"] = w(cfg.num_local_experts, h)
            for e in range(cfg.num_local_experts):
                t[p + f"block_sparse_moe.experts.{e}.w1.weight"] = w(i, h)
                t[p + f"block_sparse_moe.experts.{e}.w3.weight"] = w(i, h)
                t[p + f"block_sparse_moe.experts.{e}.w2.weight"] = w(h, i)
        else:
            for name, shape in (("gate", (i, h)), ("up", (i, h)), ("down", (h, i))):
                t[p + f"mlp.{name}_proj.weight"] = w(*shape)
    return t


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over the ids ("t0".."tN"): the benchmark feeds ids, and
    the engine only needs to detokenize its output."""
    import tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    from tramontane.engine.tokenizer import Tokenizer

    hf = tokenizers.Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    hf.pre_tokenizer = WhitespaceSplit()
    return Tokenizer(hf, bos_token_id=1, eos_token_ids=[2], chat_templates={}, byte_level=False)


def prompts(count: int, lengths: tuple[int, int], vocab: int, seed: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (count,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in sizes]


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Result:
    engine: str
    arch: str
    device: str
    decode_tok_s: float | None = None
    decode_runs: int = 0
    ttft_ms_p50: float | None = None
    ttft_runs: int = 0
    offline_tok_s: float | None = None
    offline_requests: int = 0
    offline_output_tokens: int = 0
    wake_s: float | None = None
    wake_runs: int = 0
    notes: list[str] = field(default_factory=list)


# -- ours ------------------------------------------------------------------------


def run_ours(args, sizes: Sizes, result: Result) -> None:
    from tramontane.engine import EngineConfig, LLMEngine, SamplingParams
    from tramontane.engine.checkpoint import Checkpoint

    cfg = model_config(args.arch, args.tiny)
    checkpoint = Checkpoint(cfg, random_weights(cfg, args.device), word_tokenizer(cfg.vocab_size), args.arch)
    # While the engine is built, the checkpoint's tensors and the runner's fused
    # copies are both on the GPU (46 GB for the MoE): its cache gets less room.
    kv_gb = sizes.kv_cache_gb if not cfg.is_moe or args.tiny else sizes.kv_cache_gb / 2
    config = EngineConfig(
        device=args.device, attention_backend="flex", quantization=args.quantization,
        kv_cache_memory_gb=kv_gb, max_num_seqs=sizes.max_num_seqs,
        max_num_batched_tokens=sizes.max_batched_tokens, max_waiting_requests=sizes.requests * 2,
        compile_attention=args.device.startswith("cuda"),
    )
    engine = LLMEngine(checkpoint, config)
    del checkpoint  # the runner keeps its own (fused) copies

    ids = iter(range(10**9))

    def generate(batch: list[list[int]], max_tokens: int) -> tuple[float, float, int]:
        """(seconds to the first token, total seconds, tokens generated)."""
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for prompt in batch:
            engine.add_request(str(next(ids)), prompt, params)
        start, first, generated = time.perf_counter(), None, 0
        while engine.has_work():
            for out in engine.step():
                n = sum(len(c.delta_token_ids) for c in out.outputs)
                if n and first is None:
                    first = time.perf_counter() - start
                generated += n
        return first or 0.0, time.perf_counter() - start, generated

    vocab = cfg.vocab_size
    generate(prompts(1, (sizes.decode_prompt,) * 2, vocab, 1), sizes.decode_tokens)  # compile, capture
    rates = []
    for run in range(sizes.decode_runs):
        first, total, n = generate(prompts(1, (sizes.decode_prompt,) * 2, vocab, 10 + run), sizes.decode_tokens)
        rates.append((n - 1) / (total - first))
    result.decode_tok_s, result.decode_runs = statistics.median(rates), len(rates)

    generate(prompts(1, (sizes.ttft_prompt,) * 2, vocab, 2), 1)
    ttfts = [generate(prompts(1, (sizes.ttft_prompt,) * 2, vocab, 20 + r), 1)[0] for r in range(sizes.ttft_runs)]
    result.ttft_ms_p50, result.ttft_runs = statistics.median(ttfts) * 1e3, len(ttfts)

    batch = prompts(sizes.requests, sizes.prompt_range, vocab, 3)
    generate(prompts(sizes.requests, sizes.prompt_range, vocab, 4), sizes.warmup_output_tokens)
    _, total, n = generate(batch, sizes.output_tokens)
    result.offline_tok_s, result.offline_requests, result.offline_output_tokens = n / total, len(batch), n
    result.notes.append(f"preemptions {engine.stats().num_preemptions}")

    wakes = []
    for _ in range(sizes.wake_runs):
        engine.sleep()
        synchronize(args.device)
        start = time.perf_counter()
        engine.wake_up()
        synchronize(args.device)
        wakes.append(time.perf_counter() - start)
    result.wake_s, result.wake_runs = statistics.median(wakes), len(wakes)


# -- HF transformers ------------------------------------------------------------------


def hf_model(cfg, tensors: dict, device: str):
    """transformers' model of the architecture, holding `tensors` (our names mapped
    to its, including fused expert tensors in recent versions)."""
    import torch
    import transformers

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                  num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                  max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
    if cfg.is_moe:
        config = transformers.MixtralConfig(num_local_experts=cfg.num_local_experts,
                                            num_experts_per_tok=cfg.num_experts_per_tok, **common)
        cls = transformers.MixtralForCausalLM
    else:
        config = transformers.MistralConfig(sliding_window=None, **common)
        cls = transformers.MistralForCausalLM
    # Built in bf16 on the device, then overwritten with the shared weights.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(default)
    state = {name: _hf_tensor(name, tuple(p.shape), tensors, cfg) for name, p in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _hf_tensor(name: str, shape: tuple, tensors: dict, cfg):
    import torch

    if name in tensors:
        return tensors[name]
    layer = name.split(".")[2]
    prefix = f"model.layers.{layer}.block_sparse_moe"
    experts = range(cfg.num_local_experts)
    if name.endswith("mlp.gate.weight"):
        return tensors[f"{prefix}.gate.weight"]
    if name.endswith("experts.gate_up_proj"):
        fused = torch.stack([torch.cat([tensors[f"{prefix}.experts.{e}.w1.weight"],
                                        tensors[f"{prefix}.experts.{e}.w3.weight"]]) for e in experts])
    elif name.endswith("experts.down_proj"):
        fused = torch.stack([tensors[f"{prefix}.experts.{e}.w2.weight"] for e in experts])
    else:
        raise KeyError(f"no tensor for transformers' {name}")
    return fused if tuple(fused.shape) == shape else fused.transpose(1, 2).contiguous()


def run_hf(args, sizes: Sizes, result: Result) -> None:
    import torch
    import transformers

    cfg = model_config(args.arch, args.tiny)
    tensors = random_weights(cfg, args.device)
    model = hf_model(cfg, tensors, args.device)
    del tensors
    vocab = cfg.vocab_size

    def generate(prompt: list[int], new_tokens: int) -> float:
        ids = torch.tensor([prompt], device=args.device)
        synchronize(args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        synchronize(args.device)
        return time.perf_counter() - start

    n = sizes.hf_decode_tokens
    generate(prompts(1, (sizes.decode_prompt,) * 2, vocab, 1)[0], n)
    rates = []
    for run in range(sizes.decode_runs):
        prompt = prompts(1, (sizes.decode_prompt,) * 2, vocab, 10 + run)[0]
        rates.append((n - 1) / (generate(prompt, n) - generate(prompt, 1)))
    result.decode_tok_s, result.decode_runs = statistics.median(rates), len(rates)
    result.notes.append(f"decode over {n} tokens")

    ttfts = [generate(prompts(1, (sizes.ttft_prompt,) * 2, vocab, 20 + r)[0], 1) for r in range(sizes.ttft_runs)]
    result.ttft_ms_p50, result.ttft_runs = statistics.median(ttfts) * 1e3, len(ttfts)

    if args.tiny or args.arch == "mixtral":
        # generate_batch takes minutes even for tiny models on CPUs, and HF's
        # Mixtral loops over experts: neither fits the run's time budget.
        result.notes.append("offline skipped (time budget)")
        return
    if not hasattr(model, "generate_batch"):
        result.notes.append(f"transformers {transformers.__version__} has no generate_batch")
        return
    batch = prompts(sizes.hf_requests, sizes.prompt_range, vocab, 3)
    # No end-of-sequence token: every request runs to its output length.
    config = transformers.GenerationConfig(max_new_tokens=sizes.output_tokens, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate_batch(inputs=batch[:4], generation_config=config)  # warm-up
        synchronize(args.device)
        start = time.perf_counter()
        outputs = model.generate_batch(inputs=batch, generation_config=config)
        synchronize(args.device)
    total = time.perf_counter() - start
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    result.offline_tok_s, result.offline_requests, result.offline_output_tokens = generated / total, len(batch), generated


# -- driver ---------------------------------------------------------------------------


def worker(args) -> None:
    sizes = TINY if args.tiny else Sizes()
    if args.requests:
        sizes.requests = args.requests
    result = Result(engine=args.engine, arch=args.arch, device=args.device)
    try:
        (run_ours if args.engine == "ours" else run_hf)(args, sizes, result)
    except Exception as e:  # a failed measurement is reported, the other runs go on
        result.notes.append(f"failed: {type(e).__name__}: {e}"[:500])
    print("RESULT " + json.dumps(asdict(result)), flush=True)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{device} ({os.cpu_count()} cores)"


def table(results: list[dict]) -> str:
    def fmt(value, digits=1):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = ["| arch | engine | batch-1 decode tok/s (runs) | TTFT p50 ms (runs) | offline tok/s (requests) "
             "| wake s (runs) | notes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| {r['arch']} | {r['engine']} | {fmt(r['decode_tok_s'])} ({r['decode_runs']}) "
            f"| {fmt(r['ttft_ms_p50'])} ({r['ttft_runs']}) | {fmt(r['offline_tok_s'], 0)} ({r['offline_requests']}) "
            f"| {fmt(r['wake_s'], 2)} ({r['wake_runs']}) | {'; '.join(r['notes'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and request counts (CPU tests)")
    parser.add_argument("--archs", default="mistral,mixtral")
    parser.add_argument("--engines", default="ours,hf")
    parser.add_argument("--quantization", default="auto", help="ours: auto (bf16), fp8 or int4")
    parser.add_argument("--requests", type=int, default=0, help="offline requests (default 512; tiny 6)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per engine process at most")
    parser.add_argument("--budget", type=float, default=470, help="seconds for the whole run (device leases are short)")
    parser.add_argument("--out-dir")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "src"))
    if args.worker:
        worker(args)
        return

    results = []
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")])}
    for arch in args.archs.split(","):
        for engine in args.engines.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--engine", engine, "--arch", arch,
                   "--device", args.device, "--quantization", args.quantization, "--requests", str(args.requests)]
            cmd += ["--tiny"] if args.tiny else []
            start = time.perf_counter()
            timeout = min(args.timeout, args.budget - (start - started))
            if timeout < 30:
                results.append(asdict(Result(engine, arch, args.device, notes=["skipped: time budget spent"])))
                continue
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                result = json.loads(lines[-1][7:]) if lines else asdict(Result(
                    engine, arch, args.device, notes=[f"exit {proc.returncode}: {proc.stderr[-400:]}"]))
            except subprocess.TimeoutExpired:
                result = asdict(Result(engine, arch, args.device, notes=[f"timed out after {timeout:.0f} s"]))
            result["seconds"] = round(time.perf_counter() - start, 1)
            print("RESULT " + json.dumps(result), flush=True)
            results.append(result)
    header = f"Device: {device_name(args.device)}; quantization {args.quantization}"
    report = header + "\n\n" + table(results)
    print(report)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "gpu_engine.md"), "w") as f:
            f.write(report + "\n")
        with open(os.path.join(args.out_dir, "gpu_engine.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
