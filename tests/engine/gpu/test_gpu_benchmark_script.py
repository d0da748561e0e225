"""benchmarks/gpu_engine.py in its --device cpu --tiny mode, so that the script the
GPU runs stays in step with the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_tiny_cpu_run_measures_both_engines(tmp_path):
    """The Mixtral architecture only: it runs every path the dense one does, and the
    expert mapping to transformers' fused tensors besides."""
    pytest.importorskip("transformers")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_engine.py"), "--device", "cpu", "--tiny",
           "--archs", "mixtral", "--out-dir", str(tmp_path), "--timeout", "240"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_engine.json").read_text())
    assert [(r["arch"], r["engine"]) for r in results] == [("mixtral", "ours"), ("mixtral", "hf")]
    for r in results:
        assert not any(note.startswith(("failed", "exit", "timed out")) for note in r["notes"]), r
        assert r["decode_tok_s"] > 0 and r["ttft_ms_p50"] > 0
    ours = [r for r in results if r["engine"] == "ours"]
    for r in ours:
        assert r["offline_output_tokens"] == 6 * 6 and r["offline_tok_s"] > 0 and r["wake_s"] is not None
    assert "| mixtral | ours |" in (tmp_path / "gpu_engine.md").read_text()
