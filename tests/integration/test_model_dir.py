"""KOLM_HOME/artifacts/ as the model directory: /v1/models lists every .kolm there next
to the served model, the first request naming one loads it (after the same signature
and keyring checks as at start) and later ones reuse it, a name that is not there is a
404, an artifact signed by an untrusted key is refused with a 403 naming the signer,
and receipts name the artifact that answered."""

import base64
import hashlib
import json
import os
import re
import subprocess

import pytest
from nacl.signing import VerifyKey

from conftest import KolmServer


def run(kolm_bin, home, *args):
    p = subprocess.run([str(kolm_bin), *map(str, args)], env=dict(os.environ, KOLM_HOME=str(home)),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"kolm {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}{p.stderr}"
    return p.stdout


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def manifest_cid(path):
    data = open(path, "rb").read(1 << 20)
    mlen = int.from_bytes(data[16:24], "little")
    digest = hashlib.sha256(data[64:64 + mlen]).digest()
    raw = bytes([0x01, 0x80, 0x04, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


@pytest.fixture(scope="module")
def dir_server(kolm_bin, kolm_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("model_dir")
    home = work / "home"
    arts = home / "artifacts"
    arts.mkdir(parents=True)
    run(kolm_bin, home, "keygen")
    run(kolm_bin, home, "pack", kolm_model, "-o", work / "served.kolm")
    run(kolm_bin, home, "pack", kolm_model, "--reference", "--name", "second", "-o", arts / "second.kolm")
    # An artifact signed by a key that is not in the keyring.
    run(kolm_bin, home, "keygen", "--name", "stranger")
    (home / "keys" / "trusted" / "stranger.pub").unlink()
    run(kolm_bin, home, "pack", kolm_model, "--reference", "--key", "stranger", "-o", arts / "stranger.kolm")
    (arts / "not-an-artifact.txt").write_text("ignored")
    srv = KolmServer(kolm_bin, work / "served.kolm", work)
    srv.start()
    yield srv, home
    srv.stop()


def models(srv):
    status, _, body = srv.request("GET", "/v1/models")
    assert status == 200, body
    return {m["id"]: m for m in json.loads(body)["data"]}


def loaded(srv):
    """Models with workers, from /metrics' model labels."""
    status, _, body = srv.request("GET", "/metrics")
    assert status == 200
    return set(re.findall(r'^kolm_worker_ready\{model="([^"]+)"', body.decode(), re.M))


def chat(srv, model, max_tokens=2):
    return srv.request("POST", "/v1/chat/completions",
                       {"model": model, "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": max_tokens, "temperature": 0})


def receipt(srv, headers):
    status, _, body = srv.request("GET", "/v1/kolm/keys")
    assert status == 200
    key = next(k for k in json.loads(body)["data"] if k["use"] == "receipt")
    return json.loads(VerifyKey(b64d(key["public_key"])).verify(b64d(headers["x-kolm-receipt"])))


def test_lists_served_and_artifact_dir(dir_server):
    srv, home = dir_server
    ids = models(srv)
    assert "served.kolm" in ids and "second.kolm" in ids and "stranger.kolm" in ids, ids
    assert "not-an-artifact.txt" not in ids
    for m in ids.values():  # OpenAI's Model object, nothing more
        assert set(m) == {"id", "object", "created", "owned_by"}, m
        assert m["object"] == "model" and m["owned_by"] == "kolm" and isinstance(m["created"], int)
    assert loaded(srv) == {"served.kolm"}
    status, _, body = srv.request("GET", "/v1/models/second.kolm")
    assert status == 200 and json.loads(body)["id"] == "second.kolm"


def test_first_request_loads_a_listed_artifact(dir_server):
    srv, home = dir_server
    status, headers, body = chat(srv, "second.kolm")
    assert status == 200, body
    j = json.loads(body)
    assert j["model"] == "second.kolm" and j["choices"][0]["message"]["role"] == "assistant"
    r = receipt(srv, headers)
    assert r["model"] == "second.kolm"
    assert r["artifact"] == manifest_cid(home / "artifacts" / "second.kolm")
    assert r["response_sha256"] == hashlib.sha256(body).hexdigest()
    assert "second.kolm" in models(srv) and "second.kolm" in loaded(srv)
    # The served model still answers, under its own artifact id.
    status, headers, body = chat(srv, "served.kolm")
    assert status == 200, body
    assert receipt(srv, headers)["artifact"] == manifest_cid(srv.model)
    # Both models' workers are in /metrics.
    status, _, body = srv.request("GET", "/metrics")
    text = body.decode()
    assert 'model="second.kolm"' in text and 'model="served.kolm"' in text


def test_concurrent_first_requests_share_one_load(dir_server, kolm_bin, kolm_model):
    srv, home = dir_server
    third = home / "artifacts" / "third.kolm"
    run(kolm_bin, home, "pack", kolm_model, "--reference", "--name", "third", "-o", third)
    import threading
    out = [None] * 4

    def one(i):
        out[i] = chat(srv, "third.kolm")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for status, _, body in out:
        assert status == 200, body
    status, _, body = srv.request("GET", "/metrics")
    workers = [l for l in body.decode().splitlines()
               if l.startswith("kolm_worker_ready{") and 'model="third.kolm"' in l]
    assert len(workers) == 1, workers  # one pool, not one per waiting request


def test_unknown_artifact_is_404(dir_server):
    srv, _ = dir_server
    for name in ["missing.kolm", "not-an-artifact.txt", "../served.kolm", "served"]:
        status, headers, body = chat(srv, name)
        assert status == 404, (name, status, body)
        err = json.loads(body)["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert "x-kolm-receipt" in headers
    status, _, body = srv.request("GET", "/v1/models/missing.kolm")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    # a NUL inside the id never matches the served name, and legacy completions resolve the same way
    status, _, body = srv.request("POST", "/v1/chat/completions",
                                  '{"model":"served.kolm\\u0000x","messages":[{"role":"user","content":"Hi"}]}')
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found", body
    for name in ["missing.kolm", "served.kolm\u0000x"]:
        status, _, body = srv.request("POST", "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 1})
        assert status == 404, (name, body)
        err = json.loads(body)["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"


def test_untrusted_artifact_is_refused(dir_server):
    srv, home = dir_server
    status, headers, body = chat(srv, "stranger.kolm")
    assert status == 403, body
    err = json.loads(body)["error"]
    assert err["code"] == "model_not_trusted" and err["param"] == "model"
    stranger_id = (run(srv.binary, home, "inspect", home / "artifacts" / "stranger.kolm", "--json"))
    assert json.loads(stranger_id)["signer"] in err["message"]
    assert receipt(srv, headers)["status"] == 403
    assert "stranger.kolm" in models(srv) and "stranger.kolm" not in loaded(srv)  # listed, never loaded
    srv.assert_serving()


def test_sdk_names_a_directory_model(dir_server):
    openai = pytest.importorskip("openai")
    srv, _ = dir_server
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused")
    ids = [m.id for m in client.models.list()]
    assert "second.kolm" in ids
    chunks = list(client.chat.completions.create(model="second.kolm", stream=True, max_tokens=3,
                                                 messages=[{"role": "user", "content": "Hi"}]))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.model == "second.kolm" for c in chunks)


def test_max_models_caps_loading(kolm_bin, kolm_model, tmp_path):
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    run(kolm_bin, home, "keygen")
    run(kolm_bin, home, "pack", kolm_model, "-o", tmp_path / "served.kolm")
    run(kolm_bin, home, "pack", kolm_model, "--reference", "-o", home / "artifacts" / "extra.kolm")
    srv = KolmServer(kolm_bin, tmp_path / "served.kolm", tmp_path, extra_args=["--max-models", "1"])
    srv.start()
    try:
        status, headers, body = chat(srv, "extra.kolm")
        assert status == 503, body
        err = json.loads(body)["error"]
        assert err["code"] == "model_capacity" and "--max-models" in err["message"]
        assert "x-kolm-receipt" in headers
        assert "extra.kolm" in models(srv)  # still listed
        status, _, body = chat(srv, "served.kolm")
        assert status == 200, body
    finally:
        srv.stop()


def test_artifact_failing_its_blob_check_is_unavailable(kolm_bin, kolm_model, tmp_path):
    """A listed artifact whose weights do not match its manifest: the request that
    loads it gets a 503, the server keeps serving, and the broken workers are not
    respawned over and over."""
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    run(kolm_bin, home, "keygen")
    run(kolm_bin, home, "pack", kolm_model, "-o", tmp_path / "served.kolm")
    broken = home / "artifacts" / "broken.kolm"
    run(kolm_bin, home, "pack", kolm_model, "-o", broken)
    data = open(broken, "rb").read(1 << 16)
    mlen = int.from_bytes(data[16:24], "little")
    (blob,) = json.loads(data[64:64 + mlen])["blobs"]
    with open(broken, "r+b") as f:
        f.seek(blob["offset"] + blob["size"] // 2)
        b = f.read(1)
        f.seek(blob["offset"] + blob["size"] // 2)
        f.write(bytes([b[0] ^ 1]))
    srv = KolmServer(kolm_bin, tmp_path / "served.kolm", tmp_path)
    srv.start()
    try:
        status, headers, body = chat(srv, "broken.kolm")
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "model_unavailable"
        status, _, body = chat(srv, "broken.kolm")  # known broken: answered at once
        assert status == 503 and json.loads(body)["error"]["code"] == "model_unavailable"
        import time
        time.sleep(3)
        log = srv.log_tail(100000)
        assert "stays unavailable" in log and "'weights'" in log, log[-3000:]
        spawns = [l for l in log.splitlines() if "spawned worker" in l]
        assert len(spawns) == 2, spawns  # the served model's worker and one try at broken.kolm
        srv.assert_serving()
    finally:
        srv.stop()
