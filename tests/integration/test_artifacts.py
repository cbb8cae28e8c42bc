"""Signed .kolm artifacts and signed receipts, end to end against the real binaries.

Everything the product claims is checked independently here: the artifact header,
manifest CID, blob hashes and ed25519 signature are parsed and verified in Python
(hashlib, PyNaCl), receipts are opened with PyNaCl against the keys the gateway
publishes, and the hash rules (request bytes, response bytes, the SSE body without its
receipt member) are recomputed from the exact bytes on the wire. Tamper tests work on
fresh copies of the packed file (never on the source GGUF: `pack --reference` may
hard-link it into the model store).

One packed artifact and one server are shared by the module; tests that need another
KOLM_HOME (other keyrings, restarts, refused serves) get their own, so the shared
server's receipt log only ever holds its own receipts.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import nacl.exceptions
import nacl.signing
import pytest

from conftest import KolmServer, free_port

MAGIC = b"\x89KOLM\r\n\x1a"
ALIGN = 64
ART_NAME = "task.kolm"  # the model id of the shared artifact
MANIFEST_NAME = "Task model \u00e9"  # non-ASCII: canonical JSON keeps UTF-8 as is
TRAINING = {"dataset": "unit-\u00fcbung", "epochs": 3, "lr": 0.25, "steps": [1, 2, 3], "nested": {"b": [], "a": {}}}
EVAL = {"suite": "smoke", "accuracy": 0.5, "notes": None, "passed": True}
RECEIPT_KEYS = {"v", "seq", "created", "key_id", "artifact", "model", "method", "path", "status",
                "request_sha256", "response_sha256", "stream", "prompt_tokens", "completion_tokens"}
RECEIPT_MEMBER = b',"kolm_receipt":"'
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
NULL = object()  # "this receipt field must be JSON null"


# --- independent implementations of the format ---------------------------------------

def b64u_dec(s):
    s = s.strip() if isinstance(s, str) else s.decode().strip()
    assert "=" not in s, f"base64url must be unpadded: {s!r}"
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u_enc(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def file_sha(path, off=0, size=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(off)
        left = size if size is not None else float("inf")
        while left > 0:
            chunk = f.read(int(min(left, 8 << 20)))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def b32(b):
    return base64.b32encode(b).decode().lower().rstrip("=")


def artifact_cid(manifest_bytes):
    return "b" + b32(bytes([0x01, 0x80, 0x04, 0x12, 0x20]) + hashlib.sha256(manifest_bytes).digest())


def blob_cid(sha_hex):
    return "b" + b32(bytes([0x01, 0x55, 0x12, 0x20]) + bytes.fromhex(sha_hex))


def key_id(pk):
    return hashlib.sha256(pk).digest()[:8].hex()


def read_key_file(path):
    text = Path(path).read_text()
    assert text.count("\n") <= 1 and text.strip() == text.rstrip("\n"), f"{path}: one line: {text!r}"
    raw = b64u_dec(text)
    assert len(raw) == 32, f"{path}: {len(raw)} bytes, not 32"
    return raw


def read_artifact(path):
    """Parses the header, manifest and signature block of a .kolm file by hand."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        h = f.read(64)
        assert len(h) == 64
        version, hsize = struct.unpack_from("<II", h, 8)
        mlen, soff, slen = struct.unpack_from("<QQQ", h, 16)
        f.seek(64)
        mb = f.read(mlen)
        sb = None
        if soff:
            f.seek(soff)
            sb = f.read(slen)
    return SimpleNamespace(magic=h[:8], version=version, header_size=hsize, manifest_len=mlen,
                           sig_off=soff, sig_len=slen, manifest_bytes=mb, manifest=json.loads(mb),
                           sig_bytes=sb, sig=json.loads(sb) if sb else None, size=size, header=h)


def check_artifact_signature(a, expect_pk):
    """The signature block is canonical, at the very end, names the key, and verifies."""
    assert a.sig is not None, "artifact is unsigned"
    assert canon(a.sig) == a.sig_bytes, f"signature block not canonical: {a.sig_bytes!r}"
    assert set(a.sig) == {"alg", "key_id", "public_key", "signature"}, a.sig
    assert a.sig["alg"] == "ed25519"
    assert a.sig_off + a.sig_len == a.size, "the signature block must end the file"
    pk = b64u_dec(a.sig["public_key"])
    assert pk == expect_pk
    assert a.sig["key_id"] == key_id(pk)
    sig = b64u_dec(a.sig["signature"])
    assert len(sig) == 64
    nacl.signing.VerifyKey(pk).verify(a.manifest_bytes, sig)  # raises BadSignatureError


def patch_bytes(path, offset, new):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new)


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def replace_in_head(path, old, new, limit=1 << 16):
    """Replaces the one occurrence of old in the first limit bytes (same length)."""
    assert len(old) == len(new)
    with open(path, "rb") as f:
        head = f.read(limit)
    assert head.count(old) == 1, f"{old!r} occurs {head.count(old)} times"
    patch_bytes(path, head.index(old), new)


def resign_manifest(path, new_manifest, seed):
    """Writes new_manifest (same length as the old one) and a signature block signed
    with seed over it, as a signer holding that key would."""
    a = read_artifact(path)
    assert len(new_manifest) == a.manifest_len
    sk = nacl.signing.SigningKey(seed)
    pk = bytes(sk.verify_key)
    block = canon({"alg": "ed25519", "key_id": key_id(pk), "public_key": b64u_enc(pk),
                   "signature": b64u_enc(sk.sign(new_manifest).signature)})
    assert len(block) == a.sig_len
    patch_bytes(path, 64, new_manifest)
    patch_bytes(path, a.sig_off, block)


# --- receipts ------------------------------------------------------------------------

def open_receipt(token, pk):
    """PyNaCl-verifies a receipt token (combined signature || payload) -> payload dict."""
    raw = b64u_dec(token)
    payload = nacl.signing.VerifyKey(pk).verify(raw)
    assert payload == raw[64:]
    p = json.loads(payload)
    assert canon(p) == payload, f"receipt payload is not canonical JSON: {payload!r}"
    assert set(p) == RECEIPT_KEYS, sorted(p)
    return p


BOUND = object()  # "this receipt names the module's model and artifact"


def check_receipt(token, pk, env, *, method, path, status, request, response, stream=False,
                  model=None, artifact=None, prompt_tokens=NULL, completion_tokens=NULL):
    """Opens token and compares every field. model/artifact: None for an answer no model
    gave (health, listings, errors before a model is chosen), BOUND for the module's
    artifact, or the exact values."""
    p = open_receipt(token, pk)
    if model is BOUND:
        model, artifact = ART_NAME, env.cid
    want = {"v": 1, "key_id": key_id(pk), "artifact": artifact, "model": model,
            "method": method, "path": path, "status": status,
            "request_sha256": sha(request or b""),
            "response_sha256": None if response is NULL else sha(response),
            "stream": stream,
            "prompt_tokens": None if prompt_tokens is NULL else prompt_tokens,
            "completion_tokens": None if completion_tokens is NULL else completion_tokens}
    got = {k: p[k] for k in want}
    assert got == want, f"receipt {p} for {method} {path}"
    assert isinstance(p["seq"], int) and p["seq"] >= 1
    assert isinstance(p["created"], int) and abs(p["created"] - time.time()) < 600
    return p


def split_stream(body, done=True):
    """(index of the sealed event, events list, token) for an SSE body; checks that the
    one receipt member is the final member of the last data event."""
    assert body.count(RECEIPT_MEMBER) == 1, f"want exactly one kolm_receipt in\n{body[-3000:]!r}"
    events = body.split(b"\n\n")
    assert events[-1] == b"", "the body must end with a blank line"
    events = events[:-1]
    if done:
        assert events[-1] == b"data: [DONE]", f"last event: {events[-1]!r}"
        sealed = len(events) - 2
    else:
        assert b"[DONE]" not in body
        sealed = len(events) - 1
    ev = events[sealed]
    assert ev.startswith(b"data: {") and ev.endswith(b'"}'), ev
    i = ev.index(RECEIPT_MEMBER)
    tok = ev[i + len(RECEIPT_MEMBER):-2]
    assert tok and all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                       for c in tok), tok
    assert json.loads(ev[6:])["kolm_receipt"] == tok.decode()
    for other in events[:sealed]:
        assert b"kolm_receipt" not in other
    return sealed, events, tok.decode()


def stripped_body(body, tok):
    member = RECEIPT_MEMBER + tok.encode() + b'"'
    assert body.count(member) == 1
    return body.replace(member, b"", 1)


# --- subprocess helpers --------------------------------------------------------------

def kolm(kolm_bin, home, *args, timeout=180):
    env = dict(os.environ, KOLM_HOME=str(home))
    r = subprocess.run([str(kolm_bin), *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    r.out = r.stdout + r.stderr
    return r


def clone_home(src, dst):
    """A new KOLM_HOME holding src's default signing key and keyring (no gateway key, no
    receipts): servers there never share a receipt log with the module server."""
    dst = Path(dst)
    (dst / "keys" / "trusted").mkdir(parents=True)
    for name in ("default.key", "default.pub"):
        shutil.copy2(Path(src) / "keys" / name, dst / "keys" / name)
    for p in (Path(src) / "keys" / "trusted").iterdir():
        shutil.copy2(p, dst / "keys" / "trusted" / p.name)
    return dst


def serve_attempt(kolm_bin, home, artifact, *extra, timeout=90):
    """Runs `kolm serve` that is expected to give up; polls /health meanwhile so a server
    that answers (even briefly) is caught. Always cleans up its process group."""
    port = free_port()
    log = Path(home).parent / f"serve-attempt-{port}.log"
    env = dict(os.environ, KOLM_HOME=str(home))
    argv = [str(kolm_bin), "serve", str(artifact), "--port", str(port), "--threads", "2", *map(str, extra)]
    with open(log, "wb") as lf:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    statuses = []
    try:
        deadline = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                statuses.append(r.status)
                c.close()
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        still = p.poll() is None
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return SimpleNamespace(rc=p.returncode, out=log.read_text(errors="replace"), still_running=still,
                           statuses=statuses, argv=argv)


def assert_refused(res, *needles):
    assert not res.still_running, f"kolm serve kept running: {' '.join(res.argv)}\n{res.out}"
    assert res.rc != 0, f"kolm serve exited 0\n{res.out}"
    assert 200 not in res.statuses, f"/health answered 200 before the refusal\n{res.out}"
    for n in needles:
        assert n in res.out, f"{n!r} not in the output of {' '.join(res.argv)}:\n{res.out}"


def post_json(srv, path, obj, headers=None):
    body = json.dumps(obj).encode()
    status, hdrs, data = srv.request("POST", path, body, headers=headers)
    return body, status, hdrs, data


def chat_body(**kw):
    req = {"model": ART_NAME, "messages": [{"role": "user", "content": "Name three colors."}],
           "max_tokens": 6, "temperature": 0}
    req.update(kw)
    return req


def wait_for_log_lines(home, tokens, timeout=10):
    """The receipt log lines (oldest first, across rotated files) once all tokens are in."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_receipt_log(home)
        if set(tokens) <= set(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def log_size(path):
    """Size of path, or None while it does not exist (mid-rotation)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def read_receipt_log(home):
    d = Path(home) / "receipts"
    files = sorted((p for p in d.glob("receipts.log.*") if p.suffix[1:].isdigit()),
                   key=lambda p: -int(p.suffix[1:]))
    lines = []
    for p in [*files, d / "receipts.log"]:
        if p.exists():
            lines += [ln for ln in p.read_text().split("\n") if ln]
    return lines


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_sha(kolm_model):
    return file_sha(kolm_model)


@pytest.fixture(scope="module")
def env(kolm_bin, kolm_model, tmp_path_factory):
    """keygen + pack (with training/eval metadata) in a fresh KOLM_HOME."""
    work = tmp_path_factory.mktemp("artifacts")
    home = work / "home"
    home.mkdir()
    kg = kolm(kolm_bin, home, "keygen")
    assert kg.returncode == 0, kg.out
    (work / "t.json").write_text(json.dumps(TRAINING, ensure_ascii=False, indent=2), encoding="utf-8")
    (work / "e.json").write_text(json.dumps(EVAL), encoding="utf-8")
    art = work / ART_NAME
    pk_ = kolm(kolm_bin, home, "pack", kolm_model, "--training", work / "t.json", "--eval", work / "e.json",
               "--name", MANIFEST_NAME, "-o", art)
    assert pk_.returncode == 0, pk_.out
    a = read_artifact(art)
    ns = SimpleNamespace(work=work, home=home, art=art, keygen_out=kg.out, pack_out=pk_.out, parsed=a,
                         cid=artifact_cid(a.manifest_bytes),
                         signer_pk=read_key_file(home / "keys" / "default.pub"),
                         signer_seed=read_key_file(home / "keys" / "default.key"))
    yield ns
    for p in work.glob("*.kolm"):
        p.unlink()


@pytest.fixture(scope="module")
def server(env, kolm_bin):
    srv = KolmServer(kolm_bin, env.art, env.work)  # its KOLM_HOME is env.home
    assert srv.home == env.home
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def srv(server):
    if not server.alive():
        pytest.fail(f"the module's kolm serve died\n{server.log_tail()}", pytrace=False)
    return server


@pytest.fixture(scope="module")
def gw_pk(server, env):
    """The receipt key, as gateway.pub on disk (made at first serve)."""
    return read_key_file(env.home / "keys" / "gateway.pub")


@pytest.fixture
def fresh_copy(env, tmp_path):
    made = []

    def make(name="copy.kolm"):
        dst = tmp_path / name
        shutil.copyfile(env.art, dst)
        made.append(dst)
        return dst

    yield make
    for p in made:
        p.unlink(missing_ok=True)


@pytest.fixture
def side_home(env, tmp_path):
    return clone_home(env.home, tmp_path / "side" / "home")


# --- keys and packing ------------------------------------------------------------------

def test_keygen_files(env, kolm_bin, tmp_path):
    keys = env.home / "keys"
    seed, pub = env.signer_seed, env.signer_pk
    assert (keys / "default.key").stat().st_mode & 0o777 == 0o600
    assert bytes(nacl.signing.SigningKey(seed).verify_key) == pub, "default.pub is not the seed's public key"
    assert (keys / "trusted" / "default.pub").read_bytes() == (keys / "default.pub").read_bytes()
    assert f"key {key_id(pub)}" in env.keygen_out
    # no overwrite without --force
    before = (keys / "default.key").read_bytes()
    r = kolm(kolm_bin, env.home, "keygen")
    assert r.returncode != 0 and "--force" in r.out, r.out
    assert (keys / "default.key").read_bytes() == before
    # --name and --force in a scratch home
    scratch = tmp_path / "h"
    r1 = kolm(kolm_bin, scratch, "keygen", "--name", "ci")
    assert r1.returncode == 0, r1.out
    pub1 = read_key_file(scratch / "keys" / "ci.pub")
    assert f"key {key_id(pub1)}" in r1.out
    assert bytes(nacl.signing.SigningKey(read_key_file(scratch / "keys" / "ci.key")).verify_key) == pub1
    assert read_key_file(scratch / "keys" / "trusted" / "ci.pub") == pub1
    assert kolm(kolm_bin, scratch, "keygen", "--name", "ci").returncode != 0
    r2 = kolm(kolm_bin, scratch, "keygen", "--name", "ci", "--force")
    assert r2.returncode == 0, r2.out
    pub2 = read_key_file(scratch / "keys" / "ci.pub")
    assert pub2 != pub1 and f"key {key_id(pub2)}" in r2.out
    assert bytes(nacl.signing.SigningKey(read_key_file(scratch / "keys" / "ci.key")).verify_key) == pub2
    assert read_key_file(scratch / "keys" / "trusted" / "ci.pub") == pub2


def test_artifact_layout_signature_and_blobs(env, kolm_bin, kolm_model, model_sha):
    a = env.parsed
    assert a.magic == MAGIC
    assert (a.version, a.header_size) == (1, 64)
    assert a.header[40:64] == b"\0" * 24
    assert canon(a.manifest) == a.manifest_bytes, "manifest is not canonical JSON"
    m = a.manifest
    assert m["kolm_format"] == 1 and m["name"] == MANIFEST_NAME
    assert m["family"] == "gemma3"
    for k in ("base_model", "tokenizer", "chat_template"):
        assert k in m, k
    assert m["training"] == TRAINING and m["eval"] == EVAL
    assert MANIFEST_NAME.encode() in a.manifest_bytes  # UTF-8, not \u escapes
    check_artifact_signature(a, env.signer_pk)
    # blobs: aligned, after the manifest, before the signature, byte-exact copies
    (w,) = m["blobs"]
    assert set(w) == {"role", "name", "format", "size", "sha256", "offset"}
    assert (w["role"], w["format"], w["name"]) == ("weights", "gguf", kolm_model.name)
    assert w["size"] == kolm_model.stat().st_size
    assert w["offset"] % ALIGN == 0 and w["offset"] >= 64 + a.manifest_len
    assert w["offset"] + w["size"] <= a.sig_off
    assert file_sha(env.art, w["offset"], w["size"]) == w["sha256"] == model_sha
    # the CID, as pack printed it and as verify sees it
    assert env.cid.startswith("bagaaiera")
    assert env.cid in env.pack_out
    r = kolm(kolm_bin, env.home, "verify", env.art)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.out
    assert env.cid in r.out and key_id(env.signer_pk) in r.out


def test_inspect_json(env, kolm_bin):
    r = kolm(kolm_bin, env.home, "inspect", env.art, "--json")
    assert r.returncode == 0, r.out
    j = json.loads(r.stdout)
    assert j["cid"] == env.cid
    assert j["manifest"] == env.parsed.manifest
    assert canon(j["manifest"]) == env.parsed.manifest_bytes
    assert j["file_size"] == env.art.stat().st_size
    assert j["signer"] == key_id(env.signer_pk)
    assert j["trust"] == "trusted"


def pack_metadata(kolm_bin, home, kolm_model, tmp_path, training):
    (tmp_path / "t.json").write_text(json.dumps(training), encoding="utf-8")
    art = tmp_path / "meta.kolm"
    r = kolm(kolm_bin, home, "pack", kolm_model, "--reference", "--training", tmp_path / "t.json", "-o", art)
    assert r.returncode == 0, r.out
    for p in (home / "models").iterdir():  # the stored blob (maybe a hard link to the GGUF) is not needed
        p.unlink()
    return read_artifact(art)


def test_canonical_manifest_matches_python_rule(env, kolm_bin, kolm_model, tmp_path):
    """Sorted keys at every depth, no whitespace, raw UTF-8, the short escapes."""
    home = clone_home(env.home, tmp_path / "home")
    training = {"z": 1, "a": {"y": [True, False, None], "b": -7}, "\u00e9t\u00e9": "\U0001F600 \u2028 a/b",
                "q": 'say "hi"\\ \t\n', "half": 0.5, "big": 2 ** 62, "neg0": -0.0, "e": [], "o": {}}
    a = pack_metadata(kolm_bin, home, kolm_model, tmp_path, training)
    assert a.manifest["training"] == training
    assert canon(a.manifest) == a.manifest_bytes


@pytest.mark.parametrize("value", [0.1, 0.3, 1e22, 1e-05, 1234567890123456.0, "tab\x1fsep"],
                         ids=["0.1", "0.3", "1e22", "1e-05", "1.2e15", "ctrl"])
def test_canonical_manifest_numbers_and_control_chars(env, kolm_bin, kolm_model, tmp_path, value):
    home = clone_home(env.home, tmp_path / "home")
    a = pack_metadata(kolm_bin, home, kolm_model, tmp_path, {"v": value})
    assert a.manifest["training"] == {"v": value}
    assert canon(a.manifest) == a.manifest_bytes, a.manifest_bytes[a.manifest_bytes.index(b'"training"'):]


def test_multi_blob_pack_hashes_every_blob(env, kolm_bin, kolm_model, model_sha, tmp_path):
    """--draft adds a second aligned blob; a flipped byte in it (not the weights) fails
    verify and the worker's load, naming that blob."""
    side = clone_home(env.home, tmp_path / "home")
    art = tmp_path / "draft.kolm"
    try:
        r = kolm(kolm_bin, side, "pack", kolm_model, "--draft", kolm_model, "-o", art)
        assert r.returncode == 0, r.out
        a = read_artifact(art)
        assert canon(a.manifest) == a.manifest_bytes
        check_artifact_signature(a, env.signer_pk)
        roles = {b["role"]: b for b in a.manifest["blobs"]}
        assert set(roles) == {"weights", "draft"}
        assert a.manifest["draft_model"]["blob"] == "draft"
        spans = sorted((b["offset"], b["offset"] + b["size"]) for b in roles.values())
        assert spans[0][0] >= 64 + a.manifest_len and spans[0][1] <= spans[1][0] and spans[1][1] <= a.size
        for b in roles.values():
            assert b["offset"] % ALIGN == 0
            assert file_sha(art, b["offset"], b["size"]) == b["sha256"] == model_sha
        r = kolm(kolm_bin, side, "verify", art)
        assert r.returncode == 0 and "2 verified" in r.out, r.out
        flip_byte(art, roles["draft"]["offset"] + roles["draft"]["size"] // 2)
        r = kolm(kolm_bin, side, "verify", art)
        assert r.returncode == 1 and "blob 'draft'" in r.out and "SHA-256" in r.out, r.out
        assert_refused(serve_attempt(kolm_bin, side, art), "'draft'")
    finally:
        art.unlink(missing_ok=True)


# --- receipts on the happy path ------------------------------------------------------

def test_keys_endpoint(srv, env, gw_pk):
    status, hdrs, body = srv.request("GET", "/v1/kolm/keys")
    assert status == 200
    j = json.loads(body)
    assert j["object"] == "list"
    by_use = {k["use"]: k for k in j["data"]}
    assert set(by_use) == {"receipt", "artifact"}, j
    for k in j["data"]:
        assert k["object"] == "kolm.key" and k["alg"] == "ed25519"
        assert k["id"] == key_id(b64u_dec(k["public_key"]))
    assert b64u_dec(by_use["receipt"]["public_key"]) == gw_pk
    assert b64u_dec(by_use["artifact"]["public_key"]) == env.signer_pk
    assert gw_pk != env.signer_pk
    assert bytes(nacl.signing.SigningKey(read_key_file(env.home / "keys" / "gateway.key")).verify_key) == gw_pk
    assert (env.home / "keys" / "gateway.key").stat().st_mode & 0o777 == 0o600
    check_receipt(hdrs["x-kolm-receipt"], gw_pk, env, method="GET", path="/v1/kolm/keys", status=200,
                  request=b"", response=body)
    # the model id is the artifact's file name; the listing is OpenAI's Model, nothing more
    status, _, body = srv.request("GET", "/v1/models")
    listed = {m["id"]: m for m in json.loads(body)["data"]}
    assert ART_NAME in listed, listed
    assert set(listed[ART_NAME]) == {"id", "object", "created", "owned_by"}, listed[ART_NAME]


def test_chat_round_trip_receipt(srv, env, gw_pk, kolm_bin, tmp_path):
    req = json.dumps(chat_body(), separators=(", ", ": ")).encode()  # any bytes: the hash is of these
    status, hdrs, body = srv.request("POST", "/v1/chat/completions", req)
    assert status == 200, body
    j = json.loads(body)
    assert j["model"] == ART_NAME
    tok = hdrs["x-kolm-receipt"]
    # the published receipt key and gateway.pub are the same key, and both verify it
    _, _, kb = srv.request("GET", "/v1/kolm/keys")
    published = [b64u_dec(k["public_key"]) for k in json.loads(kb)["data"] if k["use"] == "receipt"]
    assert published == [gw_pk]
    p = check_receipt(tok, published[0], env, model=BOUND, method="POST", path="/v1/chat/completions", status=200,
                      request=req, response=body, prompt_tokens=j["usage"]["prompt_tokens"],
                      completion_tokens=j["usage"]["completion_tokens"])
    assert p["artifact"] == artifact_cid(read_artifact(env.art).manifest_bytes)
    assert p["completion_tokens"] > 0 and p["prompt_tokens"] > 0
    # the CLI agrees, with the token inline and from a file
    (tmp_path / "body").write_bytes(body)
    (tmp_path / "req").write_bytes(req)
    (tmp_path / "tok").write_text(tok + "\n")
    for spec in (tok, tmp_path / "tok"):
        r = kolm(kolm_bin, env.home, "verify", "--receipt", spec, "--body", tmp_path / "body",
                 "--request", tmp_path / "req")
        assert r.returncode == 0 and r.stdout.startswith("OK receipt"), r.out
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--key", env.home / "keys" / "gateway.pub")
    assert r.returncode == 0, r.out


def test_completions_receipt(srv, env, gw_pk):
    req, status, hdrs, body = post_json(srv, "/v1/completions",
                                        {"model": ART_NAME, "prompt": "Once upon a", "max_tokens": 4,
                                         "temperature": 0})
    assert status == 200, body
    u = json.loads(body)["usage"]
    check_receipt(hdrs["x-kolm-receipt"], gw_pk, env, model=BOUND, method="POST", path="/v1/completions", status=200,
                  request=req, response=body, prompt_tokens=u["prompt_tokens"],
                  completion_tokens=u["completion_tokens"])


def test_receipt_tampering_detected(srv, env, gw_pk, kolm_bin, tmp_path):
    req, status, hdrs, body = post_json(srv, "/v1/chat/completions", chat_body(max_tokens=3))
    assert status == 200
    tok = hdrs["x-kolm-receipt"]
    raw = b64u_dec(tok)
    sig, payload = raw[:64], json.loads(raw[64:])
    files = {n: tmp_path / n for n in ("body", "req", "body1", "req1")}
    files["body"].write_bytes(body)
    files["req"].write_bytes(req)
    files["body1"].write_bytes(body[:10] + bytes([body[10] ^ 1]) + body[11:])
    files["req1"].write_bytes(req[:-2] + b" " + req[-1:])
    ok = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--body", files["body"], "--request", files["req"])
    assert ok.returncode == 0, ok.out
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--body", files["body1"])
    assert r.returncode == 1 and "FAILED" in r.out and "response_sha256" in r.out, r.out
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--request", files["req1"])
    assert r.returncode == 1 and "FAILED" in r.out and "request_sha256" in r.out, r.out
    # any payload field changed under the old signature
    changes = {"status": 201, "model": "other.kolm", "seq": payload["seq"] + 1,
               "completion_tokens": payload["completion_tokens"] + 1, "prompt_tokens": 0,
               "artifact": blob_cid(EMPTY_SHA), "response_sha256": EMPTY_SHA, "request_sha256": sha(b"{}"),
               "created": payload["created"] - 3600, "stream": True, "path": "/v1/completions",
               "method": "GET", "key_id": "0" * 16}
    for field, value in changes.items():
        forged = b64u_enc(sig + canon(dict(payload, **{field: value})))
        with pytest.raises(nacl.exceptions.BadSignatureError):
            nacl.signing.VerifyKey(gw_pk).verify(b64u_dec(forged))
        r = kolm(kolm_bin, env.home, "verify", "--receipt", forged)
        assert r.returncode == 1 and "FAILED" in r.out, f"{field}: {r.out}"
    # a flipped signature bit, a truncated token, the wrong key
    bad_sig = b64u_enc(bytes([raw[0] ^ 0x80]) + raw[1:])
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(gw_pk).verify(b64u_dec(bad_sig))
    for forged in (bad_sig, tok[:-4]):
        r = kolm(kolm_bin, env.home, "verify", "--receipt", forged)
        assert r.returncode == 1 and "FAILED" in r.out, r.out
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--key", env.home / "keys" / "default.pub")
    assert r.returncode == 1 and "FAILED" in r.out, r.out
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(env.signer_pk).verify(raw)


# --- streaming -----------------------------------------------------------------------

STREAM_CASES = {
    "chat": ("/v1/chat/completions", chat_body(stream=True)),
    "chat_usage": ("/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})),
    "chat_n2": ("/v1/chat/completions", chat_body(stream=True, n=2, max_tokens=3)),
    "completions": ("/v1/completions", {"model": ART_NAME, "prompt": "Once upon a", "max_tokens": 5,
                                        "temperature": 0, "stream": True}),
    "completions_usage": ("/v1/completions", {"model": ART_NAME, "prompt": "Once upon a", "max_tokens": 5,
                                              "temperature": 0, "stream": True,
                                              "stream_options": {"include_usage": True}}),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_stream_receipts(srv, env, gw_pk, kolm_bin, tmp_path, case):
    path, obj = STREAM_CASES[case]
    req, status, hdrs, body = post_json(srv, path, obj)
    assert status == 200, body
    assert hdrs["content-type"].startswith("text/event-stream")
    head = check_receipt(hdrs["x-kolm-receipt"], gw_pk, env, model=BOUND, method="POST", path=path, status=200,
                         request=req, response=NULL, stream=True)
    sealed, events, tok = split_stream(body)
    last = json.loads(events[sealed][6:])
    rest = stripped_body(body, tok)
    if (obj.get("stream_options") or {}).get("include_usage"):
        assert last["choices"] == [], "with include_usage the usage chunk is the sealed event"
        usage = last["usage"]
        final = check_receipt(tok, gw_pk, env, model=BOUND, method="POST", path=path, status=200, request=req,
                              response=rest, stream=True, prompt_tokens=usage["prompt_tokens"],
                              completion_tokens=usage["completion_tokens"])
    else:
        assert last["choices"] and last["choices"][-1]["finish_reason"] in ("length", "stop"), last
        final = open_receipt(tok, gw_pk)
        assert final["response_sha256"] == sha(rest) and final["request_sha256"] == sha(req)
        assert (final["stream"], final["status"], final["model"], final["artifact"]) == (True, 200, ART_NAME,
                                                                                         env.cid)
        assert 0 < final["completion_tokens"] <= obj["max_tokens"] * obj.get("n", 1)
        assert final["prompt_tokens"] > 0
    assert final["seq"] > head["seq"]
    # the unstripped body is what a client saves: the CLI strips the member itself
    (tmp_path / "body").write_bytes(body)
    (tmp_path / "req").write_bytes(req)
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--body", tmp_path / "body", "--request",
             tmp_path / "req")
    assert r.returncode == 0, r.out
    # the header receipt binds the request only
    r = kolm(kolm_bin, env.home, "verify", "--receipt", hdrs["x-kolm-receipt"], "--request", tmp_path / "req")
    assert r.returncode == 0, r.out
    r = kolm(kolm_bin, env.home, "verify", "--receipt", hdrs["x-kolm-receipt"], "--body", tmp_path / "body")
    assert r.returncode == 1, r.out
    # one byte of the streamed body changed -> the final receipt no longer matches
    i = body.index(b'"created":') + 11
    (tmp_path / "body1").write_bytes(body[:i] + bytes([body[i] ^ 1]) + body[i + 1:])
    r = kolm(kolm_bin, env.home, "verify", "--receipt", tok, "--body", tmp_path / "body1")
    assert r.returncode == 1 and "response_sha256" in r.out, r.out


def test_openai_sdk_stream_and_raw_headers(srv, env, gw_pk):
    import openai
    client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Name three colors."}]
    chunks = list(client.chat.completions.create(model=ART_NAME, messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, "the SDK stream yielded no content"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["length"], ["stop"])
    carried = [i for i, c in enumerate(chunks) if (c.model_extra or {}).get("kolm_receipt")]
    assert carried == [len(chunks) - 1]
    p = open_receipt(chunks[-1].model_extra["kolm_receipt"], gw_pk)
    assert p["stream"] is True and p["response_sha256"] and p["artifact"] == env.cid

    raw = client.chat.completions.with_raw_response.create(model=ART_NAME, messages=msgs, max_tokens=3,
                                                           temperature=0)
    comp = raw.parse()
    p = check_receipt(raw.headers["x-kolm-receipt"], gw_pk, env, model=BOUND, method="POST",
                      path="/v1/chat/completions", status=200, request=raw.http_request.content, response=raw.content,
                      prompt_tokens=comp.usage.prompt_tokens, completion_tokens=comp.usage.completion_tokens)
    assert comp.choices[0].message.content is not None

    raw = client.chat.completions.with_raw_response.create(model=ART_NAME, messages=msgs, max_tokens=3,
                                                           temperature=0, stream=True)
    head = check_receipt(raw.headers["x-kolm-receipt"], gw_pk, env, model=BOUND, method="POST",
                         path="/v1/chat/completions", status=200, request=raw.http_request.content,
                         response=NULL, stream=True)
    chunks = list(raw.parse())
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert open_receipt(chunks[-1].model_extra["kolm_receipt"], gw_pk)["seq"] > head["seq"]


# --- receipts on every endpoint, seq and the log -------------------------------------

def endpoint_cases():
    J = {"Content-Type": "application/json"}
    return [
        ("GET", "/health", None, {}, 200),
        ("GET", "/metrics", None, {}, 200),
        ("GET", "/v1/models", None, {}, 200),
        ("GET", f"/v1/models/{ART_NAME}", None, {}, 200),
        ("GET", "/v1/models/no-such-model", None, {}, 404),
        ("GET", "/no/such/url", None, {}, 404),
        ("GET", "/v1/kolm/keys", None, {}, 200),
        ("POST", "/v1/chat/completions", b'{"model": "task.kolm", "messages": [', J, 400),
        ("POST", "/v1/chat/completions", json.dumps(chat_body(model="nope")).encode(), J, 404),
        ("POST", "/v1/chat/completions", json.dumps(chat_body(max_tokens=-3)).encode(), J, 400),
        ("POST", "/v1/completions", b'{"model":"task.kolm","prompt":"x"}', {"Content-Type": "text/plain"}, 415),
        ("PUT", "/v1/chat/completions", b"{}", J, 405),
        ("DELETE", "/v1/models", None, {}, 405),
    ]


def test_receipts_on_every_endpoint_and_log(srv, env, gw_pk):
    tokens, seqs = [], []
    for method, path, body, headers, want in endpoint_cases():
        status, hdrs, data = srv.request(method, path, body, headers=headers)
        assert status == want, f"{method} {path} -> {status} {data[:300]!r}"
        tok = hdrs.get("x-kolm-receipt")
        assert tok, f"{method} {path} ({status}) has no x-kolm-receipt"
        p = check_receipt(tok, gw_pk, env, method=method, path=path, status=status, request=body,
                          response=data)
        tokens.append(tok)
        seqs.append(p["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq not consecutive: {seqs}"
    lines = wait_for_log_lines(env.home, tokens)
    assert lines[-len(tokens):] == tokens, "receipts.log does not end with the header tokens, in order"
    # every line of the log is a verifying receipt of this gateway with consecutive seq
    all_seqs = [open_receipt(ln, gw_pk)["seq"] for ln in lines]
    assert all_seqs == list(range(1, len(all_seqs) + 1)), "the log lost or repeated a receipt"
    log = env.home / "receipts" / "receipts.log"
    assert log.stat().st_mode & 0o777 == 0o600


def test_restart_continues_seq_rotation_and_401(env, kolm_bin, tmp_path):
    """seq is recovered from the log (here from a just-rotated, empty receipts.log, so
    from receipts.log.1), the key persists, a 401 is signed, and a stream cut by the
    request timeout seals its error event."""
    work = tmp_path / "srv"
    clone_home(env.home, work / "home")
    a = KolmServer(kolm_bin, env.art, work, extra_args=["--receipt-log-max", "4096"])
    a.start()
    try:
        pk = read_key_file(a.home / "keys" / "gateway.pub")
        tokens = []
        log = a.home / "receipts" / "receipts.log"
        rotated = a.home / "receipts" / "receipts.log.1"
        # The startup's /health polls write receipts too, so the log may have rotated
        # already: what counts is where this loop's last line lies. In receipts.log.1
        # with receipts.log back (empty): its write crossed the limit and the rotation is
        # done. In receipts.log under the limit: not yet. Else the rotation is under way.
        for _ in range(40):
            status, hdrs, _ = a.request("GET", "/v1/models")
            assert status == 200
            tokens.append(hdrs["x-kolm-receipt"])
            wait_for_log_lines(a.home, tokens[-1:])
            deadline = time.monotonic() + 10
            while True:
                done = rotated.exists() and tokens[-1] in rotated.read_text().split("\n")
                size = log_size(log)  # after: a rotation may come between the two
                if size is not None and (done or size < 4096):
                    break
                assert time.monotonic() < deadline, "receipts.log was not rotated past --receipt-log-max"
                time.sleep(0.02)
            if done:
                assert size == 0, f"receipts.log holds {size} bytes after the rotation of its last line"
                break
        else:
            pytest.fail("receipts.log never rotated past --receipt-log-max 4096")
        assert (a.home / "receipts" / "receipts.log.1").stat().st_size >= 4096
        lines = read_receipt_log(a.home)
        seqs = [open_receipt(t, pk)["seq"] for t in lines]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert lines[-len(tokens):] == tokens
        last = seqs[-1]
    finally:
        a.stop()
    b = KolmServer(kolm_bin, env.art, work, extra_args=["--api-key", "sekrit", "--request-timeout", "2"])
    b.start()
    try:
        assert read_key_file(b.home / "keys" / "gateway.pub") == pk, "the receipt key changed on restart"
        auth = {"Authorization": "Bearer sekrit"}
        status, hdrs, body = b.request("GET", "/v1/models")
        assert status == 401, body
        p401 = check_receipt(hdrs["x-kolm-receipt"], pk, env, method="GET", path="/v1/models", status=401,
                             request=b"", response=body)
        assert p401["seq"] > last, f"seq {p401['seq']} after a restart whose log ended at {last}"
        req, status, hdrs, body = post_json(b, "/v1/chat/completions", chat_body(max_tokens=2))
        assert status == 401
        check_receipt(hdrs["x-kolm-receipt"], pk, env, method="POST", path="/v1/chat/completions", status=401,
                      request=req, response=body)
        status, hdrs, body = b.request("GET", "/v1/models", headers=auth)
        assert status == 200
        p200 = check_receipt(hdrs["x-kolm-receipt"], pk, env, method="GET", path="/v1/models", status=200,
                             request=b"", response=body)
        assert p200["seq"] == p401["seq"] + 2
        # a stream cut by --request-timeout: its error event is the sealed one, no [DONE]
        req, status, hdrs, body = post_json(
            b, "/v1/completions", {"model": ART_NAME, "prompt": "The history of the world, part one:",
                                   "max_tokens": 4000, "temperature": 0, "stream": True,
                                   "logit_bias": {"1": -100, "106": -100}}, headers=auth)
        assert status == 200
        sealed, events, tok = split_stream(body, done=False)
        assert "error" in json.loads(events[sealed][6:]), events[sealed][:300]
        fin = open_receipt(tok, pk)
        assert fin["response_sha256"] == sha(stripped_body(body, tok)) and fin["stream"] is True
        assert fin["request_sha256"] == sha(req)
        all_seqs = [open_receipt(t, pk)["seq"] for t in wait_for_log_lines(b.home, [tok])]
        assert all_seqs == list(range(all_seqs[0], all_seqs[0] + len(all_seqs))), \
            "seq repeated or skipped across the restart"
    finally:
        b.stop()


# --- tampered and untrusted artifacts ------------------------------------------------

def test_tampered_weights_blob(env, kolm_bin, fresh_copy, side_home):
    art = fresh_copy()
    (w,) = env.parsed.manifest["blobs"]
    flip_byte(art, w["offset"] + w["size"] // 2)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out and "blob 'weights'" in r.out and "SHA-256" in r.out, r.out
    # the signature is intact and trusted: the worker's own hash check must refuse it,
    # and --allow-unsigned does not lift that
    assert_refused(serve_attempt(kolm_bin, side_home, art), "'weights'")
    assert_refused(serve_attempt(kolm_bin, side_home, art, "--allow-unsigned"), "'weights'")


def test_tampered_manifest_value(env, kolm_bin, fresh_copy, side_home):
    art = fresh_copy()
    old = canon({"name": MANIFEST_NAME})[1:-1]
    replace_in_head(art, old, old.replace(b"Task", b"Mask"))
    a = read_artifact(art)
    assert canon(a.manifest) == a.manifest_bytes  # still canonical: only the signature can catch it
    with pytest.raises(nacl.exceptions.BadSignatureError):
        check_artifact_signature(a, env.signer_pk)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out and "signature" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "signature", "--allow-unsigned")


@pytest.mark.parametrize("variant", ["key_order", "key_order_resigned", "whitespace_resigned"])
def test_noncanonical_manifest(env, kolm_bin, fresh_copy, side_home, variant):
    """Valid JSON with the same content but not canonical bytes is refused, even when a
    trusted key signed exactly those bytes."""
    art = fresh_copy()
    mb = env.parsed.manifest_bytes
    ct = canon(env.parsed.manifest["chat_template"])
    assert len(env.parsed.manifest["chat_template"]) >= 2
    if variant.startswith("key_order"):
        items = sorted(env.parsed.manifest["chat_template"].items(), reverse=True)
        reordered = json.dumps(dict(items), separators=(",", ":"), ensure_ascii=False).encode()
        assert len(reordered) == len(ct) and reordered != ct and mb.count(ct) == 1
        new = mb.replace(ct, reordered, 1)
    else:  # '"kolm_format":1,' -> '"kolm_format": 1' minus one byte elsewhere: drop a char of the name
        old_name = canon({"name": MANIFEST_NAME})[1:-1]
        new = mb.replace(old_name, old_name.replace(b'":"', b'": "').replace(b"Task ", b"Task"), 1)
    assert len(new) == len(mb) and new != mb and json.loads(new) is not None
    if variant.endswith("resigned"):
        resign_manifest(art, new, env.signer_seed)
        check_artifact_signature(read_artifact(art), env.signer_pk)  # the signature is good
    else:
        patch_bytes(art, 64, new)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out and "canonical" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "canonical")


def test_tampered_signature(env, kolm_bin, fresh_copy, side_home):
    art = fresh_copy()
    a = env.parsed
    s = a.sig["signature"]
    j = len(s) // 2
    forged = s[:j] + ("A" if s[j] != "A" else "B") + s[j + 1:]
    sb = a.sig_bytes.replace(s.encode(), forged.encode())
    assert len(sb) == a.sig_len
    patch_bytes(art, a.sig_off, sb)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        check_artifact_signature(read_artifact(art), env.signer_pk)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out and "signature" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "signature")


def test_resigned_by_attacker_key(env, kolm_bin, fresh_copy, side_home):
    """A changed manifest re-signed with a key outside the keyring, including a block
    that claims the trusted key's id, is refused."""
    attacker = bytes(nacl.signing.SigningKey.generate())
    art = fresh_copy()
    new = env.parsed.manifest_bytes.replace(b'"name":"Task', b'"name":"Evil')
    resign_manifest(art, new, attacker)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "not a trusted key" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "not a trusted key")
    # the same block, but claiming the trusted signer's key id
    a = read_artifact(art)
    claim = canon(dict(a.sig, key_id=key_id(env.signer_pk)))
    assert len(claim) == a.sig_len
    patch_bytes(art, a.sig_off, claim)
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art))
    # ... or the trusted public key with the attacker's signature
    patch_bytes(art, a.sig_off, canon(dict(a.sig, key_id=key_id(env.signer_pk),
                                           public_key=b64u_enc(env.signer_pk))))
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "signature" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "signature")


def test_header_tamper(env, kolm_bin, fresh_copy):
    art = fresh_copy()
    flip_byte(art, 1)  # magic
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out, r.out
    art = fresh_copy("copy2.kolm")
    patch_bytes(art, 16, struct.pack("<Q", env.parsed.manifest_len - 1))  # manifest length
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "FAILED" in r.out, r.out


def test_unhashed_bytes_must_be_zero(env, kolm_bin, fresh_copy, side_home):
    """The reserved header bytes and the alignment padding are outside every hash and
    the signature, so anything written there is refused instead of carried along."""
    art = fresh_copy()
    patch_bytes(art, 40, b"\x07")
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "reserved" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "reserved")
    end = 64 + env.parsed.manifest_len
    (w,) = env.parsed.manifest["blobs"]
    assert w["offset"] - end >= 1, "no padding after this manifest to write into"
    art = fresh_copy("copy2.kolm")
    patch_bytes(art, end, b"H")
    r = kolm(kolm_bin, env.home, "verify", art)
    assert r.returncode == 1 and "stray bytes" in r.out, r.out
    assert_refused(serve_attempt(kolm_bin, side_home, art), "stray bytes")


def test_unsigned_artifact(env, kolm_bin, kolm_model, tmp_path):
    work = tmp_path / "srv"
    home = clone_home(env.home, work / "home")
    art = tmp_path / "plain.kolm"
    try:
        r = kolm(kolm_bin, home, "pack", kolm_model, "--unsigned", "-o", art)
        assert r.returncode == 0, r.out
        a = read_artifact(art)
        assert a.sig is None and (a.sig_off, a.sig_len) == (0, 0)
        cid = artifact_cid(a.manifest_bytes)
        j = json.loads(kolm(kolm_bin, home, "inspect", art, "--json").stdout)
        assert j["cid"] == cid and j["signer"] is None and j["trust"] != "trusted"
        r = kolm(kolm_bin, home, "verify", art)
        assert r.returncode == 1 and "not signed" in r.out, r.out
        assert_refused(serve_attempt(kolm_bin, home, art), "--allow-unsigned")
        srv = KolmServer(kolm_bin, art, work, extra_args=["--allow-unsigned"])
        srv.start()
        try:
            pk = read_key_file(home / "keys" / "gateway.pub")
            req, status, hdrs, body = post_json(srv, "/v1/chat/completions", chat_body(model="plain.kolm",
                                                                                        max_tokens=2))
            assert status == 200, body
            u = json.loads(body)["usage"]
            check_receipt(hdrs["x-kolm-receipt"], pk, env, method="POST", path="/v1/chat/completions",
                          status=200, request=req, response=body, model="plain.kolm", artifact=cid,
                          prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"])
            _, _, kb = srv.request("GET", "/v1/kolm/keys")
            assert [k["use"] for k in json.loads(kb)["data"]] == ["receipt"]
        finally:
            srv.stop()
    finally:
        art.unlink(missing_ok=True)


def test_untrusted_signer_and_keyring(env, kolm_bin, kolm_model, tmp_path):
    work = tmp_path / "srv"
    home = clone_home(env.home, work / "home")
    r = kolm(kolm_bin, home, "keygen", "--name", "other")
    assert r.returncode == 0, r.out
    other_pk = read_key_file(home / "keys" / "other.pub")
    (home / "keys" / "trusted" / "other.pub").unlink()
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(home / "keys" / "other.pub", ring / "other.pub")
    art = tmp_path / "other.kolm"
    art2 = tmp_path / "other2.kolm"
    try:
        r = kolm(kolm_bin, home, "pack", kolm_model, "--key", "other", "-o", art)
        assert r.returncode == 0, r.out
        check_artifact_signature(read_artifact(art), other_pk)
        # --key PATH signs with the same key
        r = kolm(kolm_bin, home, "pack", kolm_model, "--key", home / "keys" / "other.key", "-o", art2)
        assert r.returncode == 0, r.out
        check_artifact_signature(read_artifact(art2), other_pk)
        art2.unlink()
        j = json.loads(kolm(kolm_bin, home, "inspect", art, "--json").stdout)
        assert j["signer"] == key_id(other_pk) and j["trust"] != "trusted"
        r = kolm(kolm_bin, home, "verify", art)
        assert r.returncode == 1 and "not a trusted key" in r.out and key_id(other_pk) in r.out, r.out
        for extra in (("--keyring", ring), ("--key", ring / "other.pub")):
            r = kolm(kolm_bin, home, "verify", art, *extra)
            assert r.returncode == 0 and r.stdout.startswith("OK"), r.out
        r = kolm(kolm_bin, home, "verify", art, "--keyring", home / "keys" / "trusted")
        assert r.returncode == 1, r.out
        assert_refused(serve_attempt(kolm_bin, home, art), "not a trusted key")
        assert_refused(serve_attempt(kolm_bin, home, art, "--keyring", home / "keys" / "trusted"),
                       "not a trusted key")
        srv = KolmServer(kolm_bin, art, work, extra_args=["--keyring", str(ring)])
        srv.start()
        try:
            status, j = srv.chat("Hi.", max_tokens=2)
            assert status == 200, j
            _, _, kb = srv.request("GET", "/v1/kolm/keys")
            arts = [k for k in json.loads(kb)["data"] if k["use"] == "artifact"]
            assert [b64u_dec(k["public_key"]) for k in arts] == [other_pk]
        finally:
            srv.stop()
    finally:
        art.unlink(missing_ok=True)
        art2.unlink(missing_ok=True)


def test_raw_gguf(env, kolm_bin, kolm_model, tmp_path):
    home = clone_home(env.home, tmp_path / "srv" / "home")
    assert_refused(serve_attempt(kolm_bin, home, kolm_model), "--allow-unsigned")
    srv = KolmServer(kolm_bin, kolm_model, tmp_path / "srv")  # adds --allow-unsigned
    srv.start()
    try:
        pk = read_key_file(home / "keys" / "gateway.pub")
        req, status, hdrs, body = post_json(srv, "/v1/chat/completions",
                                            chat_body(model=kolm_model.name, max_tokens=2))
        assert status == 200, body
        u = json.loads(body)["usage"]
        check_receipt(hdrs["x-kolm-receipt"], pk, env, method="POST", path="/v1/chat/completions", status=200,
                      request=req, response=body, model=kolm_model.name, artifact=None,
                      prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"])
        _, _, kb = srv.request("GET", "/v1/kolm/keys")
        assert [k["use"] for k in json.loads(kb)["data"]] == ["receipt"]
    finally:
        srv.stop()


def test_reference_pack(env, kolm_bin, kolm_model, model_sha, tmp_path):
    work = tmp_path / "srv"
    home = clone_home(env.home, work / "home")
    art = work / "ref.kolm"
    r = kolm(kolm_bin, home, "pack", kolm_model, "--reference", "-o", art)
    assert r.returncode == 0, r.out
    a = read_artifact(art)
    assert a.size < 8192, f"a referencing artifact is {a.size} bytes"
    check_artifact_signature(a, env.signer_pk)
    (w,) = a.manifest["blobs"]
    assert "offset" not in w and w["sha256"] == model_sha and w["size"] == kolm_model.stat().st_size
    want_cid = blob_cid(model_sha)
    assert want_cid.startswith("bafkrei") and w["cid"] == want_cid
    stored = home / "models" / want_cid
    assert [p.name for p in (home / "models").iterdir()] == [want_cid]
    assert stored.stat().st_size == w["size"] and file_sha(stored) == model_sha
    cid = artifact_cid(a.manifest_bytes)
    assert json.loads(kolm(kolm_bin, home, "inspect", art, "--json").stdout)["cid"] == cid
    r = kolm(kolm_bin, home, "verify", art)
    assert r.returncode == 0, r.out
    srv = KolmServer(kolm_bin, art, work)
    srv.start()
    try:
        pk = read_key_file(home / "keys" / "gateway.pub")
        req, status, hdrs, body = post_json(srv, "/v1/chat/completions", chat_body(model="ref.kolm", max_tokens=3))
        assert status == 200, body
        j = json.loads(body)
        assert j["choices"][0]["message"]["content"] is not None
        check_receipt(hdrs["x-kolm-receipt"], pk, env, method="POST", path="/v1/chat/completions", status=200,
                      request=req, response=body, model="ref.kolm", artifact=cid,
                      prompt_tokens=j["usage"]["prompt_tokens"], completion_tokens=j["usage"]["completion_tokens"])
    finally:
        srv.stop()
    # the store loses the blob, or holds a different one: refused. The stored file may be
    # a hard link to the source GGUF, so it is only ever renamed, never written.
    aside = home / "models" / (want_cid + ".aside")
    os.rename(stored, aside)
    try:
        r = kolm(kolm_bin, home, "verify", art)
        assert r.returncode == 1 and "FAILED" in r.out and want_cid in r.out, r.out
        assert_refused(serve_attempt(kolm_bin, home, art), want_cid)
        shutil.copyfile(aside, stored)  # a new file
        flip_byte(stored, w["size"] // 2)
        r = kolm(kolm_bin, home, "verify", art)
        assert r.returncode == 1 and "blob 'weights'" in r.out and "SHA-256" in r.out, r.out
        assert_refused(serve_attempt(kolm_bin, home, art), "'weights'")
    finally:
        stored.unlink(missing_ok=True)  # never the source GGUF: a new file, or a link to it
        aside.unlink()
