"""Qwen3 (dense and MoE) against transformers' reference implementation, from a
HF folder and from a GGUF file of the same weights written with the `gguf` package.

Tiny random checkpoints from transformers' configurations; the vocabulary is the
bundled SmolLM2 tokenizer's. Float32 throughout: greedy tokens must be identical,
last-position logits within 1e-4.
"""

import pytest
import torch

from tramontane.engine import EngineConfig, LLMEngine, SamplingParams, load_checkpoint
from tramontane.engine.attention import build_metadata
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.gguf_file import GGUFFile

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4, 5,"]
LOGIT_ATOL = 1e-4


def tiny(kind: str, vocab: int):
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    if kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            intermediate_size=128, moe_intermediate_size=48, num_experts=4, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, **common,
        )
        return transformers.Qwen3MoeForCausalLM(config).eval()
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(intermediate_size=128, **common)).eval()


def write_gguf(model, path) -> None:
    """The model as llama.cpp's converter writes a Qwen3 (no q/k row reordering)."""
    cfg = model.config
    moe = hasattr(cfg, "num_experts")
    arch = "qwen3moe" if moe else "qwen3"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    if cfg.rope_parameters.get("rope_type") == "yarn":  # as llama.cpp's converter writes it
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(cfg.rope_parameters["factor"])
        writer.add_rope_scaling_orig_ctx_len(cfg.rope_parameters["original_max_position_embeddings"])
    if moe:
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    md = GGUFFile(default_chat_model_path()).metadata
    writer.add_tokenizer_model(md["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(md["tokenizer.ggml.pre"])
    writer.add_token_list(md["tokenizer.ggml.tokens"])
    writer.add_token_types(md["tokenizer.ggml.token_type"])
    writer.add_token_merges(md["tokenizer.ggml.merges"])
    writer.add_bos_token_id(md["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(md["tokenizer.ggml.eos_token_id"])
    for name, tensor in _gguf_tensors(model).items():
        writer.add_tensor(name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_tensors(model) -> dict[str, torch.Tensor]:
    names = {
        "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
        "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
        "self_attn.o_proj.weight": "attn_output", "self_attn.q_norm.weight": "attn_q_norm",
        "self_attn.k_norm.weight": "attn_k_norm", "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up",
        "mlp.down_proj.weight": "ffn_down", "mlp.gate.weight": "ffn_gate_inp",
    }
    cfg = model.config
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = tensor
        elif name == "model.norm.weight":
            out["output_norm.weight"] = tensor
        elif name == "lm_head.weight":
            out["output.weight"] = tensor
        else:
            layer, local = name.removeprefix("model.layers.").split(".", 1)
            prefix = f"blk.{layer}."
            if local == "mlp.experts.gate_up_proj":  # [E, 2 * ffn, hidden]: gate rows, then up rows
                ffn = cfg.moe_intermediate_size
                out[prefix + "ffn_gate_exps.weight"] = tensor[:, :ffn]
                out[prefix + "ffn_up_exps.weight"] = tensor[:, ffn:]
            elif local == "mlp.experts.down_proj":
                out[prefix + "ffn_down_exps.weight"] = tensor
            else:
                out[prefix + names[local].removesuffix(".weight") + ".weight"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def logits(checkpoint, ids: list[int]) -> torch.Tensor:
    engine = LLMEngine(checkpoint, EngineConfig(num_kv_blocks=32, quantization="none"))
    positions = [list(range(len(ids)))]
    meta = build_metadata(positions, [list(range(8))], engine.config.block_size, None, torch.device("cpu"))
    return engine.runner.model(torch.tensor([ids]), torch.arange(len(ids))[None], meta, torch.tensor([len(ids) - 1]))[0]


def hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("kind", ["qwen3", "qwen3_moe"])
def test_qwen3_matches_transformers_from_hf_and_gguf(kind, tmp_path, smollm_checkpoint, run):
    tok = smollm_checkpoint.tokenizer
    model = tiny(kind, tok.vocab_size)
    model.save_pretrained(tmp_path / "hf")
    tok.hf_tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
    write_gguf(model, tmp_path / "model.gguf")
    from_hf = load_checkpoint(str(tmp_path / "hf"))
    from_gguf = load_checkpoint(str(tmp_path / "model.gguf"))
    assert from_hf.config.architecture == from_gguf.config.architecture == kind
    prompts = [tok.encode(p) for p in PROMPTS]
    for ids in prompts:
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        ours = logits(from_hf, ids)
        assert torch.allclose(ours, want, atol=LOGIT_ATOL, rtol=0)
        assert torch.allclose(logits(from_gguf, ids), ours, atol=1e-6, rtol=0)
    engine = LLMEngine(from_gguf, EngineConfig(num_kv_blocks=64, quantization="none"))
    for i, ids in enumerate(prompts):  # decoded together, in one batch
        engine.add_request(str(i), ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    results = run(engine)
    for i, ids in enumerate(prompts):
        assert results[(str(i), 0)].token_ids == hf_greedy(model, ids, 12)
    # The CPU default, 4-bit weights with our kernels' decode step, runs it too.
    quantized = LLMEngine(from_gguf, EngineConfig(num_kv_blocks=64, quantization="int4"))
    quantized.add_request("q", prompts[0], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(run(quantized)[("q", 0)].token_ids) == 4
