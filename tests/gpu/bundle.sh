#!/usr/bin/env bash
# tests/gpu/bundle.sh: run on a build machine (it has our Debian packages and the
# CUDA toolkit) before a GPU session. It makes build-gpu-bundle/, what a bare CUDA
# image needs to run the end-to-end parity and bench/gpu.py in tests/gpu/run.sh:
#
#   build-gpu-bundle/bin/kolm-worker   Release, -DKOLM_CUDA=ON -DKOLM_WERROR=ON
#   build-gpu-bundle/bin/test_kn_ops   the op parity test and the GPU bench of the same
#   build-gpu-bundle/bin/gpu_bench     build (run.sh runs them instead of building its own:
#                                      device minutes are scarcer than build ones here)
#   build-gpu-bundle/lib/*.so*         the worker's shared libraries that such an image
#                                      lacks (libmsgpackc, libsodium, libjansson, ...)
#   build-gpu-bundle/models/*.gguf     random test models (tests/fixtures/tinygguf.py)
#   build-gpu-bundle/wheels/*.whl      the pure-python `gguf` wheel (tests/requirements.txt's
#                                      pin) for bench/gpu.py, which writes its model there
#   build-gpu-bundle/MANIFEST          what was built from which commit
#
# The build tree itself stays in build-gpu-bundle.build/ (not carried). Libraries
# left out: glibc, the CUDA toolkit's, and those of an Ubuntu 24.04 base image
# (SYSTEM_LIBS below). Safe to run twice. Prints the carry list for the device tool.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$REPO/build-gpu-bundle"
B="${KOLM_BUNDLE_BUILD:-$REPO/build-gpu-bundle.build}"
JOBS="${KOLM_JOBS:-2}"
PY="${KOLM_PYTHON:-$REPO/.venv/bin/python}"
MAX_MIB=60
# On an Ubuntu 24.04 base image (or part of glibc): not bundled.
SYSTEM_LIBS='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libresolv|libgcc_s|libstdc\+\+|libz'
SYSTEM_LIBS+='|libcrypto|libssl)\.so'
# From the CUDA toolkit or the driver: not bundled.
CUDA_LIBS='^lib(cuda|cudart|cublas|cublasLt|nvrtc|nvJitLink|nvidia-)'

if ! "$PY" -c 'import gguf, numpy'; then
    echo "bundle.sh: $PY cannot import gguf and numpy (tests/run.sh sets up .venv; or set KOLM_PYTHON)" >&2
    exit 1
fi
cmake -S "$REPO" -B "$B" -DCMAKE_BUILD_TYPE=Release -DKOLM_CUDA=ON -DKOLM_WERROR=ON >/dev/null
cmake --build "$B" --target kolm-worker test_kn_ops gpu_bench -j "$JOBS"

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/models"
cp "$B/bin/kolm-worker" "$B/tests/test_kn_ops" "$B/bin/gpu_bench" "$OUT/bin/"

# Every resolved library of the worker (ldd lists the transitive ones too).
ldd "$B/bin/kolm-worker" | awk '$2 == "=>" { print $1, $3 }' >"$OUT/ldd.txt"
while read -r name path; do
    if [[ "$name" =~ $SYSTEM_LIBS || "$name" =~ $CUDA_LIBS ]]; then
        continue
    fi
    [ -f "$path" ] || { echo "bundle.sh: $name is not found (ldd: $path)" >&2; exit 1; }
    cp -L "$path" "$OUT/lib/$name"
done <"$OUT/ldd.txt"
if grep -q 'not found' <(ldd "$B/bin/kolm-worker"); then
    echo "bundle.sh: kolm-worker has unresolved libraries here:" >&2
    ldd "$B/bin/kolm-worker" | grep 'not found' >&2
    exit 1
fi

# The newest glibc symbol version needed (Ubuntu 24.04 has 2.39).
glibc=$(objdump -T "$OUT"/bin/* "$OUT"/lib/*.so* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)

# Random models, larger than tinygguf's default, untied (a tied random model only
# repeats its last token), with weights in f32 and f16. Not quantized ones: for those
# the CPU backend quantizes activations to Q8 and the CUDA backend does not, so
# greedy parity is not expected to be exact, and on a random model's flat logits it
# is not. Their vocabularies get their chat templates' markup tokens (control tokens,
# put before BOS and EOS) so that chat requests render.
#   rand-qwen2-f32: f32 weights (three MMAs a step), q/k/v biases, as sensitive as random
#       weights make it
#   rand-llama-f16: f16 weights; attn_output scaled by 0.1, so that
#       FP8 KV noise rarely flips a greedy token (for the fp8-vs-f16 agreement check:
#       the CPU reference keeps 320/320 tokens here, 178/320 on rand-qwen2-f32)
"$PY" - "$REPO" "$OUT/models" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1] + "/tests")
import fixtures.tinygguf as tg
shape = dict(n_layer=6, n_embd=256, n_head=8, n_head_kv=2, head_dim=32, n_ff=768, n_ctx=1024, tied=False)
for name, arch, wtype, seed, markup, attn_scale in [
        ("rand-qwen2-f32", "qwen2", "f32", 11, ["<|im_start|>", "<|im_end|>"], 1.0),
        ("rand-llama-f16", "llama", "f16", 12, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], 0.1)]:
    tg.write_model(f"{sys.argv[2]}/{name}.gguf", arch, wtype, seed=seed, markup=markup,
                   attn_output_scale=attn_scale, **shape)
EOF

# bench/gpu.py writes its GGUF with the gguf package, which the GPU image lacks: its
# pure-python wheel, unpacked by gpu.py at run time. Of gguf's dependencies, numpy is
# there (with torch); PyYAML is imported (by gguf.metadata) but not used to write a
# file, and gpu.py stands in for it when absent; requests and tqdm are not imported.
# A failed download leaves the parity bundle usable: gpu.py then says what is missing.
GGUF_PIN=$(grep -E '^gguf==' "$REPO/tests/requirements.txt" | head -1)
mkdir -p "$OUT/wheels"
if "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$OUT/wheels" "${GGUF_PIN:-gguf}" &&
    ls "$OUT"/wheels/gguf-*-py3-none-any.whl >/dev/null 2>&1; then
    wheels="$(cd "$OUT/wheels" && echo *.whl)"
else
    echo "bundle.sh: WARNING: no pure-python ${GGUF_PIN:-gguf} wheel; bench/gpu.py will not run on the device" >&2
    wheels="none (download failed)"
fi

{
    src=(CMakeLists.txt common proto kernels worker)
    dirty=$(git -C "$REPO" diff --quiet HEAD -- "${src[@]}" || echo ' (+ uncommitted changes)')
    echo "commit $(git -C "$REPO" rev-parse HEAD)$dirty"
    echo "built $(date -u +%FT%TZ) with $(nvcc --version | grep -o 'release [0-9.]*'), newest glibc symbol $glibc"
    echo "bundled libs: $(cd "$OUT/lib" && echo *)"
    echo "wheels: $wheels"
    echo "left to the image: $(awk '{print $1}' "$OUT/ldd.txt" | grep -E "$SYSTEM_LIBS|$CUDA_LIBS" | tr '\n' ' ')"
} >"$OUT/MANIFEST"
cat "$OUT/MANIFEST"
du -sh "$OUT"/*
mib=$(du -sm "$OUT" | cut -f1)
if [ "$mib" -gt "$MAX_MIB" ]; then
    echo "bundle.sh: $OUT is $mib MiB, over $MAX_MIB (the device carry takes 64 MiB with the repo)" >&2
    exit 1
fi
echo "bundle: $OUT ($mib MiB)"
echo 'carry: ["build-gpu-bundle"]'
