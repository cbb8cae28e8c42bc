#!/usr/bin/env bash
# tests/gpu/run.sh: the first thing to run on a machine with an NVIDIA GPU.
#
# A GPU session runs two commands:
#   1. here, on the build machine:  bash tests/gpu/bundle.sh
#      (builds build-gpu-bundle/: a CUDA kolm-worker, test_kn_ops and gpu_bench, the
#      shared libraries a bare CUDA image lacks, random test models; about 55 MiB)
#   2. on the device machine:       bash tests/gpu/run.sh
#      through the device tool with carry ["build-gpu-bundle"] (and timeout_s 600);
#      KOLM_GPU_LOGS=DIR also leaves the table and every log and JSON in DIR
#      (table.txt, gpu-logs.tar.gz)
#
# Takes the bundle's test_kn_ops and gpu_bench, or without a bundle (or with
# KOLM_GPU_REBUILD=1) builds the compute backends alone (build-gpu,
# -DKOLM_KERNELS_ONLY=ON: a GPU machine has the CUDA toolkit and CMake but not the
# gateway's Debian packages), runs the op parity tests (tests/unit/test_kn_ops.c
# holds the CUDA backend to the scalar reference on fresh random inputs, like the
# CPU backends), then, when
# build-gpu-bundle/ is there, the end-to-end greedy parity of the bundled worker
# (tests/gpu/parity.py: two workers, the same requests, token sequences compared):
#   (a) cpu vs cuda:0, f16 KV, exact, on each bundled random model (f32 and f16
#       weights: the CPU and CUDA backends compute the same function there, up to
#       summation order and the CUDA matmul's ~2^-16 per product (kn_cuda_mm.cu);
#       their chosen tokens' logprobs within 1e-3), and on the
#       default model when present ($KOLM_TEST_MODEL or
#       ~/.kolm/models/gemma-3-270m-q4_k_m.gguf; at 241 MiB it is not in the bundle)
#   (b) cuda:0 fp8 KV vs cuda:0 bf16 KV, >= 90% of tokens, on rand-llama-f16 (its
#       attention is damped so that FP8 noise rarely flips a token: the CPU reference
#       keeps 320/320 there)
#   (b2) cpu vs cuda:0 without logprobs (tokens picked by each backend's sample op,
#       no logits copied out), texts exact; cuda:0 with CUDA graphs (the default) vs
#       --cuda-graphs off, tokens and logprobs bit-equal (the kernels are
#       batch-invariant, so padding a step to its graph's shape changes nothing)
#   (b3) seeded sampling (temperature 0.9, top_p 0.95, top_k 40, min_p 0.02): cpu vs
#       cuda:0 >= 90% of tokens (the same draws; a draw within ~1e-5 of a boundary
#       may part, kn.h), cuda:0 graphs vs eager exact
#   (c) cpu fp8 vs cuda:0 fp8, exact, on each random model (the FP8 KV path itself),
#       and the same with --quantization fp8 (E4M3 weights, a scale per row)
# (KOLM_GPU_PARITY=0 skips (a)-(c)), then the GPU bench (issue 6; KOLM_GPU_BENCH=0
# skips it). All of it may not fit one 600 s device call; then run it as two:
#   KOLM_GPU_BENCH=0 bash tests/gpu/run.sh                            (the tests)
#   KOLM_GPU_PARITY=0 KOLM_GPU_NO_SANITIZER=1 bash tests/gpu/run.sh   (the bench)
# The GPU bench:
#   bench/gpu_bench (built here with the op tests, CUDA + cuBLAS): the copy bandwidth,
#       cuBLAS BF16 GEMM rate, the backend's decode attention bandwidth (BF16 and FP8
#       KV at 1k/8k/32k), the sample op over 1/64/256 rows of a 262144-token
#       vocabulary, and the KV capacity at a fixed budget; JSON in
#       build-gpu/gpu_bench.json
#   bench/gpu.py (needs build-gpu-bundle/ and a python3 with torch and transformers):
#       a random Qwen2.5-0.5B-shaped model, kolm-worker decode at batch 1/8/64/256 vs
#       the roofline from gpu_bench's copy bandwidth, KV waste, and transformers
#       `generate` on the same weights; bounded by KOLM_GPU_BENCH_BUDGET seconds
#       (default 180); JSON in build-gpu/gpu-e2e.json; KOLM_GPU_BENCH_ARGS adds
#       options (e.g. "--shape 1.5b", "--kv-dtype fp8")
# Their numbers are rows without PASS (a missed target is a finding, not a failed
# step); a bench tool that does not run through is a FAIL row, and the test rows
# stay. Then compute-sanitizer memcheck and racecheck on the op tests' CUDA cases when
# it works on that machine (KOLM_GPU_NO_SANITIZER=1 skips them; each is cut off after
# KOLM_GPU_SANITIZER_S seconds, default 240, a FAIL row), and a table last. Exit
# status: 0 when every step that ran passed.
#
# NOTE: on quantized weights (the default model is Q4_K_M) the CPU backend quantizes
# activations to Q8 and the CUDA backend multiplies them unquantized, so (a) on that model
# can part at a near-tie without a bug; parity.py prints the top-2 logprob gap of
# worker a where they part.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
B="${KOLM_GPU_BUILD:-$REPO/build-gpu}"
JOBS="${KOLM_JOBS:-$(nproc)}"
declare -a ROWS
rc=0
row() { ROWS+=("$(printf '%-40s %s' "$1" "$2")"); [ "${2%% *}" = PASS ] || [ "${2%% *}" = SKIP ] || rc=1; }
# note NAME VALUE: a row that reports a number and passes or fails nothing.
note() { ROWS+=("$(printf '%-40s %s' "$1" "$2")"); }
# notes LOG: the "row: NAME = VALUE" lines a bench tool printed, as notes.
notes() {
    local l
    while IFS= read -r l; do
        note "${l%% = *}" "${l#* = }"
    done < <(sed -n 's/^row: //p' "$1")
}

# finish: the table, the logs into $KOLM_GPU_LOGS (one archive) when set, and the status.
finish() {
    echo
    printf '%s\n' "${ROWS[@]}"
    if [ -n "${KOLM_GPU_LOGS:-}" ]; then
        mkdir -p "$KOLM_GPU_LOGS"
        printf '%s\n' "${ROWS[@]}" >"$KOLM_GPU_LOGS/table.txt"
        (cd "$B" && find . -maxdepth 2 \( -name '*.log' -o -name '*.json' \) -print0 |
            tar -czf "$KOLM_GPU_LOGS/gpu-logs.tar.gz" --null -T -)
    fi
    exit "$rc"
}

nvidia-smi -L || { echo "tests/gpu/run.sh: no GPU visible" >&2; exit 1; }
mkdir -p "$B"
BUNDLE="$REPO/build-gpu-bundle"
# The CUDA toolkit's libraries (cudart, cuBLAS) wherever this image keeps them.
CUDA_LIBS=""
for d in ${CUDA_HOME:+$CUDA_HOME/lib64 $CUDA_HOME/lib} /usr/local/cuda/lib64 /usr/local/cuda/lib \
    /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 /usr/local/cuda-*/lib /usr/local/lib; do
    [ -e "$d/libcublas.so.13" ] || [ -e "$d/libcudart.so.13" ] && CUDA_LIBS="$CUDA_LIBS${CUDA_LIBS:+:}$d"
done
# cuda_run CMD...: CMD with the toolkit's libraries (not for python: torch brings its own).
cuda_run() {
    LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
}
# The op test and the bench: the bundle's (built with it, from the commit in its
# MANIFEST) when their libraries are here, else built here (KOLM_GPU_REBUILD=1 builds
# them here regardless).
if [ -x "$BUNDLE/bin/test_kn_ops" ] && [ "${KOLM_GPU_REBUILD:-0}" != 1 ] &&
    ! cuda_run ldd "$BUNDLE/bin/test_kn_ops" "$BUNDLE/bin/gpu_bench" | grep -q 'not found'; then
    TEST_KN_OPS="$BUNDLE/bin/test_kn_ops"
    GPU_BENCH="$BUNDLE/bin/gpu_bench"
    row "build (sm_90a, sm_100a)" "PASS (the bundle's: $(head -1 "$BUNDLE/MANIFEST"))"
else
    TEST_KN_OPS="$B/tests/test_kn_ops"
    GPU_BENCH="$B/bin/gpu_bench"
    if cmake -S "$REPO" -B "$B" -DCMAKE_BUILD_TYPE=Release -DKOLM_WERROR=ON -DKOLM_CUDA=ON -DKOLM_KERNELS_ONLY=ON &&
        cmake --build "$B" --target test_kn_ops -j "$JOBS"; then
        row "build (sm_90a, sm_100a)" PASS
    else
        row "build (sm_90a, sm_100a)" FAIL
        finish
    fi
    # Its own build step: a bench that does not build must not hide the tests (nor
    # leave an earlier run's binary to be measured).
    rm -f "$GPU_BENCH"
    if [ "${KOLM_GPU_BENCH:-1}" != 0 ] && ! cmake --build "$B" --target gpu_bench -j "$JOBS"; then
        row "build gpu_bench" "FAIL (see the build output above)"
    fi
fi
if cuda_run "$TEST_KN_OPS" | tee "$B/test_kn_ops.log" && grep -q '^test_kn_ops: .* 0 failed' "$B/test_kn_ops.log" &&
    ! grep -q 'no CUDA device' "$B/test_kn_ops.log"; then
    row "op parity (test_kn_ops)" PASS
else
    row "op parity (test_kn_ops)" FAIL
fi
# ---- end-to-end greedy parity (needs build-gpu-bundle/ from tests/gpu/bundle.sh) ----
# parity NAME MODEL ARGS...: one parity.py run, its summary as the row.
parity() {
    local name="$1" model="$2"
    shift 2
    local out
    out="$B/parity-$(echo "$name" | tr -c 'A-Za-z0-9_.\n-' _)"
    echo "== parity $name: $(basename "$model") $*"
    if LD_LIBRARY_PATH="$BUNDLE/lib:$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$PY" "$REPO/tests/gpu/parity.py" --worker "$BUNDLE/bin/kolm-worker" --model "$model" --timeout 120 \
        --json "$out.json" "$@" 2>&1 | tee "$out.log"; then
        row "e2e $name" "PASS ($(sed -n 's/^parity: \(.* prompts identical.*\), [0-9.]* s: PASS$/\1/p' "$out.log"))"
    else
        local why
        why=$(sed -n '/^parity: .*FAIL/{s/^parity: //; s/^FAIL //; s/: FAIL$//; p}' "$out.log" | tail -1)
        row "e2e $name" "FAIL ($why; $out.log)"
    fi
}
if [ -d "$BUNDLE" ]; then
    cat "$BUNDLE/MANIFEST"
    PY=""
    for p in ${KOLM_PYTHON:-} "$REPO/.venv/bin/python" python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import msgpack, numpy' 2>/dev/null; then
            PY="$p"
            break
        fi
    done
    missing=$(LD_LIBRARY_PATH="$BUNDLE/lib:$CUDA_LIBS" ldd "$BUNDLE/bin/kolm-worker" | grep 'not found')
    if [ -z "$PY" ]; then
        row "e2e parity" "FAIL (no python3 with msgpack and numpy)"
    elif [ -n "$missing" ]; then
        row "e2e parity" "FAIL (kolm-worker: ${missing//$'\n'/ })"
    elif [ "${KOLM_GPU_PARITY:-1}" = 0 ]; then
        row "e2e parity" "SKIP (KOLM_GPU_PARITY=0)"
    else
        M="$BUNDLE/models"
        # NOTE: f16 vs f32 KV on the CPU moves these logprobs by 7e-4 at most; CPU vs
        # CUDA at the same KV dtype should differ by summation order only.
        for m in rand-qwen2-f32 rand-llama-f16; do
            parity "$m cpu=cuda f16" "$M/$m.gguf" --a cpu --b cuda:0 --max-dlogprob 1e-3
        done
        parity "rand-llama-f16 cuda fp8~bf16 >=0.9" "$M/rand-llama-f16.gguf" --a cuda:0 --a-kv fp8 --b cuda:0 \
            --b-kv bf16 --min-agree 0.9
        for m in rand-qwen2-f32 rand-llama-f16; do
            parity "$m cpu=cuda greedy on device" "$M/$m.gguf" --a cpu --b cuda:0 --no-logprobs
            parity "$m cuda graphs=eager" "$M/$m.gguf" --a cuda:0 --b cuda:0 --b-args "--cuda-graphs off" \
                --max-dlogprob 0
        done
        SAMPLED=(--temperature 0.9 --top-p 0.95 --top-k 40 --min-p 0.02 --seed 5)
        for m in rand-qwen2-f32 rand-llama-f16; do
            parity "$m cpu~cuda sampled >=0.9" "$M/$m.gguf" --a cpu --b cuda:0 "${SAMPLED[@]}" --min-agree 0.9
            parity "$m cuda sampled graphs=eager" "$M/$m.gguf" --a cuda:0 --b cuda:0 --b-args "--cuda-graphs off" \
                "${SAMPLED[@]}" --max-dlogprob 0
        done
        for m in rand-qwen2-f32 rand-llama-f16; do
            parity "$m cpu=cuda fp8" "$M/$m.gguf" --a cpu --a-kv fp8 --b cuda:0 --b-kv fp8
            parity "$m cpu=cuda fp8 weights" "$M/$m.gguf" --a cpu --a-args "--quantization fp8" --b cuda:0 \
                --b-args "--quantization fp8" --max-dlogprob 1e-3
        done
        DEF="${KOLM_TEST_MODEL:-$HOME/.kolm/models/gemma-3-270m-q4_k_m.gguf}"
        if [ -f "$DEF" ]; then
            parity "$(basename "$DEF" .gguf) cpu=cuda f16" "$DEF" --a cpu --b cuda:0
        else
            row "e2e default model" "SKIP (no $DEF)"
        fi
    fi
else
    row "e2e parity" "SKIP (no build-gpu-bundle/: run tests/gpu/bundle.sh first)"
fi
# ---- the GPU bench ----
if [ "${KOLM_GPU_BENCH:-1}" = 0 ]; then
    row "bench" "SKIP (KOLM_GPU_BENCH=0)"
else
    BENCH_JSON="$B/gpu_bench.json"
    rm -f "$BENCH_JSON"
    if [ ! -x "$GPU_BENCH" ]; then
        row "bench gpu_bench" "FAIL (not built: no cuBLAS in this toolkit, or the build failed)"
    else
        echo "== gpu_bench"
        if cuda_run timeout 300 "$GPU_BENCH" --json "$BENCH_JSON" 2>&1 | tee "$B/gpu_bench.log"; then
            row "bench gpu_bench" "PASS (numbers below; $BENCH_JSON)"
        else
            row "bench gpu_bench" "FAIL (exit $?; $B/gpu_bench.log)"
        fi
        notes "$B/gpu_bench.log"
    fi
    BUDGET="${KOLM_GPU_BENCH_BUDGET:-180}"
    if [ ! -d "$BUNDLE" ]; then
        row "bench e2e (gpu.py)" "SKIP (no build-gpu-bundle/: run tests/gpu/bundle.sh first)"
    elif [ -z "${PY:-}" ]; then
        row "bench e2e (gpu.py)" "FAIL (no python3 with msgpack and numpy)"
    elif ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
        row "bench e2e (gpu.py)" "SKIP ($PY has no torch and transformers)"
    elif [ -n "${missing:-}" ]; then
        row "bench e2e (gpu.py)" "FAIL (kolm-worker: ${missing//$'\n'/ })"
    else
        echo "== gpu.py (budget $BUDGET s)"
        # The bundle's and the toolkit's libraries go to the worker only (--worker-ld-path):
        # the python process loads torch's own CUDA libraries.
        if timeout $((BUDGET + 120)) "$PY" "$REPO/bench/gpu.py" --worker "$BUNDLE/bin/kolm-worker" \
            --worker-ld-path "$BUNDLE/lib${CUDA_LIBS:+:$CUDA_LIBS}" --bench-json "$BENCH_JSON" \
            --budget-s "$BUDGET" --workdir "$B/bench" --json "$B/gpu-e2e.json" ${KOLM_GPU_BENCH_ARGS:-} 2>&1 |
            tee "$B/gpu-e2e.log"; then
            row "bench e2e (gpu.py)" "PASS (numbers below; $B/gpu-e2e.json)"
        else
            row "bench e2e (gpu.py)" "FAIL (exit $?; $B/gpu-e2e.log)"
        fi
        notes "$B/gpu-e2e.log"
    fi
fi
if [ "${KOLM_GPU_NO_SANITIZER:-0}" = 1 ]; then
    row "compute-sanitizer" "SKIP (KOLM_GPU_NO_SANITIZER=1)"
elif command -v compute-sanitizer >/dev/null 2>&1; then
    # The CUDA backend's cases only (the CPU ones ran above), each tool bounded by
    # KOLM_GPU_SANITIZER_S seconds (default 240) so that the table still comes out.
    for tool in memcheck racecheck; do
        KOLM_TEST_BACKENDS=cuda0 cuda_run timeout "${KOLM_GPU_SANITIZER_S:-240}" compute-sanitizer --tool "$tool" \
            --error-exitcode 9 "$TEST_KN_OPS" >"$B/$tool.log" 2>&1
        st=$?
        if [ "$st" = 0 ]; then
            row "compute-sanitizer $tool" PASS
        elif grep -q "Device not supported" "$B/$tool.log"; then
            row "compute-sanitizer $tool" "SKIP (not supported on this machine)"
        elif [ "$st" = 124 ]; then
            row "compute-sanitizer $tool" "FAIL (over ${KOLM_GPU_SANITIZER_S:-240} s: unchecked; $B/$tool.log)"
        else
            row "compute-sanitizer $tool" "FAIL (see $B/$tool.log)"
        fi
    done
else
    row "compute-sanitizer" "SKIP (not installed)"
fi
finish
