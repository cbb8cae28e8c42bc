"""The forward pass against llama.cpp (llama-cpp-python) as the numeric oracle.

(a) Tiny random-weight llama / qwen2 / gemma3 models written by
    tests/fixtures/tinygguf.py, in F32, F16 and Q8_0: kt_logits' logits for every
    position must match llama.cpp's within a stated tolerance. The token sequence
    is longer than the tiny gemma3's sliding window (4), so windowed and global
    layers both matter; GQA (4 query heads over 2 KV heads), qwen2's biases,
    llama's NORM rope with rope_freqs factors and untied output are all covered.
(b) The real Gemma 3 GGUF ($KOLM_TEST_MODEL): for a dozen prompts tokenized by
    llama.cpp, our top-1 next token equals llama.cpp's, and over every position
    the max |logit diff|, the per-row RMS diff and KL divergence stay under
    bounds measured to sit between llama.cpp's own f16 noise and real bugs
    (all printed per prompt; see GEMMA_* below).

Environment: KOLM_BUILD (default <repo>/build) holds tests/kt_logits;
KOLM_TEST_MODEL is the Gemma GGUF (default ~/.kolm/models/gemma-3-270m-q4_k_m.gguf,
then /tmp/gemma.gguf). Without llama_cpp the module fails, or skips when
KOLM_ALLOW_SKIP_ORACLE=1.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from fixtures import tinygguf  # noqa: E402

try:
    import llama_cpp
except ImportError:  # pragma: no cover - depends on the environment
    llama_cpp = None
    if os.environ.get("KOLM_ALLOW_SKIP_ORACLE") == "1":
        pytest.skip("llama_cpp is not installed", allow_module_level=True)
    raise

GGML_TYPE_F32 = 0


def kt_logits_bin():
    p = Path(os.environ.get("KOLM_BUILD", REPO / "build")) / "tests" / "kt_logits"
    if not p.exists():
        pytest.fail(f"{p} not found: build the kt_logits target or set KOLM_BUILD")
    return p


def gemma_path():
    env = os.environ.get("KOLM_TEST_MODEL")
    if env:
        return Path(env)
    home = Path(os.environ.get("KOLM_HOME", Path.home() / ".kolm")) / "models" / "gemma-3-270m-q4_k_m.gguf"
    return home if home.exists() else Path("/tmp/gemma.gguf")


def run_kt(model, tokens, tmp_path, backend="cpu", mode="prefill", kv="f32", block_size=16, all_rows=True,
           extra=()):
    out = tmp_path / "logits.f32"
    cmd = [str(kt_logits_bin()), str(model), "--backend", backend, "--mode", mode, "--kv", kv, "--block-size",
           str(block_size), "--threads", "2", "--out", str(out), *extra]
    if all_rows:
        cmd.append("--all")
    r = subprocess.run(cmd, input=json.dumps(tokens), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"kt_logits failed ({r.returncode}): {r.stderr}"
    meta = json.loads(r.stdout)
    arr = np.fromfile(out, dtype=np.float32).reshape(meta["n_rows"], meta["n_vocab"])
    return arr, r.stderr


def run_llama(model, tokens, kv_f32=True, all_rows=True):
    kw = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if kv_f32 else {}
    llm = llama_cpp.Llama(str(model), n_ctx=max(64, len(tokens) + 8), n_batch=512, logits_all=all_rows,
                          verbose=False, n_threads=2, seed=1, **kw)
    try:
        llm.eval(tokens)
        if all_rows:
            return np.array(llm.scores[:len(tokens)], dtype=np.float32)
        return np.array(llm.scores[len(tokens) - 1:len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def max_diff(a, b):
    assert a.shape == b.shape
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.abs(a - b).max())


# (a) tiny models --------------------------------------------------------------

# Tolerance as a fraction of max(1, max|logit|). F32 weights + F32 KV on both
# sides: only summation order differs. F16 weights: llama.cpp rounds activations
# to f16 for f16 dot products (we do not). Q8_0: both quantize activations to Q8_0,
# but a rounding flip in one block can move a logit a little more.
TOL = {"f32": 1e-4, "f16": 3e-3, "q8_0": 5e-3}

TINY = [(arch, wt) for arch in ("llama", "qwen2", "gemma3") for wt in ("f32", "f16", "q8_0")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tinygguf")


def tiny_model(tiny_dir, arch, wtype):
    p = tiny_dir / f"{arch}-{wtype}.gguf"
    if not p.exists():
        tinygguf.write_model(p, arch, wtype, n_layer=6 if arch == "gemma3" else 3, rope_freqs=(arch == "llama"),
                             seed=sum(map(ord, arch + wtype)))
    return p


def tiny_tokens(n=24, seed=7):
    rng = np.random.default_rng(seed)
    _, _, _, bos, _ = tinygguf.vocab()
    return [bos] + [int(t) for t in rng.integers(0, 261, n - 1)]


@pytest.mark.parametrize("arch,wtype", TINY)
def test_tiny_vs_llamacpp(tiny_dir, tmp_path, arch, wtype):
    model = tiny_model(tiny_dir, arch, wtype)
    toks = tiny_tokens()
    ref = run_llama(model, toks)
    ours, _ = run_kt(model, toks, tmp_path)
    d = max_diff(ours, ref)
    tol = TOL[wtype] * max(1.0, float(np.abs(ref).max()))
    print(f"{arch}/{wtype}: max|diff| = {d:.3g} over {ref.shape}, max|logit| {np.abs(ref).max():.3g}, tol {tol:.3g}")
    assert d <= tol
    assert (ours.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("mode,backend,block_size", [("step", "cpu", 16), ("mixed", "cpu", 3), ("prefill", "ref", 1),
                                                     ("mixed", "ref", 5)])
def test_tiny_schedules_vs_llamacpp(tiny_dir, tmp_path, mode, backend, block_size):
    model = tiny_model(tiny_dir, "gemma3", "f32")
    toks = tiny_tokens(n=20, seed=11)
    ref = run_llama(model, toks)
    ours, err = run_kt(model, toks, tmp_path, backend=backend, mode=mode, block_size=block_size)
    d = max_diff(ours, ref)
    tol = TOL["f32"] * max(1.0, float(np.abs(ref).max()))
    print(f"gemma3/f32 {mode} {backend} bs={block_size}: max|diff| = {d:.3g}, tol {tol:.3g}; {err.strip()}")
    assert d <= tol


def test_tiny_f16_kv(tiny_dir, tmp_path):
    """Default (F16) KV cache on both sides."""
    model = tiny_model(tiny_dir, "qwen2", "f32")
    toks = tiny_tokens(n=16, seed=3)
    ref = run_llama(model, toks, kv_f32=False)
    ours, _ = run_kt(model, toks, tmp_path, kv="f16")
    d = max_diff(ours, ref)
    tol = 3e-3 * max(1.0, float(np.abs(ref).max()))
    print(f"qwen2/f32 kv f16: max|diff| = {d:.3g}, tol {tol:.3g}")
    assert d <= tol


@pytest.mark.parametrize("broken,name", [("shape", "blk.1.attn_k.weight"), ("missing", "blk.1.ffn_up.weight")])
def test_tiny_broken_model_is_refused(tmp_path, broken, name):
    p = tmp_path / f"broken-{broken}.gguf"
    tinygguf.write_model(p, "llama", "f32", broken=broken)
    r = subprocess.run([str(kt_logits_bin()), str(p)], input="[1, 2, 3]", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert name in r.stderr, r.stderr


# (b) the real Gemma 3 ---------------------------------------------------------

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):\n    if n <",
    "1, 2, 3, 4, 5,",
    "The quick brown fox jumps over the",
    "Water boils at a temperature of",
    "In 1492, Columbus sailed across the",
    "import numpy as np\nx = np.",
    "The opposite of hot is",
    "My favorite color is blue because",
    "To make a cup of tea, first",
    "La capitale de l'Italie est",
]

# NOTE: both sides quantize activations to Q8_0/Q8_K for these weight types, but
# llama.cpp also rounds q and the attention weights to f16 inside attention and
# takes GELU from an f16 table; Gemma's large activations amplify such roundings.
# llama.cpp itself moves by up to ~1.8 (max |logit diff|) between its own F16 and
# F32 KV cache or flash attention. Measured for kolm vs llama.cpp over all
# positions of these 12 prompts: max |diff| <= 3.14, per-row RMS diff <= 0.99,
# per-row KL(llama.cpp || kolm) <= 0.067, top-1 agreement 108/109. Deliberate
# bugs (rope base 1e6 on the sliding-window layers; attention scale
# 1/sqrt(n_embd/n_head); see the report in the commit) give max |diff| 6-7,
# RMS 1.8-2.5, KL 0.29-0.36, top-1 agreement 75-80%. The bounds sit between.
GEMMA_MAX_ABS = 4.5
GEMMA_MAX_RMS = 1.4
GEMMA_MAX_KL = 0.15
GEMMA_MIN_TOP1_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def gemma():
    p = gemma_path()
    if not p.exists():
        pytest.fail(f"Gemma model {p} not found: set KOLM_TEST_MODEL")
    llm = llama_cpp.Llama(str(p), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=1)
    yield p, llm
    llm.close()


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_gemma_vs_llamacpp(gemma, tmp_path):
    path, llm = gemma
    worst = dict(max_abs=0.0, rms=0.0, kl=0.0)
    agree = total = 0
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(toks)
        ref = np.array(llm.scores[:len(toks)], dtype=np.float32)
        ours, _ = run_kt(path, toks, tmp_path, kv="f16", all_rows=True)
        d = max_diff(ours, ref)
        rms = float(np.sqrt(((ours - ref) ** 2).mean(-1)).max())
        lp, lq = log_softmax(ref), log_softmax(ours)
        kl = float((np.exp(lp) * (lp - lq)).sum(-1).max())
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        total += len(toks)
        worst = dict(max_abs=max(worst["max_abs"], d), rms=max(worst["rms"], rms), kl=max(worst["kl"], kl))
        top_ref, top_ours = int(ref[-1].argmax()), int(ours[-1].argmax())
        print(f"{prompt!r}: {len(toks)} tokens, next-token top-1 ours {top_ours} llama.cpp {top_ref}, "
              f"max|diff| {d:.3f}, max row RMS {rms:.3f}, max row KL {kl:.4f}")
        assert top_ours == top_ref, f"{prompt!r}: top-1 {top_ours} != llama.cpp's {top_ref}"
        assert d < GEMMA_MAX_ABS, f"{prompt!r}: max |logit diff| {d}"
        assert rms < GEMMA_MAX_RMS, f"{prompt!r}: row RMS diff {rms}"
        assert kl < GEMMA_MAX_KL, f"{prompt!r}: row KL {kl}"
    print(f"gemma over {len(PROMPTS)} prompts: worst {worst}, top-1 agreement {agree}/{total}")
    assert agree >= GEMMA_MIN_TOP1_AGREEMENT * total
