import pytest

from tramontane.engine import EngineConfig, LLMEngine, load_checkpoint
from tramontane.engine.defaults import default_chat_model_path


@pytest.fixture(scope="session")
def smollm_checkpoint():
    return load_checkpoint(default_chat_model_path())


@pytest.fixture
def make_engine(smollm_checkpoint):
    def make(**overrides) -> LLMEngine:
        # Unquantized float32 by default: the exact reference path.
        config = EngineConfig(kv_cache_memory_gb=0.1, **{"quantization": "none", **overrides})
        return LLMEngine(smollm_checkpoint, config)

    return make


def _run_to_completion(engine: LLMEngine) -> dict:
    """Step until idle; returns {(request_id, index): CompletionOutput (last seen)} and
    the streamed deltas concatenated under key (request_id, index, 'stream')."""
    results: dict = {}
    for _ in range(10_000):
        if not engine.has_work():
            return results
        for out in engine.step():
            for c in out.outputs:
                key = (out.request_id, c.index)
                results[key] = c
                results[key + ("stream",)] = results.get(key + ("stream",), "") + c.delta_text
                results[key + ("tokens",)] = results.get(key + ("tokens",), []) + c.delta_token_ids
    raise AssertionError("engine did not finish")


def _chat_prompt(engine: LLMEngine, text: str) -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


@pytest.fixture
def run():
    return _run_to_completion


@pytest.fixture
def chat_prompt():
    return _chat_prompt
