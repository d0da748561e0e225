#!/usr/bin/env bash
# The GPU path on a device machine (one H100 or H200; PyTorch 2.11, transformers,
# Triton, safetensors and tokenizers installed; no network), in one command:
#   1. the tests marked gpu (CUDA graphs, loading onto the device, ...);
#   2. benchmarks/gpu_engine.py: ours against HF transformers (Mistral-7B and a
#      Mixtral-architecture MoE, random bf16 weights), in under 8 minutes.
# Results go to $OUT (the device tool's folder), else ./gpu-results.
#
# Prepare once, on the machine that calls the device (the engine imports gguf, a
# pure-Python wheel the device image lacks; everything else is there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d .whl gguf==0.19.0
# Then run, carrying .whl (timeout_s 600):
#   COMMIT=<git rev-parse --short HEAD, read here> bash benchmarks/gpu_device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/tests/engine/gpu:${PYTHONPATH:-} PYTHONUNBUFFERED=1
{
    echo "commit: ${COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__)'
} | tee "$OUT/device.txt"

# --confcutdir: the GPU tests' own fixtures only (the suite's root ones need the server's packages).
timeout 150 python3 -m pytest -q -m gpu tests/engine/gpu --confcutdir=tests/engine/gpu -p no:cacheprovider \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -15

timeout 480 python3 benchmarks/gpu_engine.py --out-dir "$OUT" --budget 420 2>&1 | tee "$OUT/gpu_engine.log" | tail -12
