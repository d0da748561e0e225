"""CPU time of one 512x512 image's prefill on the tiny random Pixtral of the tests,
and where it goes.

    PYTHONPATH=src:tests python benchmarks/vision_prefill.py [--rounds 7] [--side 512] [--threads N]

Each round takes a new random image (so the prefix cache never serves it) and times:

- preprocess: mistral-common's tokenization of the request: the image resized to
  its patch grid and normalised, the prompt's [IMG]/[IMG_BREAK]/[IMG_END] layout;
- vision: the encoder and projector over the image's patches (1024 patches at 512 px);
- prefill: the engine's steps from the request's admission to its first token (the
  vision model included: it runs inside the first step that reaches the image),
  in chunks of the engine's default token budget;
- text: prefill minus vision.

The tiny model's weights are the tests' (a 2-layer, 32-wide encoder and a 2-layer,
64-wide decoder over a 131072-token vocabulary), so the figures measure the engine's
fixed costs around an image, not a real model's arithmetic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from percentiles import summary
from PIL import Image
from tiny_pixtral import hf_vision_model, write_native_vision

from tramontane.engine import EngineConfig, ImageInput, LLMEngine, SamplingParams, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = load_checkpoint(str(write_native_vision(hf_vision_model("llava"), Path(tmp) / "pixtral")))
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=512))
    tokenizer, runner = checkpoint.tokenizer, engine.runner
    times: dict[str, list[float]] = {"preprocess": [], "vision": [], "prefill": [], "text": []}
    prompt_tokens = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up, and is not counted
        rng = np.random.default_rng(round_)
        image = Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8))
        parts = [{"type": "text", "text": "Describe:"}, {"type": "image", "image": image}]
        messages = [{"role": "user", "content": parts}]
        start = time.perf_counter()
        ids, pixels = tokenizer.encode_chat_with_images(messages, None)
        images = [ImageInput.from_array(p) for p in pixels]
        preprocess = time.perf_counter() - start
        start = time.perf_counter()
        runner.encode_image(images[0].pixels)
        vision = time.perf_counter() - start
        start = time.perf_counter()
        engine.add_request(f"r{round_}", ids, SamplingParams(temperature=0, max_tokens=1), images=images)
        while engine.has_work():
            engine.step()
        prefill = time.perf_counter() - start
        prompt_tokens = len(ids)
        if round_:
            for name, value in (("preprocess", preprocess), ("vision", vision), ("prefill", prefill),
                                ("text", prefill - vision)):
                times[name].append(value)
    print(f"{args.side}x{args.side} image, {prompt_tokens} prompt tokens, {args.threads} threads, "
          f"chunks of {engine.config.max_num_batched_tokens} tokens")
    for name, values in times.items():
        print(f"{name:>10}: {summary(values, 'ms', 1000.0)}")


if __name__ == "__main__":
    main()
