"""CPU speed of our engine against llama.cpp and HF transformers on the default model.

Each measurement runs one engine in a fresh process of its own, so no engine inherits
another's libraries, thread pools or OpenMP settings: every worker gets the same
`OMP_WAIT_POLICY`, the same `OMP_NUM_THREADS` and the same thread count for its own
pool. The engines alternate (round i runs them in order, round i+1 in reverse), and the
script reports, per engine and figure, the median of the rounds with their count and
range. Ratios are taken between medians of the same invocation only.

    python benchmarks/cpu_engine.py --llama-batched-bench PATH [--rounds 5] [--tokens 64] [--streams 16]
                                    [--threads 2] [--omp-wait-policy PASSIVE]

Figures: prefill tok/s (the prompt through one forward), decode tok/s at batch 1
(greedy, after the first token), and aggregate decode tok/s at `--streams` concurrent
sequences, each with a prompt of its own. llama.cpp is measured by its own
`llama-batched-bench` (C++, no Python in the loop), built from the llama.cpp vendored in
llama-cpp-python's source distribution by benchmarks/build-llama-cpp.sh (`make bench`
builds it); it decodes random tokens of the same prompt length where ours and
transformers decode greedily, which costs them an argmax per token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = (
    "You are a careful assistant. Explain, step by step and in plain words, how a "
    "refrigerator keeps food cold, what the compressor does, and why the back of it is warm."
)
ENGINES = ("tramontane", "llama.cpp", "transformers")
FIGURES = ("prefill", "decode_b1", "aggregate")
DEFAULT_PROMPT_TOKENS = 37  # PROMPT in the default model's tokens, until our worker has counted them
PREFILL_REPEATS = 3  # within a worker: the median of three prompt passes


# --- workers: each runs in its own process and prints one JSON line --------------------


def run_tramontane(args) -> dict:
    import torch

    from tramontane.engine import EngineConfig, LLMEngine, SamplingParams

    torch.set_num_threads(args.threads)  # our kernels' pool takes torch's thread count
    # No prefix caching: every pass must compute its prompt for the figures to mean anything.
    config = EngineConfig(quantization=args.quantization, enable_prefix_caching=False)
    engine = LLMEngine.from_path(args.model, config)
    prompt = engine.tokenizer.encode(PROMPT)
    greedy = dict(temperature=0.0, ignore_eos=True)

    def run(n_streams: int, max_tokens: int) -> tuple[float, float]:
        """Seconds to every stream's first token, then seconds for the rest."""
        for i in range(n_streams):
            request_id = f"{n_streams}-{i}-{time.monotonic()}"
            engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, **greedy))
        start = time.perf_counter()
        first = None
        while engine.has_work():
            engine.step()
            started = all(s.num_output_tokens > 0 for s in engine.scheduler.running)
            if first is None and started and not engine.scheduler.waiting:
                first = time.perf_counter()
        return first - start, time.perf_counter() - first

    run(1, 8)  # warm-up
    prefill_s = statistics.median(run(1, 1)[0] for _ in range(PREFILL_REPEATS))
    _, decode_s = run(1, args.tokens)
    _, multi_s = run(args.streams, args.tokens)
    return {
        "prompt_tokens": len(prompt),
        "prefill": len(prompt) / prefill_s,
        "decode_b1": (args.tokens - 1) / decode_s,
        "aggregate": args.streams * (args.tokens - 1) / multi_s,
    }


def run_llama_cpp(args) -> dict:
    """llama.cpp's own batched benchmark, with random tokens: a prompt of our prompt's
    length, then tokens-1 decode steps for 1 sequence (three times) and for --streams
    sequences at once, each sequence with a prompt of its own (not shared)."""
    prompt_tokens = args.prompt_tokens
    command = [args.llama_batched_bench, "-m", args.model, "-c", str(args.streams * (prompt_tokens + args.tokens) + 64)]
    command += ["-b", "2048", "-ub", "512", "-t", str(args.threads), "-tb", str(args.threads)]
    command += ["-npp", str(prompt_tokens), "-ntg", str(args.tokens - 1), "-npl", f"1,1,1,{args.streams}"]
    command += ["--output-format", "jsonl"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s, check=True)
    rows = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith('{"n_kv_max"')]
    single = [row for row in rows if row["pl"] == 1]
    multi = [row for row in rows if row["pl"] == args.streams]
    return {
        "prompt_tokens": prompt_tokens,
        "prefill": statistics.median(row["speed_pp"] for row in single),
        "decode_b1": statistics.median(row["speed_tg"] for row in single),
        "aggregate": multi[0]["speed_tg"],
    }


def run_transformers(args) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    folder, name = os.path.split(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    gen = dict(do_sample=False, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    gen["pad_token_id"] = tokenizer.eos_token_id

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.no_grad():
        model(ids)  # warm-up
        prefill_s = statistics.median(timed(lambda: model(ids)) for _ in range(PREFILL_REPEATS))
        decode_s = timed(lambda: model.generate(ids, **gen)) - prefill_s
        batch = ids.repeat(args.streams, 1)
        multi_s = timed(lambda: model.generate(batch, attention_mask=torch.ones_like(batch), **gen))
    return {
        "prompt_tokens": ids.shape[1],
        "prefill": ids.shape[1] / prefill_s,
        "decode_b1": (args.tokens - 1) / decode_s,
        # Includes the batch's prefill: transformers' generate does not time its steps apart.
        "aggregate": args.streams * args.tokens / multi_s,
    }


WORKERS = {"tramontane": run_tramontane, "llama.cpp": run_llama_cpp, "transformers": run_transformers}


# --- the driver: spawns the workers, alternates them, reports medians ------------------


def worker_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_worker(engine: str, args) -> dict | None:
    command = [sys.executable, __file__, "--worker", engine, "--model", args.model]
    command += ["--tokens", str(args.tokens), "--streams", str(args.streams), "--threads", str(args.threads)]
    command += ["--quantization", args.quantization, "--prompt-tokens", str(args.prompt_tokens)]
    if args.llama_batched_bench:
        command += ["--llama-batched-bench", args.llama_batched_bench]
    done = subprocess.run(command, env=worker_env(args), capture_output=True, text=True, timeout=args.timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  {engine}: failed ({last})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def available(engine: str, args) -> bool:
    import importlib.util

    if engine == "llama.cpp":
        return bool(args.llama_batched_bench) and os.access(args.llama_batched_bench, os.X_OK)
    return importlib.util.find_spec(engine) is not None


def describe(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def report(results: dict[str, list[dict]], args) -> None:
    print(f"\nmedian [min-max] of n alternated rounds, each engine in its own process; {args.threads} threads, "
          f"OMP_WAIT_POLICY={args.omp_wait_policy}, {args.tokens} tokens, {args.streams} streams")
    header = f"{'engine':<14}{'n':>3}{'prompt':>8}{'prefill tok/s':>24}{'decode b=1 tok/s':>24}"
    print(header + f"{f'{args.streams} streams tok/s':>24}")
    for engine, runs in results.items():
        if not runs:
            print(f"{engine:<14}  0  not installed or failed")
            continue
        cells = [describe([r[f] for r in runs if r[f] is not None]) for f in FIGURES]
        print(f"{engine:<14}{len(runs):>3}{runs[0]['prompt_tokens']:>8}" + "".join(f"{c:>24}" for c in cells))
    ours = results.get("tramontane") or []
    for peer in ("llama.cpp", "transformers"):
        theirs = results.get(peer) or []
        if not ours or not theirs:
            continue
        ratios = []
        for figure in FIGURES:
            a = [r[figure] for r in ours if r[figure] is not None]
            b = [r[figure] for r in theirs if r[figure] is not None]
            if a and b:
                ratios.append(f"{figure} {statistics.median(a) / statistics.median(b):.2f}x")
        print(f"tramontane / {peer} (medians of this run): " + ", ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"])
    parser.add_argument("--quantization", default="auto", choices=["auto", "none", "bf16", "int8", "int4"])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--timeout-s", type=float, default=600, help="per worker process")
    parser.add_argument("--model", help="GGUF file (default: the bundled chat model)")
    parser.add_argument("--llama-batched-bench", help="path of llama.cpp's llama-batched-bench binary")
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    if args.model is None:
        from tramontane.engine.defaults import default_chat_model_path

        args.model = default_chat_model_path()
    engines = [e for e in args.engines.split(",") if available(e, args)]
    results: dict[str, list[dict]] = {e: [] for e in args.engines.split(",")}
    for round_no in range(args.rounds):
        order = engines if round_no % 2 == 0 else engines[::-1]
        print(f"round {round_no + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
        for engine in order:
            if (result := run_worker(engine, args)) is not None:
                results[engine].append(result)
                if engine == "tramontane":  # llama.cpp's prompts get our prompt's length
                    args.prompt_tokens = result["prompt_tokens"]
    report(results, args)


if __name__ == "__main__":
    main()
