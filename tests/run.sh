#!/usr/bin/env bash
# shellcheck disable=SC2317  # step functions are called indirectly by run_step
# tests/run.sh: the whole kolm test suite, idempotent; what CI runs (.ci/run).
#
# Steps (each reported PASS / FAIL / SKIP in the summary line at the end):
#   setup        deploy/setup.sh without the build: Debian packages, .venv, default model
#   build        ./build, Release, -DKOLM_WERROR=ON, CPU only
#   deps         tests/requirements.txt into .venv (skipped when every pin is installed;
#                llama-cpp-python's wheel is built once per machine by tests/oracle-wheel.sh,
#                ~10 min on 2 cores)
#   unit         ctest in ./build
#   asan         ./build-asan with -DKOLM_ASAN=ON (ASAN + UBSAN), ctest there
#   fuzz         libFuzzer runs of the frame decoder, the chat request parser and the .kolm reader
#                (build-fuzz, clang), KOLM_FUZZ_SECONDS (default 60) split between them
#   cuda         when nvcc exists and the project has CUDA sources: ./build-cuda with
#                -DKOLM_CUDA=ON (compile check; its ctest runs too when a GPU is visible)
#   integration  pytest tests/integration against the real `kolm serve`
# Exit status: 0 only when no step failed.
#
# Knobs: KOLM_JOBS (default 2), KOLM_HOME (where the default model lives),
# KOLM_SKIP_ASAN=1, KOLM_SKIP_CUDA=1, KOLM_FUZZ_SECONDS (default 60, both fuzzers together),
# KOLM_PYTEST_ARGS (extra pytest arguments),
# KOLM_ALLOW_SKIP_ORACLE=1 (let the llama.cpp oracle tests skip if llama_cpp is absent).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
JOBS="${KOLM_JOBS:-2}"
export MAKEFLAGS="-j$JOBS"
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
MODEL="${KOLM_HOME:-$HOME/.kolm}/models/gemma-3-270m-q4_k_m.gguf"
VPY="$REPO/.venv/bin/python"

declare -a SUMMARY=()
FAILED=0
T0=$(date +%s)

log() { printf '\n[tests] ===== %s\n' "$*" >&2; }

# record NAME STATUS [NOTE]
record() {
    SUMMARY+=("$1=$2${3:+ ($3)}")
    [ "$2" = FAIL ] && FAILED=$((FAILED + 1))
    printf '[tests] ----- %s: %s%s\n' "$1" "$2" "${3:+ ($3)}" >&2
}

# run_step NAME FUNCTION: runs FUNCTION, records PASS or FAIL with the elapsed time.
run_step() {
    local name="$1" fn="$2" t rc
    log "$name"
    t=$(date +%s)
    "$fn"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        record "$name" PASS "$(($(date +%s) - t))s"
    else
        record "$name" FAIL "exit $rc, $(($(date +%s) - t))s"
    fi
    return "$rc"
}

step_setup() { KOLM_SKIP_BUILD=1 bash "$REPO/deploy/setup.sh"; }

step_build() {
    cmake -S "$REPO" -B "$REPO/build" -DCMAKE_BUILD_TYPE=Release -DKOLM_WERROR=ON \
        -DKOLM_CUDA=OFF &&
        cmake --build "$REPO/build" -j "$JOBS"
}

# Exit 0 when every pin of the requirements file is installed in .venv.
pins_installed() {
    "$VPY" - "$1" <<'EOF'
import importlib.metadata as md, re, sys
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    name = re.sub(r"\[.*\]", "", name).strip()
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have != want.strip():
        print(f"[tests] {name}: want {want.strip()}, have {have}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
EOF
}

step_deps() {
    [ -x "$VPY" ] || { echo "no .venv (setup failed?)" >&2; return 1; }
    local wheels marker
    wheels="$(bash "$REPO/tests/oracle-wheel.sh" "$VPY")" || return 1
    if pins_installed "$REPO/tests/requirements.txt"; then
        echo "[tests] test dependencies already installed at the pinned versions" >&2
    else
        "$VPY" -m pip install --find-links "$wheels" --only-binary llama-cpp-python \
            -r "$REPO/tests/requirements.txt" || return 1
    fi
    # The venv's llama_cpp must be the oracle build, not one pip built with other flags.
    marker="$REPO/.venv/.oracle-$(basename "$wheels")"
    if [ ! -f "$marker" ]; then
        "$VPY" -m pip install --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl || return 1
        touch "$marker"
    fi
    "$VPY" -c 'import openai, jsonschema, yaml, nacl, pytest, gguf, numpy, llama_cpp' || return 1
}

step_unit() {
    KOLM_TEST_MODEL="$MODEL" ctest --test-dir "$REPO/build" --output-on-failure \
        --no-tests=error -j "$JOBS"
}

step_asan() {
    cmake -S "$REPO" -B "$REPO/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DKOLM_WERROR=ON -DKOLM_CUDA=OFF -DKOLM_ASAN=ON || return 1
    cmake --build "$REPO/build-asan" -j "$JOBS" || return 1
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        KOLM_TEST_MODEL="$MODEL" \
        ctest --test-dir "$REPO/build-asan" --output-on-failure --no-tests=error -j "$JOBS"
}

# libFuzzer smoke runs: the frame decoder (fuzz_proto, seeded with one valid frame)
# and the request parsers (fuzz_chat: chat and legacy completions, seeded with a few
# request bodies), each
# for half of KOLM_FUZZ_SECONDS (default 60 in all). The step fails if either
# target finds a crash, leak or sanitizer report; the reproducer is kept in
# build-fuzz/artifacts/ and the report's tail is printed.
# run_fuzzer NAME SECONDS CORPUS [libFuzzer flags...]
run_fuzzer() {
    local name="$1" secs="$2" corpus="$3" log rc
    shift 3
    log="$REPO/build-fuzz/$name.log"
    mkdir -p "$REPO/build-fuzz/artifacts"
    "$REPO/build-fuzz/bin/$name" -max_total_time="$secs" \
        -artifact_prefix="$REPO/build-fuzz/artifacts/$name-" "$@" "$corpus" >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "[tests] $name: no crash in ${secs}s: $(grep -E '^(#[0-9]+|Done)' "$log" | tail -n 2 | tr '\n' ' ')" >&2
    else
        echo "[tests] $name: FAILED (exit $rc); the end of $log:" >&2
        tail -n 80 "$log" >&2
    fi
    return "$rc"
}

# Two small .kolm files for fuzz_kolm to start from: an unsigned one with two
# embedded blobs, and a signed one (PyNaCl from the venv) with a real-number eval.
seed_artifacts() {
    "$VPY" - "$1" <<'PY'
import hashlib, json, struct, sys
from nacl.signing import SigningKey
def canon(o):
    return json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
def artifact(blobs, extra, key=None):
    table, off = [], 0
    for _ in range(4):  # the manifest's length moves the first offset
        start = (64 + len(canon(dict(extra, kolm_format=1, blobs=table))) + 63) // 64 * 64 if table else 0
        table, off = [], max(start, 64)
        for role, data in blobs:
            table.append({"role": role, "name": role + ".gguf", "format": "gguf", "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "offset": off})
            off = (off + len(data) + 63) // 64 * 64
    m = canon(dict(extra, kolm_format=1, blobs=table))
    body = bytearray(m)
    body += bytes(table[0]["offset"] - 64 - len(m))
    for (role, data), b in zip(blobs, table):
        body += bytes(b["offset"] - 64 - len(body)) + data
    body += bytes((-len(body)) % 64)
    sig = b""
    if key:
        s = key.sign(m).signature
        pk = bytes(key.verify_key)
        import base64
        b64 = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
        sig = canon({"alg": "ed25519", "key_id": hashlib.sha256(pk).hexdigest()[:16],
                     "public_key": b64(pk), "signature": b64(s)})
    soff = 64 + len(body) if key else 0
    head = b"\x89KOLM\r\n\x1a" + struct.pack("<IIQQQ", 1, 64, len(m), soff, len(sig)) + bytes(24)
    return head + bytes(body) + sig
d = sys.argv[1]
open(d + "/unsigned", "wb").write(artifact([("weights", b"GGUF" + bytes(100)), ("draft", b"x" * 70)],
                                           {"name": "seed", "family": "gemma3"}))
open(d + "/signed", "wb").write(artifact([("weights", b"GGUF" + bytes(10))],
                                         {"name": "s", "eval": {"k": 0.93, "n": [1, 2e-05]}},
                                         SigningKey(bytes(range(32)))))
PY
}

step_fuzz() {
    CC=clang cmake -S "$REPO" -B "$REPO/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DKOLM_CUDA=OFF -DKOLM_FUZZ=ON -DKOLM_ASAN=ON || return 1
    cmake --build "$REPO/build-fuzz" --target fuzz_proto fuzz_chat fuzz_kolm -j "$JOBS" || return 1
    local total="${KOLM_FUZZ_SECONDS:-60}" each root rc=0
    each=$((total / 3))
    [ "$each" -ge 1 ] || each=1
    root="$(mktemp -d "${TMPDIR:-/tmp}/kolm-fuzz.XXXXXX")"
    mkdir -p "$root/proto" "$root/chat" "$root/kolm"
    printf 'KLMF\x00\x04\x00\x03\x00\x00\x00\x06\x81\xa3job\x01' >"$root/proto/seed"
    printf '%s' '{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a"],"max_tokens":3}' \
        >"$root/chat/plain"
    printf '%s' '{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null}],"temperature":0,"top_p":0.9,"top_k":4,"seed":7,"stop":"x"}' \
        >"$root/chat/parts"
    printf '%s' '{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":5,"n":1,"logprobs":false,"tools":[],"tool_choice":"none","response_format":{"type":"text"},"logit_bias":{}}' \
        >"$root/chat/stream"
    printf '%s' '{"model":"other","messages":[{"role":"user","content":"hi"}],"bogus":1}' >"$root/chat/errors"
    printf '%s' '{"model":"m","messages":[{"role":"user","content":"hi"}],"n":3,"logprobs":true,"top_logprobs":5,"presence_penalty":0.5,"frequency_penalty":-1,"logit_bias":{"42":-100,"7":2.5}}' \
        >"$root/chat/sampling"
    printf '%s' '{"model":"m","prompt":["a",[1,2,3]],"n":2,"best_of":2,"echo":true,"max_tokens":4,"suffix":""}' \
        >"$root/chat/legacy"
    printf '%s' '{"model":"m","prompt":[2,100,7],"logprobs":3,"stream":true}' >"$root/chat/legacy_ids"
    printf '%s' '{"model":"m","messages":[{"role":"user","content":"w?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"18C","name":"get_weather"}]}' \
        >"$root/chat/tool_history"
    seed_artifacts "$root/kolm" || rc=1
    run_fuzzer fuzz_proto "$each" "$root/proto" || rc=1
    run_fuzzer fuzz_chat "$each" "$root/chat" -dict="$REPO/tests/fuzz/chat.dict" || rc=1
    run_fuzzer fuzz_kolm "$each" "$root/kolm" || rc=1
    rm -rf "$root"
    return "$rc"
}

NVCC=""
find_nvcc() {
    NVCC="$(command -v nvcc || true)"
    [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
    [ -n "$NVCC" ]
}

# CUDA sources exist under kernels/ and kernels/CMakeLists.txt refers to CUDA.
has_cuda_sources() {
    grep -qi 'cuda' "$REPO/kernels/CMakeLists.txt" 2>/dev/null &&
        [ -n "$(find "$REPO/kernels" -name '*.cu' -print -quit)" ]
}

step_cuda() {
    cmake -S "$REPO" -B "$REPO/build-cuda" -DCMAKE_BUILD_TYPE=Release -DKOLM_WERROR=ON \
        -DKOLM_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" || return 1
    cmake --build "$REPO/build-cuda" -j "$JOBS" || return 1
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        KOLM_TEST_MODEL="$MODEL" ctest --test-dir "$REPO/build-cuda" --output-on-failure -j 1
    else
        echo "[tests] no GPU visible: CUDA build compiled, GPU tests not run" >&2
    fi
}

step_integration() {
    local home rc
    home="$(mktemp -d "${TMPDIR:-/tmp}/kolm-test-home.XXXXXX")"
    # shellcheck disable=SC2086
    KOLM_BUILD="$REPO/build" KOLM_TEST_MODEL="$MODEL" KOLM_HOME="$home" \
        timeout 2700 "$VPY" -m pytest "$REPO/tests/integration" -v -rfEs \
        -p no:cacheprovider ${KOLM_PYTEST_ARGS:-}
    rc=$?
    rm -rf "$home"
    return "$rc"
}

# --- the run ------------------------------------------------------------------------
setup_ok=0; build_ok=0; deps_ok=0
run_step setup step_setup && setup_ok=1
run_step build step_build && build_ok=1
if [ "$setup_ok" = 1 ]; then
    run_step deps step_deps && deps_ok=1
else
    record deps FAIL "setup failed"
fi

if [ "$build_ok" = 1 ]; then run_step unit step_unit; else record unit FAIL "build failed"; fi

if [ "${KOLM_SKIP_ASAN:-0}" = 1 ]; then
    record asan SKIP "KOLM_SKIP_ASAN=1"
else
    run_step asan step_asan
fi

if command -v clang >/dev/null 2>&1; then run_step fuzz step_fuzz; else record fuzz FAIL "no clang (setup installs it)"; fi

if [ "${KOLM_SKIP_CUDA:-0}" = 1 ]; then
    record cuda SKIP "KOLM_SKIP_CUDA=1"
elif ! find_nvcc; then
    record cuda SKIP "no nvcc"
elif ! has_cuda_sources; then
    record cuda SKIP "no CUDA sources in kernels/ yet"
else
    run_step cuda step_cuda
fi

if [ "$build_ok" = 1 ] && [ "$deps_ok" = 1 ]; then
    run_step integration step_integration
else
    record integration FAIL "needs build and deps"
fi

echo
echo "[tests] SUMMARY: ${SUMMARY[*]}"
if [ "$FAILED" -eq 0 ]; then
    echo "kolm tests: PASSED ($(($(date +%s) - T0))s)"
    exit 0
fi
echo "kolm tests: FAILED ($FAILED failed step(s), $(($(date +%s) - T0))s)"
exit 1
