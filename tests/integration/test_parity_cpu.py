"""The CPU side of tests/gpu/parity.py, the GPU-vs-CPU greedy parity check: on a
machine without a GPU it runs two CPU workers against each other, so the harness
(spawning workers, proto v4, comparing tokens and logprobs) is exercised by CI and
not first run on a lent GPU. Two workers on one model agree exactly; a worker on a
different model, or one whose logprobs move past the bound, makes it fail."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
from fixtures import tinygguf  # noqa: E402

SHAPE = dict(n_layer=3, n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=256, n_ctx=512, tied=False,
             markup=["<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    out = {}
    for name, seed, scale in [("a", 11, 1.0), ("b", 12, 1.0), ("a_nudged", 11, 1.002)]:
        out[name] = d / f"{name}.gguf"
        tinygguf.write_model(out[name], "qwen2", "f32", seed=seed, attn_output_scale=scale, **SHAPE)
    return out


def parity(kolm_bin, *args):
    cmd = [sys.executable, str(REPO / "tests" / "gpu" / "parity.py"), "--worker",
           str(Path(kolm_bin).parent / "kolm-worker"), "--a", "cpu", "--b", "cpu", "--tokens", "16", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_same_model_agrees_exactly(kolm_bin, models):
    rc, out = parity(kolm_bin, "--model", models["a"], "--max-dlogprob", "1e-3")
    assert rc == 0, out
    assert "10/10" in out, out


def test_other_model_fails(kolm_bin, models):
    rc, out = parity(kolm_bin, "--model", models["a"], "--b-model", models["b"])
    assert rc == 1, out


def test_logprob_drift_fails(kolm_bin, models):
    # attention 0.2% stronger on side b: tokens may all agree, logprobs do not stay within 1e-6
    rc, out = parity(kolm_bin, "--model", models["a"], "--b-model", models["a_nudged"], "--min-agree", "0",
                     "--max-dlogprob", "1e-6")
    assert rc == 1, out


def test_missing_device_is_an_error(kolm_bin, models):
    rc, out = parity(kolm_bin, "--model", models["a"], "--b", "cuda:999")
    assert rc == 2, out
