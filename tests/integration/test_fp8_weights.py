"""FP8 weights (`--quantization fp8`) on the CPU worker, against an oracle written
in numpy: tests/fixtures/tinygguf.py's fp8_emulated model stores, as plain F32,
the values FP8 quantization must make of the f16 model of the same seed (a scale
of amax / 448 per output row, E4M3 codes rounded to nearest even). kolm loading
the f16 model with --quantization fp8 must compute exactly what it computes for
that F32 model: the same logits on the reference backend, the same greedy text
and logprobs end to end. The FP8 model is not the f16 model (its logits move, by
FP8's noise), embeddings and the LM head are left alone, and a bad --quantization
value is refused by name. The same quantization on a GPU is tests/gpu/run.sh."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, KolmServer
from test_model_oracle import run_kt as run_kt_err

sys.path.insert(0, str(REPO / "tests"))
from fixtures import tinygguf  # noqa: E402

SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_ctx=256, tied=False,
             markup=["<|im_start|>", "<|im_end|>"])
TOKENS = [5, 77, 200, 41, 258, 12, 99, 3]


def run_kt(*args, **kw):
    return run_kt_err(*args, **kw)[0]  # the logits, without kt_logits' stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8w")
    out = {}
    for arch in ("llama", "qwen2"):
        out[arch] = d / f"{arch}-f16.gguf"
        out[arch + "-oracle"] = d / f"{arch}-fp8-oracle.gguf"
        tinygguf.write_model(out[arch], arch, "f16", seed=21, **SHAPE)
        tinygguf.write_model(out[arch + "-oracle"], arch, "f16", seed=21, fp8_emulated=True, **SHAPE)
    return out


def test_fp8_rows_rounding():
    """The oracle's own rounding on hand-worked values: 448 saturates, ties go to
    even, subnormals step by 2^-9, a zero row keeps scale 1."""
    got = tinygguf._e4m3(np.array([448.0, 500.0, -1.0625, 1.1875, 0.001, 2.0 ** -10, 0.0], dtype=np.float32))
    assert got.tolist() == [448.0, 448.0, -1.0, 1.25, 2.0 ** -9, 0.0, 0.0]
    rows = tinygguf.fp8_rows(np.array([[0.0, 0.0], [448.0, -224.0]], dtype=np.float32))
    assert rows.tolist() == [[0.0, 0.0], [448.0, -224.0]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fp8_is_the_oracle_on_ref(arch, models, tmp_path):
    fp8 = run_kt(models[arch], TOKENS, tmp_path, backend="ref", extra=["--quantization", "fp8"])
    oracle = run_kt(models[arch + "-oracle"], TOKENS, tmp_path, backend="ref")
    assert np.array_equal(fp8, oracle), f"max |diff| {np.abs(fp8 - oracle).max()}"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fp8_cpu_matches_ref_and_moves_logits(arch, models, tmp_path):
    ref = run_kt(models[arch], TOKENS, tmp_path, backend="ref", extra=["--quantization", "fp8"])
    cpu = run_kt(models[arch], TOKENS, tmp_path, backend="cpu", extra=["--quantization", "fp8"])
    plain = run_kt(models[arch], TOKENS, tmp_path, backend="ref")
    scale = np.abs(plain).max()
    assert np.abs(cpu - ref).max() <= 1e-4 * scale
    moved = np.abs(ref - plain).max()
    # E4M3 keeps 3 mantissa bits: the logits move, by a few percent of their range at most
    assert 1e-4 * scale < moved < 0.1 * scale, (moved, scale)


def complete(srv, prompt):
    status, _, body = srv.request("POST", "/v1/completions",
                                  {"model": srv.model_id, "prompt": prompt, "max_tokens": 24, "temperature": 0,
                                   "logprobs": 2})
    assert status == 200, body
    choice = json.loads(body)["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def test_serve_fp8_equals_the_oracle(kolm_bin, models, tmp_path):
    fp8 = KolmServer(kolm_bin, models["qwen2"], tmp_path / "fp8", extra_args=["--quantization", "fp8"])
    oracle = KolmServer(kolm_bin, models["qwen2-oracle"], tmp_path / "oracle")
    plain = KolmServer(kolm_bin, models["qwen2"], tmp_path / "plain")
    try:
        for s in (fp8, oracle, plain):
            s.start()
        log = fp8.log_path.read_text(errors="replace")
        assert "fp8: 14 of 14 layer projections quantized" in log, fp8.log_tail()
        differ = 0
        for prompt in ["hello there", "the cat", "in the", "abc"]:
            a, b, c = complete(fp8, prompt), complete(oracle, prompt), complete(plain, prompt)
            assert a == b, (prompt, a, b)
            differ += a[1] != c[1]
        assert differ > 0, "--quantization fp8 served the f16 model's own logprobs"
    finally:
        for s in (fp8, oracle, plain):
            s.stop()


def test_serve_refuses_a_bad_quantization(kolm_bin, models):
    r = subprocess.run([str(kolm_bin), "serve", str(models["llama"]), "--allow-unsigned", "--quantization", "int3"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode != 0
    assert "--quantization" in r.stderr, r.stderr
