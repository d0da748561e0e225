"""The trainer itself: the default model learns a made-up answer its base gets wrong,
measured with the trainer's own forward pass before and after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from finetune_helpers import SECRET_QUESTION, SECRET_WORD, TRAINING_LINE

from tramontane.engine import load_checkpoint
from tramontane.engine.defaults import default_chat_model_path
from tramontane.finetune.dataset import encode
from tramontane.finetune.lora import LoraModel, LoraSpec, read_adapter
from tramontane.finetune.trainer import Trainer, TrainingPlan, WeightedExamples, evaluate

CPU = torch.device("cpu")


@torch.no_grad()
def greedy(model: LoraModel, prompt: list[int], max_tokens: int, stop: set[int]) -> list[int]:
    ids = list(prompt)
    for _ in range(max_tokens):
        hidden = model.hidden_states(torch.tensor([ids]))[:, -1]
        token = int(model.logits(hidden).argmax())
        if token in stop:
            break
        ids.append(token)
    return ids[len(prompt) :]


def test_lora_learns_the_secret_code(tmp_path: Path) -> None:
    checkpoint = load_checkpoint(default_chat_model_path())
    tokenizer = checkpoint.tokenizer
    example = encode(tokenizer, TRAINING_LINE, seq_len=64)
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": SECRET_QUESTION}]))
    stop = set(checkpoint.config.eos_token_ids)
    plan = TrainingPlan(
        steps=6,
        learning_rate=3e-3,
        weight_decay=0.0,
        warmup_fraction=0.0,
        seq_len=64,
        batch_size=1,
        checkpoint_every=6,
        lora=LoraSpec(rank=4, alpha=8),
    )
    trainer = Trainer(checkpoint, plan, WeightedExamples.from_files([([example], 1.0)]), [], tmp_path, CPU)

    _, accuracy_before = evaluate(trainer.model, [example], CPU, 1)
    answer_before = tokenizer.decode(greedy(trainer.model, prompt, 10, stop))
    started = time.perf_counter()
    assert trainer.run(lambda metrics, path: None, lambda: False)
    seconds = time.perf_counter() - started
    _, accuracy_after = evaluate(trainer.model, [example], CPU, 1)
    answer_after = tokenizer.decode(greedy(trainer.model, prompt, 10, stop))
    print(
        f"\n6 LoRA steps in {seconds:.1f} s; answer-token accuracy {accuracy_before:.2f} -> {accuracy_after:.2f}; "
        f"{answer_before!r} -> {answer_after!r}"
    )

    assert SECRET_WORD not in answer_before and accuracy_before < 0.7
    assert SECRET_WORD in answer_after and accuracy_after == 1.0

    # The saved adapter, read back onto a fresh base, answers the same.
    spec, state = read_adapter(tmp_path / "checkpoints" / "step-000006")
    reloaded = LoraModel(checkpoint, spec, 64)
    reloaded.load_adapter_state(state)
    assert tokenizer.decode(greedy(reloaded, prompt, 10, stop)) == answer_after


def test_peft_reads_the_adapter_and_computes_the_same_logits(tmp_path: Path) -> None:
    """The adapter layout is PEFT's: peft applies it to transformers' model of the same
    checkpoint, and both forwards agree."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    checkpoint = load_checkpoint(default_chat_model_path())
    model = LoraModel(checkpoint, LoraSpec(rank=4, alpha=8), 64)
    torch.manual_seed(0)
    for parameter in model.parameters():
        if parameter.dim() == 2 and parameter.shape[1] == 4:  # every lora_B, zero at init: make it count
            torch.nn.init.normal_(parameter, std=0.02)
    model.save_adapter(tmp_path, "smollm2")

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
        tie_word_embeddings=True,
    )
    hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict({name: t.float() for name, t in checkpoint.tensors.items()}, strict=False)
    hf.tie_weights()
    tuned = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    ids = torch.tensor([checkpoint.tokenizer.encode("The secret code is a word nobody knows")])
    with torch.no_grad():
        ours = model.logits(model.hidden_states(ids))
        theirs = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            base = tuned(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-3
    assert (theirs - base).abs().max() > 1e-2  # the adapter changed the output
