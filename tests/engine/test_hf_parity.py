"""Our model against HF transformers on the same weights.

Tolerance: with both in float32 the last-position logits agree to 1e-3 absolute
(observed ~3e-5); greedy decoding must give identical tokens.
"""

import pytest
import torch

from tramontane.engine import LLMEngine, SamplingParams, load_checkpoint
from tramontane.engine.defaults import default_chat_model_path

transformers = pytest.importorskip("transformers")

LOGIT_ATOL = 1e-3
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Les fleurs du jardin sont",
    "1, 2, 3, 4, 5,",
]


def hf_greedy(model, ids: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        first_logits = out.logits[0, -1]
        past, token = out.past_key_values, int(first_logits.argmax())
        tokens = [token]
        for _ in range(steps - 1):
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            tokens.append(token)
    return tokens, first_logits


def engine_greedy(engine: LLMEngine, prompts: list[list[int]], steps: int, run) -> list[list[int]]:
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
    results = run(engine)
    return [results[(str(i), 0)].token_ids for i in range(len(prompts))]


@pytest.fixture(scope="module")
def hf_smollm():
    path = default_chat_model_path()
    import os

    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def test_default_model_greedy_matches_transformers(make_engine, hf_smollm, run):
    engine = make_engine()
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    ours = engine_greedy(engine, prompts, 32, run)  # all five decode together in one batch
    for ids, got in zip(prompts, ours, strict=False):
        want, logits = hf_greedy(hf_smollm, ids, 32)
        assert got == want
        # logprobs of our top candidates equal HF's log-softmax at the same ids.
        engine.add_request("lp", ids, SamplingParams(temperature=0, max_tokens=1, logprobs=5))
        top = run(engine)[("lp", 0)]
        hf_logprobs = logits.log_softmax(-1)
        (lp,) = top.delta_logprobs if top.delta_logprobs else [None]
        assert lp is not None
        for token_id, value in lp.top:
            assert abs(value - float(hf_logprobs[token_id])) < LOGIT_ATOL


def test_default_model_logits_within_tolerance(make_engine, hf_smollm):
    engine = make_engine()
    ids = engine.tokenizer.encode(PROMPTS[0])
    want = hf_smollm(torch.tensor([ids])).logits[0, -1]
    from tramontane.engine.attention import build_metadata

    meta = build_metadata(
        [list(range(len(ids)))], [list(range(4))], engine.config.block_size, None, torch.device("cpu")
    )
    logits = engine.runner.model(torch.tensor([ids]), torch.arange(len(ids))[None], meta, torch.tensor([len(ids) - 1]))[
        0
    ]
    assert torch.allclose(logits, want, atol=LOGIT_ATOL, rtol=0)


def _save_tiny(model_cls, config_cls, tmp_path, tokenizer, **kw):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=2,
        bos_token_id=1,
        tie_word_embeddings=False,
        **kw,
    )
    model = model_cls(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    return model


@pytest.mark.parametrize(
    "arch",
    [
        "mixtral",
        "mistral-sliding-window",
        "llama3-rope-scaling",
    ],
)
def test_tiny_random_architectures_match_transformers(arch, tmp_path, smollm_checkpoint, run):
    from tramontane.engine import EngineConfig

    tok = smollm_checkpoint.tokenizer
    if arch == "mixtral":
        hf = _save_tiny(
            transformers.MixtralForCausalLM,
            transformers.MixtralConfig,
            tmp_path,
            tok,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    elif arch == "mistral-sliding-window":
        hf = _save_tiny(transformers.MistralForCausalLM, transformers.MistralConfig, tmp_path, tok, sliding_window=8)
    else:
        hf = _save_tiny(
            transformers.LlamaForCausalLM,
            transformers.LlamaConfig,
            tmp_path,
            tok,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
    engine = LLMEngine(load_checkpoint(str(tmp_path)), EngineConfig(num_kv_blocks=64, quantization="none"))
    prompts = [tok.encode(p) for p in PROMPTS[:3]]
    # Prompts longer than the window make the sliding-window mask matter.
    prompts[0] = prompts[0] * 4
    ours = engine_greedy(engine, prompts, 16, run)
    for ids, got in zip(prompts, ours, strict=False):
        want, _ = hf_greedy(hf, ids, 16)
        assert got == want
