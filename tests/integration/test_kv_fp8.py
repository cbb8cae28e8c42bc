"""The FP8 (E4M3) KV cache end to end on the CPU worker (where it runs through the
reference kernels): same API, about twice the KV blocks in the same memory, and greedy
continuations that stay about as close to an f32 cache's as the f16 cache's do.

Calibration on the default model (a small base model with many near-ties): against
f32, f16 leaves 4 of these 8 continuations equal and fp8 3; each parts from the f32
text at about the same places. So the check is relative to f16, not an absolute
agreement rate (the GPU target, >= 90% equal to BF16, is measured on a GPU)."""

import json
import re

import pytest

from conftest import KolmServer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Water boils at", "import numpy as np\n",
           "The quick brown fox", "In 1969, astronauts"]


@pytest.fixture(scope="module")
def servers(kolm_bin, kolm_model, tmp_path_factory):
    out = {}
    for kv in ("f32", "f16", "fp8"):
        out[kv] = KolmServer(kolm_bin, kolm_model, tmp_path_factory.mktemp("kv_" + kv), extra_args=["--kv-dtype", kv])
        out[kv].start()
    yield out
    for s in out.values():
        s.stop()


def complete(srv, prompt):
    status, _, body = srv.request("POST", "/v1/completions",
                                  {"model": srv.model_id, "prompt": prompt, "max_tokens": 32, "temperature": 0})
    assert status == 200, body
    text = json.loads(body)["choices"][0]["text"]
    assert text, prompt
    return text


def kv_blocks(srv):
    m = re.search(r"(\d+) (\w+) KV blocks", srv.log_tail(100000))
    assert m, srv.log_tail()
    return int(m.group(1)), m.group(2)


def shared(a, b):
    """The share of the longer text that the two have in common from the start."""
    c = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return c / max(len(a), len(b), 1)


def test_fp8_cache_holds_about_twice_the_blocks(servers):
    (n32, t32), (n16, t16), (n8, t8) = (kv_blocks(servers[k]) for k in ("f32", "f16", "fp8"))
    assert (t32, t16, t8) == ("f32", "f16", "e4m3")
    assert n16 == 2 * n32 and 1.8 <= n8 / n16 <= 2.0, (n32, n16, n8)


def test_fp8_tracks_f32_about_as_well_as_f16(servers):
    texts = {k: [complete(s, p) for p in PROMPTS] for k, s in servers.items()}
    f16 = [shared(a, b) for a, b in zip(texts["f32"], texts["f16"])]
    fp8 = [shared(a, b) for a, b in zip(texts["f32"], texts["fp8"])]
    print("shared prefix with f32: f16 " + " ".join(f"{x:.2f}" for x in f16) +
          " | fp8 " + " ".join(f"{x:.2f}" for x in fp8))
    assert sum(fp8) >= 0.5 * sum(f16), (f16, fp8)
    assert sum(x == 1.0 for x in fp8) >= 2, fp8  # some continuations are identical to f32's
