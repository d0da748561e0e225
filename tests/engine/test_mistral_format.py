"""Mistral's native checkpoints: params.json + consolidated safetensors + a
mistral-common tokenizer, against the same weights in HF's layout and against
transformers."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_mistral import hf_model, write_hf, write_native

from tramontane.engine import EngineConfig, LLMEngine, SamplingParams, load_checkpoint, load_tokenizer
from tramontane.engine.attention import build_metadata
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.mistral_format import halves_to_pairs

pytest.importorskip("transformers")

PROMPT = [1, 1183, 1117, 1032, 2688, 29491, 1183, 6334, 1032, 1639, 29491, 1183, 1117, 1032, 3271, 29491]


def last_logits(checkpoint, ids: list[int]) -> torch.Tensor:
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=16, quantization="none"))
    window = checkpoint.config.sliding_window
    positions = [list(range(len(ids)))]
    meta = build_metadata(positions, [list(range(4))], engine.config.block_size, window, torch.device("cpu"))
    position_ids = torch.arange(len(ids))[None]
    return engine.runner.model(torch.tensor([ids]), position_ids, meta, torch.tensor([len(ids) - 1]))[0]


def greedy(checkpoint, ids: list[int], steps: int, run) -> list[int]:
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=16, quantization="none"))
    engine.add_request("r", ids, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
    return run(engine)[("r", 0)].token_ids


def hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize(
    ("kind", "shards", "config"),
    [("mistral", 1, {}), ("mistral", 3, {"sliding_window": 8}), ("mixtral", 2, {})],
)
def test_native_and_hf_layouts_give_identical_logits(kind, shards, config, tmp_path, run):
    model = hf_model(kind, **config)
    native = load_checkpoint(str(write_native(model, tmp_path / "native", shards=shards)))
    hf = load_checkpoint(str(write_hf(model, tmp_path / "hf")))
    assert native.config.architecture == hf.config.architecture == kind
    assert native.config.sliding_window == hf.config.sliding_window
    ours = last_logits(native, PROMPT)
    assert torch.equal(ours, last_logits(hf, PROMPT))
    with torch.no_grad():
        want = model(torch.tensor([PROMPT])).logits[0, -1]
    assert torch.allclose(ours, want, atol=1e-4, rtol=0)
    assert greedy(native, PROMPT, 12, run) == hf_greedy(model, PROMPT, 12)


def test_native_rotary_layout_is_mistral_inference_pairs():
    """Rotating adjacent pairs (Mistral's complex-number rotary) on the native rows
    gives the same attention scores as rotating halves on the HF rows."""
    torch.manual_seed(0)
    heads, head_dim, dim, theta = 2, 8, 16, 10000.0
    wq, wk, x = torch.randn(heads * head_dim, dim), torch.randn(heads * head_dim, dim), torch.randn(5, dim)
    pos = torch.arange(5, dtype=torch.float32)
    freqs = pos[:, None] * (1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim))[None]
    cis = torch.polar(torch.ones_like(freqs), freqs)  # [5, head_dim/2]

    def native_rotate(w):  # mistral-inference: view pairs as complex numbers, multiply
        y = (x @ halves_to_pairs(w, heads).T).view(5, heads, head_dim // 2, 2)
        return torch.view_as_real(torch.view_as_complex(y) * cis[:, None]).flatten(2)

    def hf_rotate(w):  # transformers: rotate_half over the two halves
        y = (x @ w.T).view(5, heads, head_dim)
        cos, sin = torch.cat([freqs.cos()] * 2, -1)[:, None], torch.cat([freqs.sin()] * 2, -1)[:, None]
        half = torch.cat([-y[..., head_dim // 2 :], y[..., : head_dim // 2]], -1)
        return y * cos + half * sin

    native_scores = torch.einsum("qhd,khd->hqk", native_rotate(wq), native_rotate(wk))
    hf_scores = torch.einsum("qhd,khd->hqk", hf_rotate(wq), hf_rotate(wk))
    assert torch.allclose(native_scores, hf_scores, atol=1e-4)


@pytest.mark.parametrize("tokenizer", ["v1", "v7", "tekken"])
def test_folder_brings_its_mistral_common_tokenizer(tokenizer, tmp_path):
    folder = write_native(hf_model(tokenizer=tokenizer), tmp_path / "m", tokenizer=tokenizer)
    checkpoint = load_checkpoint(str(folder))
    tok = checkpoint.tokenizer
    assert tok.mistral is not None and tok.vocab_size == checkpoint.config.vocab_size
    assert checkpoint.config.bos_token_id == 1 and checkpoint.config.eos_token_ids == [2]
    assert load_tokenizer(str(folder)).encode("Bonjour") == tok.encode("Bonjour")


def test_missing_tensor_is_named(tmp_path):
    folder = write_native(hf_model(), tmp_path / "m")
    tensors = load_file(str(folder / "consolidated.safetensors"))
    del tensors["layers.1.attention.wk.weight"]
    save_file(tensors, str(folder / "consolidated.safetensors"))
    with pytest.raises(ModelLoadError, match=r"tensor 'layers\.1\.attention\.wk\.weight' is missing"):
        load_checkpoint(str(folder))


def test_mismatched_tensor_is_named(tmp_path):
    folder = write_native(hf_model(), tmp_path / "m")
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "hidden_dim": 96}))
    message = r"'layers\.0\.feed_forward\.w2\.weight' has shape \(64, 128\).*\(64, 96\)"
    with pytest.raises(ModelLoadError, match=message):
        load_checkpoint(str(folder))


def test_unknown_tensor_and_vocab_mismatch(tmp_path):
    folder = write_native(hf_model(), tmp_path / "m")
    tensors = load_file(str(folder / "consolidated.safetensors"))
    save_file({**tensors, "layers.0.attention.wqkv.weight": torch.zeros(1)}, str(folder / "consolidated.safetensors"))
    with pytest.raises(ModelLoadError, match="unexpected tensor 'layers.0.attention.wqkv.weight'"):
        load_checkpoint(str(folder))
    save_file(tensors, str(folder / "consolidated.safetensors"))
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "vocab_size": 131072}))
    with pytest.raises(ModelLoadError, match="tokenizer has 32768 tokens, params.json says vocab_size 131072"):
        load_checkpoint(str(folder))


def test_unknown_architecture_lists_supported(tmp_path):
    folder = write_hf(hf_model(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    supported = "llama, mistral, mixtral, qwen3, qwen3_moe"
    with pytest.raises(ModelLoadError, match=rf"unsupported model_type 'falcon'; supported: {supported}"):
        load_checkpoint(str(folder))
    with pytest.raises(ModelLoadError, match="Mistral folders"):
        load_checkpoint(str(tmp_path))  # neither layout


def test_prepared_model_keeps_the_mistral_tokenizer(tmp_path):
    folder = write_native(hf_model(tokenizer="tekken"), tmp_path / "m", tokenizer="tekken")
    config = EngineConfig(num_kv_blocks=16, quantization="none", prepared_weights_dir=str(tmp_path / "prepared"))
    first = LLMEngine.from_path(str(folder), config)
    second = LLMEngine.from_path(str(folder), config)  # mapped from the prepared file
    assert list((tmp_path / "prepared").iterdir())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert second.tokenizer.mistral is not None
    assert second.tokenizer.encode_chat(messages, None) == first.tokenizer.encode_chat(messages, None)
    assert second.tokenizer.tool_call_format == first.tokenizer.tool_call_format == "mistral_json"
