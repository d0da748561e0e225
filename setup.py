"""The C part of the package: the engine's CPU kernels (see src/tramontane/engine/kernels).

Everything else is declared in pyproject.toml. The kernels need only a C compiler
and Python's headers (not torch's), and pick AVX2 or AVX-512 VNNI when they run;
if they cannot be built the package still installs and the engine uses PyTorch's
kernels (`optional=True`)."""

from setuptools import Extension, setup

KERNELS = "src/tramontane/engine/kernels"

setup(
    ext_modules=[
        Extension(
            "tramontane.engine._kernels",
            sources=[
                f"{KERNELS}/{name}.c"
                for name in ("module", "matmul", "matmul_avx2", "matmul_vnni", "attention", "layer", "pool")
            ],
            depends=[
                f"{KERNELS}/{name}.h"
                for name in ("matmul", "matmul_kernels", "attention", "layer", "pool", "vector_math")
            ],
            extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-Wall", "-Wextra"],
            extra_link_args=["-pthread", "-lm"],
            optional=True,
        )
    ]
)
