"""Gemma 3 (text) against transformers' reference implementation, from a HF folder.

A tiny random checkpoint from transformers' Gemma3TextConfig, with sliding layers
among full ones (a 4-token window, shorter than the prompts), a linearly scaled
rotary base on the full layers and the sliding layers' own, and a query scale
other than the head size's. The vocabulary is the bundled SmolLM2 tokenizer's.
Float32: greedy tokens identical, last-position logits within 1e-4.
"""

import pytest
import torch

from tramontane.engine import EngineConfig, LLMEngine, SamplingParams, load_checkpoint
from tramontane.engine.errors import ModelLoadError

transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is a city on the Seine", "def fibonacci(n):\n    return", "1, 2, 3, 4, 5,"]
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def tiny(vocab: int):
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4, layer_types=LAYER_TYPES,
        max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights: transformers starts Gemma's at zero, i.e. a scale of one
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    return model


def prefill_logits(checkpoint, ids: list[int]) -> torch.Tensor:
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=32, quantization="none"))
    engine.add_request("r", ids, SamplingParams(max_tokens=1))
    logits, _ = engine.runner.execute(engine.scheduler.schedule())
    return logits[0]


def hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def gemma(smollm_checkpoint, tmp_path_factory):
    tok = smollm_checkpoint.tokenizer
    model = tiny(tok.vocab_size)
    folder = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(folder)
    tok.hf_tokenizer.save(str(folder / "tokenizer.json"))
    return model, load_checkpoint(str(folder)), [tok.encode(p) for p in PROMPTS], folder


def test_config_reads_per_layer_windows_and_rotary(gemma):
    _, checkpoint, _, _ = gemma
    config = checkpoint.config
    assert config.architecture == "gemma3_text" and config.layer_types == LAYER_TYPES
    assert [config.is_sliding(i) for i in range(4)] == [True, True, False, True] and config.mixes_windows
    assert config.rope_theta == 1_000_000.0 and config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert config.rope_local_theta == 10_000.0 and config.attention_scale == 24**-0.5
    assert config.tie_word_embeddings


def test_logits_and_greedy_tokens_match_transformers(gemma, run):
    model, checkpoint, prompts, _ = gemma
    assert min(len(ids) for ids in prompts) > 4  # past the window
    for ids in prompts:
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(prefill_logits(checkpoint, ids), want, atol=1e-4, rtol=0)
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=64, quantization="none"))
    for i, ids in enumerate(prompts):  # decoded together, in one batch
        engine.add_request(str(i), ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    results = run(engine)
    for i, ids in enumerate(prompts):
        assert results[(str(i), 0)].token_ids == hf_greedy(model, ids, 12)
    # The CPU default, 4-bit weights, runs it too.
    quantized = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=64, quantization="int4"))
    quantized.add_request("q", prompts[0], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(run(quantized)[("q", 0)].token_ids) == 4


def test_soft_capping_is_refused(gemma, tmp_path):
    import json
    import shutil

    _, _, _, folder = gemma
    shutil.copytree(folder, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    with pytest.raises(ModelLoadError, match="soft-capping"):
        load_checkpoint(str(tmp_path / "m"))


def test_transformers_4_config_keys_load_the_same_model(gemma, tmp_path):
    """Gemma 3 configs as published (transformers 4): rope_theta, rope_scaling and
    rope_local_base_freq, and sliding_window_pattern instead of layer_types."""
    import json
    import shutil

    model, _, prompts, folder = gemma
    shutil.copytree(folder, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("rope_parameters", "layer_types"):
        config.pop(key)
    config |= {
        "rope_theta": 1_000_000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        "rope_local_base_freq": 10_000.0, "sliding_window_pattern": 3,  # every third layer full: as LAYER_TYPES
    }
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    checkpoint = load_checkpoint(str(tmp_path / "m"))
    assert checkpoint.config.layer_types == LAYER_TYPES and checkpoint.config.rope_local_theta == 10_000.0
    with torch.no_grad():
        want = model(torch.tensor([prompts[1]])).logits[0, -1]
    assert torch.allclose(prefill_logits(checkpoint, prompts[1]), want, atol=1e-4, rtol=0)
