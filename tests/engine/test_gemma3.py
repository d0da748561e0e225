"""Gemma 3 (text) against transformers' reference implementation, from a HF folder
and from a GGUF file of the same weights, written as llama.cpp's converter writes one.

A tiny random checkpoint from transformers' Gemma3TextConfig, with sliding layers
among full ones (a 4-token window, shorter than the prompts), a linearly scaled
rotary base on the full layers and the sliding layers' own, and a query scale
other than the head size's. The vocabulary is the bundled SmolLM2 tokenizer's.
Float32: greedy tokens identical, last-position logits within 1e-4.
"""

import pytest
import torch

from tramontane.engine import EngineConfig, LLMEngine, SamplingParams, load_checkpoint
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.errors import ModelLoadError
from tramontane.engine.gguf_file import GGUFFile

transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is a city on the Seine", "def fibonacci(n):\n    return", "1, 2, 3, 4, 5,"]
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def tiny(vocab: int, layer_types: list[str] = LAYER_TYPES, query_scalar: int = 24):
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layer_types),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=query_scalar,
        sliding_window=4, layer_types=layer_types, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
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


# llama.cpp's tensor names for Gemma 3's HF ones.
GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_gguf(model, path, *, layer_keys: bool) -> None:
    """The model as llama.cpp's converter writes a Gemma 3: no q/k row reordering,
    Gemma's +1 added to every norm weight, the linear rope scaling of the full
    layers. layer_keys adds the keys that say what the converter leaves to
    llama.cpp's defaults: the sliding pattern, the sliding layers' rotary base and
    the query scale."""
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    full = cfg.rope_parameters["full_attention"]
    writer.add_rope_freq_base(full["rope_theta"])
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(full["factor"])
    if layer_keys:
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
        writer.add_rope_freq_base_swa(cfg.rope_parameters["sliding_attention"]["rope_theta"])
        writer.add_attention_scale(cfg.query_pre_attn_scalar**-0.5)
    md = GGUFFile(default_chat_model_path()).metadata
    writer.add_tokenizer_model(md["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(md["tokenizer.ggml.pre"])
    writer.add_token_list(md["tokenizer.ggml.tokens"])
    writer.add_token_types(md["tokenizer.ggml.token_type"])
    writer.add_token_merges(md["tokenizer.ggml.merges"])
    writer.add_bos_token_id(md["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(md["tokenizer.ggml.eos_token_id"])
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: the file has no output.weight
            continue
        if name.endswith("norm.weight"):
            tensor = tensor + 1.0
        if name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif name == "model.norm.weight":
            name = "output_norm.weight"
        else:
            layer, local = name.removeprefix("model.layers.").removesuffix(".weight").split(".", 1)
            name = f"blk.{layer}.{GGUF_NAMES[local]}.weight"
        writer.add_tensor(name, tensor.float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_loads_the_same_model_as_the_folder(gemma, tmp_path):
    model, folder_checkpoint, prompts, _ = gemma
    write_gguf(model, tmp_path / "gemma3.gguf", layer_keys=True)
    checkpoint = load_checkpoint(str(tmp_path / "gemma3.gguf"))
    config, want = checkpoint.config, folder_checkpoint.config
    for field in ("architecture", "layer_types", "rope_theta", "rope_scaling", "rope_local_theta", "sliding_window",
                  "embedding_scale", "hidden_act", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(config, field) == getattr(want, field), field
    assert config.attention_scale == pytest.approx(want.attention_scale, rel=1e-7)  # stored as float32
    assert checkpoint.tensors.keys() == folder_checkpoint.tensors.keys()
    for name, tensor in checkpoint.tensors.items():  # the norms: Gemma's +1 as the converter added it
        assert torch.equal(tensor.float(), folder_checkpoint.tensors[name].float()), name
    for ids in prompts:
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0, -1]
        got = prefill_logits(checkpoint, ids)
        # Equal weights; the query scale differs only by its float32 rounding in the file.
        assert torch.allclose(got, prefill_logits(folder_checkpoint, ids), atol=1e-5, rtol=0)
        assert torch.allclose(got, reference, atol=1e-4, rtol=0)


def test_gguf_without_layer_keys_gets_llama_cpp_defaults(smollm_checkpoint, tmp_path):
    """A file as the converter writes it leaves the pattern (every sixth layer
    global), the sliding rotary base (10k) and the query scale (1/sqrt(head_dim))
    to llama.cpp's defaults; a model built that way matches transformers."""
    types = ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"]
    model = tiny(smollm_checkpoint.tokenizer.vocab_size, types, query_scalar=16)
    write_gguf(model, tmp_path / "plain.gguf", layer_keys=False)
    checkpoint = load_checkpoint(str(tmp_path / "plain.gguf"))
    assert checkpoint.config.layer_types == types and checkpoint.config.attention_scale == 0.25
    ids = smollm_checkpoint.tokenizer.encode(PROMPTS[0])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(prefill_logits(checkpoint, ids), want, atol=1e-4, rtol=0)
