"""YaRN-scaled rotary embeddings against transformers, from HF folders (Llama,
Qwen3) and from Mistral's params.json `yarn` section.

Tiny random checkpoints whose YaRN factor stretches a short original context
(32 positions) by 4, so that the interpolated, extrapolated and ramped frequency
bands all occur among the head's 16 pairs; prompts run past the original context.
Float32: last-position logits within 1e-4, greedy tokens identical.
"""

import json
from pathlib import Path

import pytest
import torch
from tiny_mistral import hf_model, write_native

from tramontane.engine import EngineConfig, LLMEngine, SamplingParams, load_checkpoint
from tramontane.engine.errors import ModelLoadError

transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is a city on the Seine, " * 3, "def fibonacci(n):\n    return", "1, 2, 3, 4, 5, 6, 7,"]
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}


def prefill_logits(checkpoint, ids: list[int]) -> torch.Tensor:
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=32, quantization="none"))
    engine.add_request("r", ids, SamplingParams(max_tokens=1))
    logits, _ = engine.runner.execute(engine.scheduler.schedule())
    return logits[0]


def assert_matches(model, checkpoint, prompts: list[list[int]], run) -> None:
    assert max(len(ids) for ids in prompts) > 32  # past the original context
    for ids in prompts:
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(prefill_logits(checkpoint, ids), want, atol=1e-4, rtol=0)
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=64, quantization="none"))
    engine.add_request("g", prompts[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    out = model.generate(torch.tensor([prompts[0]]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert run(engine)[("g", 0)].token_ids == out[0, len(prompts[0]) :].tolist()


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.hf_tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    "arch, rope",
    [
        ("llama", {**YARN, "rope_theta": 10_000.0}),  # the attention factor from the factor alone
        ("llama", {**YARN, "rope_theta": 10_000.0, "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16}),
        ("qwen3", {**YARN, "rope_theta": 1_000_000.0, "attention_factor": 1.2, "truncate": False}),
    ],
    ids=["llama", "llama-mscale", "qwen3-attention-factor"],
)
def test_hf_yarn_matches_transformers(arch, rope, smollm_checkpoint, tmp_path, run):
    tok = smollm_checkpoint.tokenizer
    torch.manual_seed(0)
    common = dict(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_parameters=rope,
    )
    if arch == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common)).eval()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()
    checkpoint = load_checkpoint(str(save(model, tok, tmp_path)))
    assert checkpoint.config.rope_scaling["rope_type"] == "yarn"
    assert_matches(model, checkpoint, [tok.encode(p) for p in PROMPTS], run)


def test_qwen3_gguf_yarn_matches_transformers(smollm_checkpoint, tmp_path, run):
    """A GGUF file's rope.scaling keys (what llama.cpp's converter writes: type,
    factor, original context) give transformers' YaRN with its defaults."""
    pytest.importorskip("gguf")
    from test_qwen3 import write_gguf

    tok = smollm_checkpoint.tokenizer
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, rope_parameters={**YARN, "rope_theta": 1_000_000.0},
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    write_gguf(model, tmp_path / "m.gguf")
    checkpoint = load_checkpoint(str(tmp_path / "m.gguf"))
    assert checkpoint.config.rope_scaling == {**YARN, "original_max_position_embeddings": 32}
    assert_matches(model, checkpoint, [tok.encode(p) for p in PROMPTS], run)


def test_mistral_params_yarn_loads_as_transformers_yarn(tmp_path, run):
    """params.json's yarn (beta, alpha; no attention factor) is transformers' YaRN
    with those rotation bounds and mscale = mscale_all_dim = 1."""
    rope = {**YARN, "rope_theta": 1_000_000.0, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    model = hf_model(tokenizer="tekken", rope_parameters=rope, max_position_embeddings=128)
    folder = write_native(model, tmp_path / "native", tokenizer="tekken")
    params = json.loads((folder / "params.json").read_text())
    params["yarn"] = {"factor": 4.0, "original_max_position_embeddings": 32, "beta": 16.0, "alpha": 2.0}
    (folder / "params.json").write_text(json.dumps(params))
    native = load_checkpoint(str(folder))
    assert native.config.rope_scaling["beta_fast"] == 16.0 and native.config.rope_scaling["beta_slow"] == 2.0
    prompts = [native.tokenizer.encode(p) for p in PROMPTS]
    assert_matches(model, native, prompts, run)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"yarn": {"factor": 4.0, "original_max_position_embeddings": 32, "apply_scale": True}}, "apply_scale"),
        ({"yarn": {"factor": 4.0, "original_max_position_embeddings": 32, "mscale": 2}}, "does not know"),
        ({"llama_4_scaling": {"original_max_position_embeddings": 32, "beta": 0.1}}, "llama_4_scaling"),
    ],
)
def test_unsupported_mistral_rope_settings_are_refused(change, message, tmp_path):
    folder = write_native(hf_model(tokenizer="tekken"), tmp_path / "m", tokenizer="tekken")
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **change}))
    with pytest.raises(ModelLoadError, match=message):
        load_checkpoint(str(folder))
