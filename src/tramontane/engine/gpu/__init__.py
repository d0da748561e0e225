"""The engine on accelerators: FlexAttention over the paged KV cache, decode CUDA
graphs, grouped-matmul experts, FP8 and int4 linears, tensor parallelism, and light
sleep to pinned host memory. Chosen for CUDA devices (runner.uses_gpu_path); the
CPU keeps the C kernels of engine/runner.py."""
