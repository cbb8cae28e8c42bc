#!/usr/bin/env bash
# tests/gpu/run.sh: the first thing to run on a machine with an NVIDIA GPU.
#
# Builds the compute backends alone (build-gpu, -DKOLM_KERNELS_ONLY=ON: a GPU machine
# has the CUDA toolkit and CMake but not the gateway's Debian packages), runs the op
# parity tests (tests/unit/test_kn_ops.c holds the CUDA backend to the scalar
# reference on fresh random inputs, like the CPU backends), runs them again under
# compute-sanitizer memcheck and racecheck when it works on that machine, and prints
# a table last. Exit status: 0 when every step that ran passed.
#
# Not here yet (the CUDA worker is not built): the end-to-end greedy parity of a GPU
# worker against the CPU worker, FP8 KV, and the GPU bench.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
B="${KOLM_GPU_BUILD:-$REPO/build-gpu}"
JOBS="${KOLM_JOBS:-$(nproc)}"
declare -a ROWS
rc=0
row() { ROWS+=("$(printf '%-28s %s' "$1" "$2")"); [ "$2" = PASS ] || [ "${2%% *}" = SKIP ] || rc=1; }

nvidia-smi -L || { echo "tests/gpu/run.sh: no GPU visible" >&2; exit 1; }
if cmake -S "$REPO" -B "$B" -DCMAKE_BUILD_TYPE=Release -DKOLM_WERROR=ON -DKOLM_CUDA=ON -DKOLM_KERNELS_ONLY=ON &&
    cmake --build "$B" --target test_kn_ops kn_bench -j "$JOBS"; then
    row "build (sm_90a, sm_100a)" PASS
else
    row "build (sm_90a, sm_100a)" FAIL
    printf '%s\n' "${ROWS[@]}"
    exit 1
fi
if "$B/tests/test_kn_ops" | tee "$B/test_kn_ops.log" && grep -q '^test_kn_ops: .* 0 failed' "$B/test_kn_ops.log" &&
    ! grep -q 'no CUDA device' "$B/test_kn_ops.log"; then
    row "op parity (test_kn_ops)" PASS
else
    row "op parity (test_kn_ops)" FAIL
fi
if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
        if compute-sanitizer --tool "$tool" --error-exitcode 9 "$B/tests/test_kn_ops" >"$B/$tool.log" 2>&1; then
            row "compute-sanitizer $tool" PASS
        elif grep -q "Device not supported" "$B/$tool.log"; then
            row "compute-sanitizer $tool" "SKIP (not supported on this machine)"
        else
            row "compute-sanitizer $tool" "FAIL (see $B/$tool.log)"
        fi
    done
else
    row "compute-sanitizer" "SKIP (not installed)"
fi
echo
printf '%s\n' "${ROWS[@]}"
exit "$rc"
