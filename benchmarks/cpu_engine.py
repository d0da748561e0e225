"""CPU speed of our engine against llama.cpp and HF transformers, in one process.

Runs the default model (SmolLM2-135M-Instruct Q4_1 GGUF) through each engine in turn and
prints tokens/s for batch-1 decode, prefill, and aggregate decode at 16 concurrent
streams. llama.cpp (llama-cpp-python) is installed only for this script: `make bench`.

    python benchmarks/cpu_engine.py [--quantization auto] [--tokens 128] [--streams 16]
"""

from __future__ import annotations

import argparse
import os
import time

# isort: off
# First: it sets the OpenMP wait policy the server runs with, which torch reads as it loads.
import tramontane  # noqa: F401
import torch

# isort: on
from tramontane.engine import EngineConfig, LLMEngine, SamplingParams
from tramontane.engine.defaults import default_chat_model_path

PROMPT = (
    "You are a careful assistant. Explain, step by step and in plain words, how a "
    "refrigerator keeps food cold, what the compressor does, and why the back of it is warm."
)


def ours(args) -> dict[str, float]:
    # No prefix caching: every run must compute its prompt for the figures to mean anything.
    config = EngineConfig(quantization=args.quantization, enable_prefix_caching=False)
    engine = LLMEngine.from_path(default_chat_model_path(), config)
    prompt = engine.tokenizer.encode(PROMPT)
    greedy = dict(temperature=0.0, ignore_eos=True)

    def run(n_streams: int, max_tokens: int) -> tuple[float, float]:
        for i in range(n_streams):
            engine.add_request(
                f"{n_streams}-{i}-{time.monotonic()}", prompt, SamplingParams(max_tokens=max_tokens, **greedy)
            )
        start = time.perf_counter()
        first = None
        while engine.has_work():
            engine.step()
            if (
                first is None
                and all(s.num_output_tokens > 0 for s in engine.scheduler.running)
                and not engine.scheduler.waiting
            ):
                first = time.perf_counter()
        end = time.perf_counter()
        return first - start, end - first

    run(1, 8)  # warm-up
    prefill_s, _ = run(1, 1)
    _, decode_s = run(1, args.tokens)
    _, multi_s = run(args.streams, args.tokens)
    return {
        "prefill": len(prompt) / prefill_s,
        "decode_b1": (args.tokens - 1) / decode_s,
        "aggregate": args.streams * (args.tokens - 1) / multi_s,
        "prompt_tokens": len(prompt),
    }


def llama_cpp(args) -> dict[str, float] | None:
    try:
        import llama_cpp
        import numpy as np
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=default_chat_model_path(), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False)

    def timed_eval(tokens: list[int]) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        return time.perf_counter() - start

    timed_eval(prompt)  # warm-up
    prefill_s = timed_eval(prompt)
    llm.reset()
    llm.eval(prompt)
    n_vocab = llm.n_vocab()

    def greedy_next() -> int:
        # The last evaluated token's logits. Llama.scores keeps them only with
        # logits_all=True, which would make llama.cpp project every prompt token.
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    token = greedy_next()
    start = time.perf_counter()
    for _ in range(args.tokens - 1):
        llm.eval([token])
        token = greedy_next()
    decode_s = time.perf_counter() - start
    return {"prefill": len(prompt) / prefill_s, "decode_b1": (args.tokens - 1) / decode_s, "aggregate": None}


def transformers_hf(args) -> dict[str, float] | None:
    try:
        import transformers
    except ImportError:
        return None
    path = default_chat_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    gen = dict(do_sample=False, min_new_tokens=args.tokens, max_new_tokens=args.tokens, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        model(ids)
        start = time.perf_counter()
        model(ids)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, **gen)
        decode_s = time.perf_counter() - start - prefill_s
        batch = ids.repeat(args.streams, 1)
        start = time.perf_counter()
        model.generate(batch, attention_mask=torch.ones_like(batch), **gen)
        multi_s = time.perf_counter() - start
    return {
        "prefill": ids.shape[1] / prefill_s,
        "decode_b1": (args.tokens - 1) / decode_s,
        "aggregate": args.streams * args.tokens / multi_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantization", default="auto", choices=["auto", "none", "bf16", "int8", "int4"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    policy = os.environ.get("OMP_WAIT_POLICY", "libgomp default")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU {capability}, OMP_WAIT_POLICY {policy}")
    rows = {"tramontane (" + args.quantization + ")": ours(args)}
    rows["llama.cpp"] = llama_cpp(args)
    rows["HF transformers (f32)"] = transformers_hf(args)
    print(f"\n{'engine':<26}{'prefill tok/s':>15}{'decode b=1 tok/s':>19}{f'{args.streams} streams tok/s':>18}")
    for name, r in rows.items():
        if r is None:
            print(f"{name:<26}{'not installed':>15}")
            continue
        agg = "n/a (no batching)" if r["aggregate"] is None else f"{r['aggregate']:.0f}"
        print(f"{name:<26}{r['prefill']:>15.0f}{r['decode_b1']:>19.1f}{agg:>18}")


if __name__ == "__main__":
    main()
