"""LoRA training step time of our trainer against transformers + peft, on the
default chat model (SmolLM2-135M dequantized to float32), on the same batch.

Both train rank-8 LoRA factors on all seven projections with AdamW, the loss on
the trained tokens only. Ours sends only those positions through the vocabulary
head; transformers computes logits for every position.

    python benchmarks/finetune_lora.py [--steps 5] [--batch 4] [--seq-len 64] [--threads 1]

Prints the mean seconds per step and trained tokens per second of each.
"""

from __future__ import annotations

import argparse
import time

# isort: off
# First: it sets the OpenMP wait policy the server runs with, which torch reads as it loads.
import tramontane  # noqa: F401
import torch

# isort: on
from tramontane.engine import load_checkpoint
from tramontane.engine.defaults import default_chat_model_path
from tramontane.finetune.dataset import Example
from tramontane.finetune.lora import TARGET_MODULES, LoraModel, LoraSpec
from tramontane.finetune.trainer import loss_and_accuracy


def batch_of(tokens: int, batch: int, seq_len: int) -> list[Example]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tokens, (batch, seq_len), generator=generator).tolist()
    # The second half of each sequence is the "assistant turn".
    return [Example(row, [i >= seq_len // 2 for i in range(seq_len)]) for row in ids]


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def ours(checkpoint, examples: list[Example], steps: int) -> float:
    model = LoraModel(checkpoint, LoraSpec(rank=8, alpha=16), len(examples[0].input_ids))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss, _ = loss_and_accuracy(model, examples, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(step, steps)


def peft_transformers(checkpoint, examples: list[Example], steps: int) -> float:
    import peft
    import transformers

    cfg = checkpoint.config
    config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict({name: t.float() for name, t in checkpoint.tensors.items()}, strict=False)
    hf.tie_weights()
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGET_MODULES))
    model = peft.get_peft_model(hf, lora)
    model.train()
    ids = torch.tensor([e.input_ids for e in examples])
    labels = ids.masked_fill(~torch.tensor([e.trained for e in examples]), -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(default_chat_model_path())
    examples = batch_of(checkpoint.config.vocab_size, args.batch, args.seq_len)
    trained = sum(sum(e.trained) for e in examples)
    print(f"{args.batch} x {args.seq_len} tokens per step, {trained} trained, {args.threads} thread(s)")
    for name, run in (("tramontane", ours), ("transformers+peft", peft_transformers)):
        seconds = run(checkpoint, examples, args.steps)
        print(f"{name:>18}: {seconds:.2f} s/step, {trained / seconds:.0f} trained tokens/s")


if __name__ == "__main__":
    main()
