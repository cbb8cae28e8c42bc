#!/usr/bin/env bash
# bench/run.sh: kolm vs llama.cpp (llama-cpp-python's server) on the default model,
# same GGUF and thread count, one server at a time; prints a table with ratios.
# A few minutes on 2 cores. Arguments go to bench/bench.py (--quick, --json FILE,
# --threads N, --model PATH, --skip-llama, ...). Paste the table into bench/RESULTS.md.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export MAKEFLAGS="-j${KOLM_JOBS:-2}" CMAKE_BUILD_PARALLEL_LEVEL="${KOLM_JOBS:-2}"
bash deploy/setup.sh
VPY="$REPO/.venv/bin/python"
if ! "$VPY" -c 'import llama_cpp.server.app, uvicorn, sse_starlette, starlette_context' 2>/dev/null; then
    # The same llama.cpp build as the test oracle (see tests/oracle-wheel.sh).
    WHEELS="$(bash tests/oracle-wheel.sh "$VPY")"
    "$VPY" -m pip install --find-links "$WHEELS" --only-binary llama-cpp-python \
        -r tests/requirements.txt -r bench/requirements.txt
fi
exec "$VPY" bench/bench.py --kolm-bin "$REPO/build/bin/kolm" \
    --model "${KOLM_HOME:-$HOME/.kolm}/models/gemma-3-270m-q4_k_m.gguf" --python "$VPY" "$@"
