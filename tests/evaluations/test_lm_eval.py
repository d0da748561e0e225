"""lm-evaluation-harness against the server through its OpenAI-compatible client,
on a task whose data the test makes (examples/lm_eval/run_lm_eval.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from evaluations_helpers import Platform

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME

pytest.importorskip("lm_eval")
EXAMPLE = Path(__file__).parents[2] / "examples" / "lm_eval" / "run_lm_eval.py"


def load_example():
    spec = importlib.util.spec_from_file_location("run_lm_eval", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_lm_eval"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # lm-eval's import and eight generations: about 30-50 s on a shared machine
def test_lm_eval_runs_a_local_task_against_the_server(platform: Platform, tmp_path: Path) -> None:
    example = load_example()
    tenant = platform.tenant("evals-lm-eval")
    results = example.evaluate(platform.url, tenant.key, DEFAULT_CHAT_MODEL_NAME, tmp_path / "task")
    samples = results["samples"]["tramontane_capitals"]
    assert len(samples) == len(example.QUESTIONS)
    assert all(isinstance(s["resps"][0][0], str) and s["resps"][0][0] for s in samples)  # the server answered
    # The task's filter kept a capitalised word of each answer, and the small model
    # knows most capitals (7 of 8 with greedy decoding on CPU).
    assert all(s["filtered_resps"][0][:1].isupper() for s in samples), [s["filtered_resps"] for s in samples]
    assert results["results"]["tramontane_capitals"]["exact_match,strip"] >= 0.5
