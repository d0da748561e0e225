"""Light sleep of an engine (KV cache freed, then back) and prepared models
(quantized once, mapped by later starts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tramontane.engine import EngineConfig, EngineError, EngineOverloadedError, LLMEngine, SamplingParams
from tramontane.engine.defaults import default_chat_model_path
from tramontane.engine.prepared import load_prepared, prepared_path


def _greedy(engine: LLMEngine, request_id: str, text: str = "The capital of France is") -> str:
    engine.add_request(request_id, engine.tokenizer.encode(text), SamplingParams(max_tokens=6, temperature=0))
    last = None
    for _ in range(100):
        if not engine.has_work():
            break
        for out in engine.step():
            last = out
    assert last is not None and last.finished
    return last.outputs[0].text


def test_sleep_frees_the_kv_cache_and_wake_restores_it(make_engine) -> None:
    engine = make_engine()
    before = _greedy(engine, "a")
    assert engine.stats().prefix_cache_queries > 0

    engine.add_request("busy", engine.tokenizer.encode("Hi"), SamplingParams(max_tokens=2))
    with pytest.raises(EngineError, match="in flight"):
        engine.sleep()
    engine.abort("busy")
    engine.sleep()
    assert all(attn.k_cache.numel() == 0 for attn in engine.runner.model.attention_layers())
    # The prefix cache described the freed blocks: it is gone with them.
    assert engine.stats().prefix_cache_queries == 0 and engine.stats().kv_cache_usage == 0
    with pytest.raises(EngineOverloadedError, match="asleep"):
        engine.add_request("early", engine.tokenizer.encode("Hi"), SamplingParams(max_tokens=2))

    engine.wake_up()
    assert _greedy(engine, "b") == before


def test_prepared_model_is_saved_once_then_mapped(tmp_path: Path) -> None:
    path = default_chat_model_path()
    config = EngineConfig(kv_cache_memory_gb=0.05, prepared_weights_dir=str(tmp_path))
    where = prepared_path(str(tmp_path), path, config)
    built = LLMEngine.from_path(path, config)
    assert where.is_file() and built.runner.model.layers[0].mlp.down_proj.quantization == "int4"

    mapped = LLMEngine.from_path(path, EngineConfig(kv_cache_memory_gb=0.05, prepared_weights_dir=str(tmp_path)))
    assert _greedy(mapped, "m") == _greedy(built, "b")
    # Mapped from the file, not copied: the packed weights live in its mapping.
    down_proj = mapped.runner.model.layers[0].mlp.down_proj
    packed = down_proj.qs if down_proj.kernel == "q4_1" else down_proj.weight  # ours, or PyTorch's packing
    assert _mapped_from(packed.data_ptr()) == str(where)

    # Another precision is another file; a damaged file is prepared anew.
    assert prepared_path(str(tmp_path), path, EngineConfig(quantization="int8")) != where
    where.write_bytes(b"not a model")
    again = LLMEngine.from_path(path, EngineConfig(kv_cache_memory_gb=0.05, prepared_weights_dir=str(tmp_path)))
    assert _greedy(again, "c") == _greedy(built, "d")
    assert where.stat().st_size > 1_000_000


def _mapped_from(address: int) -> str | None:
    """The file whose mapping holds `address` in this process, if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return rest[4] if len(rest) == 5 else None
    return None


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/tramontane-prepared-pwned"),))


def test_a_prepared_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    # Whoever can write the prepared directory must not get code run by the next start.
    marker = Path("/tmp/tramontane-prepared-pwned")
    marker.unlink(missing_ok=True)
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": _RunsCode(), "tokenizer": {}, "name": "x"}, hostile)
    assert load_prepared(hostile) is None
    assert not marker.exists()
