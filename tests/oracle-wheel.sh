#!/usr/bin/env bash
# tests/oracle-wheel.sh VPY: builds (once per machine and flag set) the wheel of the
# llama-cpp-python version pinned in tests/requirements.txt and prints the folder
# holding it, for `pip install --find-links DIR --only-binary llama-cpp-python`.
#
# Why not let pip build it: pip caches the wheel it builds from the sdist by the
# sdist alone, not by CMAKE_ARGS, so a wheel built with other flags (or for another
# CPU) would be reused silently. And llama.cpp's default native build enables its
# AMX kernels on AMX-capable Xeons, where they crash on this model
# (ggml_backend_amx_mul_mat segfaults in the first decode); so the oracle is built
# for a fixed, portable x86-64 level (AVX2/FMA/F16C), the same on every machine.
# Only the library is built: no examples, tools, tests, server binary or curl.
set -euo pipefail
VPY="$1"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIN="$(grep -E '^llama-cpp-python==' "$REPO/tests/requirements.txt" | cut -d'#' -f1 | tr -d ' ')"
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
ARGS="$ARGS -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
ARGS="$ARGS -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
ARGS="$ARGS -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"
KEY="$(printf '%s %s' "$PIN" "$ARGS" | sha256sum | cut -c1-16)"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/kolm/wheels/$KEY"
if ! compgen -G "$DIR/llama_cpp_python-*.whl" >/dev/null; then
    echo "[oracle-wheel] building $PIN (llama.cpp from source, several minutes on 2 cores)" >&2
    mkdir -p "$DIR.tmp"
    CMAKE_ARGS="$ARGS" "$VPY" -m pip wheel --no-deps --no-cache-dir -w "$DIR.tmp" "$PIN" >&2
    rm -rf "$DIR"
    mv "$DIR.tmp" "$DIR"
fi
echo "$DIR"
