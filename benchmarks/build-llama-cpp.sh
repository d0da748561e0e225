#!/bin/sh
# Builds the peers of the side-by-side benchmarks from the llama.cpp sources vendored in
# the llama-cpp-python source distribution on PyPI (reached through the package index
# alone): llama.cpp's HTTP server (`llama-server`, for benchmarks/serving.py) and its
# batched engine benchmark (`llama-batched-bench`, for benchmarks/cpu_engine.py).
#
#   sh benchmarks/build-llama-cpp.sh VERSION DIR
#
# leaves both in DIR/llama.cpp-VERSION/build/bin/. Needs cmake and a C++ compiler.
# Native CPU flags (GGML_NATIVE, llama.cpp's default), no web UI, no TLS, static libraries.
set -eu

VERSION=${1:?llama-cpp-python version}
DIR=${2:?build directory}
JOBS=${JOBS:-2}
SOURCE="$DIR/llama.cpp-$VERSION"
PYTHON=${PYTHON:-python3}

mkdir -p "$DIR"
if [ ! -f "$SOURCE/CMakeLists.txt" ]; then
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$DIR"
    tar -xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
    rm -rf "$SOURCE"
    mv "$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SOURCE"
    rm -rf "$DIR/llama_cpp_python-$VERSION"
fi
cmake -S "$SOURCE" -B "$SOURCE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >/dev/null
cmake --build "$SOURCE/build" --target llama-server llama-batched-bench -j "$JOBS"
