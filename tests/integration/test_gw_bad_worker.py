"""The gateway against a worker that breaks the event contract (a scripted fake
`kolm-worker` next to a copy of the real `kolm`): events out of order, duplicate
terminal events, events for unknown jobs, a corrupt frame mid-stream. The gateway
must answer every request with a well-formed response and stay up.

A copy is needed because `kolm serve` runs the `kolm-worker` that sits next to its
own binary. The fake speaks the real frame format (proto/proto.h) with a minimal
msgpack encoder and takes the script for a job from the job's user message.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import REPO, free_port


def proto_version():
    """PROTO_VERSION from proto/proto.h: the fake speaks the version the gateway expects."""
    m = re.search(r"#define PROTO_VERSION (\d+)", (REPO / "proto" / "proto.h").read_text())
    return int(m.group(1))

FAKE = r'''#!PYTHON
import os, sys, struct, select
a = sys.argv
fd = int(a[a.index("--fd") + 1])
mid = a[a.index("--model-id") + 1].encode()

def s(b):
    return (bytes([0xa0 | len(b)]) if len(b) < 32 else b"\xdb" + struct.pack(">I", len(b))) + b

def m(d):
    out = bytes([0x80 | len(d)])
    for k, v in d.items():
        out += s(k.encode()) + (b"\xcf" + struct.pack(">Q", v) if isinstance(v, int) else s(v))
    return out

def frame(t, p):
    return struct.pack(">IHHI", 0x4B4C4D46, PROTO_VERSION, t, len(p)) + p

def ev(job, kind, **kw):
    return frame(4, m(dict(job=job, kind=kind, choice=0, **kw)))

def fin(j):
    return ev(j, 3, finish=1, last=1, pt=3, ct=1, cached=0)

os.write(fd, frame(1, m(dict(wid=0, pid=os.getpid(), model=mid, arch=b"fake", n_ctx=64, n_vocab=10))))
buf = b""
while True:
    r, _, _ = select.select([fd], [], [], 60)
    if not r:
        break
    d = os.read(fd, 1 << 20)
    if not d:
        break
    buf += d
    while len(buf) >= 12:
        n = struct.unpack(">I", buf[8:12])[0]
        if len(buf) < 12 + n:
            break
        f, buf = buf[:12 + n], buf[12 + n:]
        if f[6:8] != b"\x00\x02":
            continue  # only SUBMIT matters
        i = f.find(b"\xa3job") + 4
        t = f[i]
        j = t if t < 0x80 else int.from_bytes(f[i + 1:i + 1 + {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}[t]], "big")
        if b"delta-first" in f:      # DELTA before ACCEPTED, duplicates and late events
            out = ev(999, 2, text=b"x") + ev(j, 2, text=b"early") + ev(j, 1, pt=3) + ev(j, 1, pt=3) \
                + ev(j, 2, text=b"ok") + fin(j) + fin(j) + ev(j, 2, text=b"late") + ev(j, 4, status=500,
                  code=b"c", msg=b"m", param=b"p")
        elif b"no-accept" in f:      # FINISH without ACCEPTED or DELTA
            out = fin(j)
        elif b"corrupt" in f:        # a corrupt frame after some output
            out = ev(j, 1, pt=1) + ev(j, 2, text=b"a") + b"\0" * 12
        else:
            out = ev(j, 1, pt=1) + ev(j, 2, text=b"hi") + fin(j)
        os.write(fd, out)
'''


@pytest.fixture
def fake_server(kolm_bin, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy2(kolm_bin, bindir / "kolm")
    worker = bindir / "kolm-worker"
    worker.write_text(FAKE.replace("PYTHON", os.path.realpath(os.sys.executable), 1)
                      .replace("PROTO_VERSION", str(proto_version())))
    worker.chmod(0o755)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"")
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(bindir / "kolm"), "serve", str(model), "--port", str(port),
                             "--allow-unsigned"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        if _req(port, "GET", "/health")[0] == 200:
            break
        time.sleep(0.1)
    yield port, proc, tmp_path / "serve.log"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _req(port, method, path, body=None):
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path, body=json.dumps(body) if body is not None else None)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return None, b""


def _chat(port, script, stream):
    body = {"model": "fake.gguf", "messages": [{"role": "user", "content": script}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return _req(port, "POST", "/v1/chat/completions", body)


def _events(raw):
    out = [x[len("data: "):] for x in raw.decode().split("\n\n") if x]
    return [x if x == "[DONE]" else json.loads(x) for x in out]


def _wait_healthy(port):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _req(port, "GET", "/health")[0] == 200:
            return
        time.sleep(0.1)
    pytest.fail("no worker ready again")


def test_out_of_order_events_stream(fake_server):
    port, proc, log = fake_server
    status, raw = _chat(port, "delta-first", True)
    assert status == 200, raw
    ev = _events(raw)
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev if e != "[DONE]" and e["choices"])
    assert text == "earlyok"  # role chunk once, nothing after the first FINISH
    assert [e for e in ev if e != "[DONE]" and e["choices"] and e["choices"][0]["finish_reason"]][0][
        "choices"][0]["finish_reason"] == "stop"
    assert ev[-1] == "[DONE]" and ev[-2]["usage"]["total_tokens"] == 4
    assert proc.poll() is None, log.read_text()


def test_out_of_order_events_non_stream(fake_server):
    port, proc, log = fake_server
    status, raw = _chat(port, "delta-first", False)
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == "earlyok"
    assert proc.poll() is None, log.read_text()


def test_finish_without_accepted_stream(fake_server):
    port, proc, log = fake_server
    status, raw = _chat(port, "no-accept", True)
    assert status == 200, raw
    ev = _events(raw)
    assert ev[-1] == "[DONE]"
    assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
    assert proc.poll() is None, log.read_text()


def test_corrupt_frame_mid_stream(fake_server):
    port, proc, log = fake_server
    status, raw = _chat(port, "corrupt", True)
    assert status == 200, raw
    ev = _events(raw)
    assert ev[-1]["error"]["code"] == "worker_unavailable"
    assert "[DONE]" not in ev
    status, raw = _chat(port, "corrupt", False)
    assert status == 503, raw  # before headers: the worker died (or none is ready yet)
    assert json.loads(raw)["error"]["code"] == "worker_unavailable"
    _wait_healthy(port)
    status, raw = _chat(port, "plain", False)
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "hi", raw
    assert proc.poll() is None, log.read_text()
