"""The FP8 (E4M3) KV cache end to end on the CPU worker (where it runs through the
reference kernels): same API, about twice the KV blocks in the same memory, and greedy
continuations that mostly equal the f16 cache's (FP8 keeps 3 mantissa bits, so a
near-tie between two tokens may go the other way; the GPU target is >= 90% equal)."""

import re

import pytest

from conftest import KolmServer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Water boils at", "import numpy as np\n",
           "The quick brown fox", "In 1969, astronauts"]


@pytest.fixture(scope="module")
def servers(kolm_bin, kolm_model, tmp_path_factory):
    f16 = KolmServer(kolm_bin, kolm_model, tmp_path_factory.mktemp("kv_f16"))
    fp8 = KolmServer(kolm_bin, kolm_model, tmp_path_factory.mktemp("kv_fp8"), extra_args=["--kv-dtype", "fp8"])
    f16.start()
    fp8.start()
    yield f16, fp8
    f16.stop()
    fp8.stop()


def complete(srv, prompt):
    status, _, body = srv.request("POST", "/v1/completions",
                                  {"model": srv.model_id, "prompt": prompt, "max_tokens": 32, "temperature": 0})
    assert status == 200, body
    import json
    j = json.loads(body)
    return j["choices"][0]["text"], j["usage"]["completion_tokens"]


def kv_blocks(srv):
    m = re.search(r"(\d+) (\w+) KV blocks", srv.log_tail(100000))
    assert m, srv.log_tail()
    return int(m.group(1)), m.group(2)


def test_fp8_cache_holds_about_twice_the_blocks(servers):
    f16, fp8 = servers
    (n16, t16), (n8, t8) = kv_blocks(f16), kv_blocks(fp8)
    assert (t16, t8) == ("f16", "e4m3")
    assert 1.8 <= n8 / n16 <= 2.0, (n16, n8)


def test_fp8_greedy_tracks_f16(servers):
    """Each fp8 continuation follows the f16 one for most of its length: where they
    part, it is late (a near-tie), not garbage from the first token."""
    f16, fp8 = servers
    shares, same = [], 0
    for p in PROMPTS:
        a, _ = complete(f16, p)
        b, nb = complete(fp8, p)
        assert nb >= 1 and b, p
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(common / max(len(a), len(b), 1))
        same += a == b
    shares.sort()
    print(f"fp8 KV: {same}/{len(PROMPTS)} continuations equal to f16's; shared prefix per prompt "
          + " ".join(f"{x:.2f}" for x in shares))
    assert same >= 2, shares
    assert shares[len(shares) // 2] >= 0.5, shares  # the median continuation agrees for at least half its length
