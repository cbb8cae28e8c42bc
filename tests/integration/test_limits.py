"""Server limits and guards, black-box against the real `kolm serve`:

- --max-jobs: 429 rate_limit_exceeded with Retry-After past the per-worker limit, and
  requests succeed again once the slot is free; 503s (no worker ready) carry Retry-After;
- --request-timeout: 504 timeout (non-streamed) or an SSE error event without [DONE]
  (streamed), the job cancelled in the worker (/metrics kolm_worker_jobs back to 0);
- --sse-keepalive: ': keep-alive' comments during a silent prefill, ignored by the SDK;
- --max-messages, --max-request-tokens: 400s naming the parameter;
- --api-key / KOLM_API_KEY: 401 invalid_api_key on /v1, /health and /metrics open;
- 415 for non-JSON Content-Types; 404 unsupported_endpoint for the rest of the OpenAI API
  (every path of the pinned OpenAPI spec), 404 unknown_url otherwise; GET /metrics.

Servers with flags are started per module group (module-scoped fixtures built on
conftest.KolmServer) or per test (kolm_server_factory) where a test needs a fresh one."""

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import openai
import pytest

from conftest import REPO, KolmServer, _workroot, free_port, make_client
from test_malformed import assert_openai_error

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
IO_TIMEOUT = 120  # seconds: the bound on any one HTTP exchange in this module
LONG_PROMPT = "Count from 1 to 1000."  # the base model rambles well past 500 tokens


# --- helpers ---------------------------------------------------------------------------

def chat_body(srv, content="Say hi.", max_tokens=1, **kw):
    b = {"model": srv.model_id, "messages": [{"role": "user", "content": content}],
         "max_tokens": max_tokens, "temperature": 0}
    b.update(kw)
    return b


def compl_body(srv, prompt="Hello", max_tokens=1, **kw):
    b = {"model": srv.model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    b.update(kw)
    return b


def post(srv, path, obj, headers=None, timeout=IO_TIMEOUT):
    """POST a JSON body (Content-Type application/json unless headers override it)."""
    return srv.request("POST", path, obj, headers=headers, timeout=timeout)


def wait_for(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text exposition -> {name: [(labels dict, float value)]}; asserts that
    every line is a comment or a well-formed sample."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = METRIC_LINE.match(ln)
        assert m, f"not a Prometheus sample line: {ln!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return out


def get_metrics(srv):
    status, headers, body = srv.request("GET", "/metrics", timeout=10)
    assert status == 200, f"/metrics -> {status}: {body[:300]!r}"
    return headers, parse_metrics(body.decode())


def worker_gauge(srv, name):
    """Sum of a per-worker metric over all workers."""
    return sum(v for _, v in get_metrics(srv)[1].get(name, []))


def wait_jobs_zero(srv, timeout=10):
    wait_for(lambda: worker_gauge(srv, "kolm_worker_jobs") == 0, timeout,
             "/metrics kolm_worker_jobs to be 0 (the job cancelled in the worker)", 0.1)


class Stream:
    """A streamed request on its own http.client connection; events() yields
    (arrival time, event bytes) per SSE event (split on the blank line)."""

    def __init__(self, srv, path, obj, headers=None, timeout=IO_TIMEOUT):
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
        self.t0 = time.monotonic()
        self.conn.request("POST", path, body=json.dumps(obj).encode(), headers=hdrs)
        self.resp = self.conn.getresponse()
        self.t_headers = time.monotonic()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.raw = b""
        self._buf = b""

    def events(self, deadline_s=IO_TIMEOUT):
        deadline = time.monotonic() + deadline_s
        t_read = time.monotonic()  # events carry the time their last byte was read
        while time.monotonic() < deadline:
            while b"\n\n" in self._buf:
                ev, self._buf = self._buf.split(b"\n\n", 1)
                yield t_read, ev
            data = self.resp.read1(65536)
            t_read = time.monotonic()
            if not data:
                break
            self.raw += data
            self._buf += data
        else:
            pytest.fail(f"stream still open after {deadline_s}s", pytrace=False)
        if self._buf.strip():
            yield t_read, self._buf
            self._buf = b""

    def close(self):
        self.conn.close()


def event_json(ev):
    assert ev.startswith(b"data: "), f"not a data event: {ev[:200]!r}"
    payload = ev[len(b"data: "):]
    return None if payload == b"[DONE]" else json.loads(payload)


def read_until_content(stream, deadline_s=IO_TIMEOUT):
    """Consume events until the first one with text (delta.content or text)."""
    for _, ev in stream.events(deadline_s):
        if ev.startswith(b":"):
            continue
        j = event_json(ev)
        assert j is not None and "error" not in j, ev[:300]
        ch = j["choices"][0] if j.get("choices") else {}
        if (ch.get("delta") or {}).get("content") or ch.get("text"):
            return j
    pytest.fail("the stream ended before any content", pytrace=False)


WORDS = ("apple river stone cloud garden window silver morning quiet forest music paper "
         "yellow engine ocean lantern velvet candle mountain whisper harbor meadow copper "
         "thunder violet").split()


def long_prompt(items):
    """Varied text of about 4 tokens per item, unique per call (a random nonce first,
    so the prefix cache cannot serve any of it)."""
    rng = random.Random(os.urandom(16))
    head = f"{rng.getrandbits(64):x} {rng.getrandbits(64):x}\n"
    return head + " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(items))


def module_server(request, kolm_bin, kolm_model, tmp_path_factory, args, workers=1, threads=2):
    srv = KolmServer(kolm_bin, kolm_model, _workroot(tmp_path_factory, "limits"), args,
                     workers, threads)
    srv.start()
    request.addfinalizer(srv.stop)
    return srv


def alive(srv):
    if not srv.alive():
        pytest.fail(f"kolm serve is not running (exit {srv.proc.returncode})\n{srv.log_tail()}",
                    pytrace=False)
    return srv


# --- bad flag values ----------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--max-jobs", "abc"), ("--max-jobs", "-1"), ("--max-jobs", "1.5"), ("--max-jobs", "12x"),
    ("--request-timeout", "abc"), ("--request-timeout", "-1"), ("--request-timeout", "nan"),
    ("--request-timeout", "0.5s"),
    ("--sse-keepalive", "-0.5"), ("--sse-keepalive", "x"),
    ("--max-messages", "-3"), ("--max-messages", "many"),
    ("--max-request-tokens", "-5"), ("--max-request-tokens", "99999999999999999999"),
    ("--api-key", ""),  # an empty key would leave the server open
])
def test_bad_flag_value_refused(kolm_bin, kolm_model, tmp_path, flag, value):
    env = dict(os.environ, KOLM_HOME=str(tmp_path))
    port = str(free_port())
    p = subprocess.run([str(kolm_bin), "serve", str(kolm_model), "--port", port, "--threads", "1",
                        "--allow-unsigned", flag, value], env=env, capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode != 0, f"kolm serve {flag} {value} exited 0: {out[-500:]}"
    assert flag in out, f"the error does not name {flag}: {out[-500:]}"


def test_api_key_flag_without_value_refused(kolm_bin, kolm_model, tmp_path):
    p = subprocess.run([str(kolm_bin), "serve", str(kolm_model), "--port", str(free_port()),
                        "--allow-unsigned", "--api-key"], env=dict(os.environ, KOLM_HOME=str(tmp_path)),
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, (p.stdout + p.stderr)[-500:]


# --- default server: 415, unsupported endpoints, /metrics, default limits -----------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=xyz", "text/json",
                                   "application/jsonl", "application/json-patch+json",
                                   "application/xml", "text/plain; charset=utf-8"])
@pytest.mark.parametrize("path", [CHAT, COMPL])
def test_non_json_content_type_is_415(kolm_server, path, ctype):
    srv = kolm_server
    obj = chat_body(srv) if path == CHAT else compl_body(srv)
    for stream in (False, True):
        status, headers, body = post(srv, path, dict(obj, stream=stream),
                                     headers={"Content-Type": ctype})
        err = assert_openai_error(status, headers, body, 415)
        assert err["code"] == "unsupported_media_type", err
        assert err["type"] == "invalid_request_error", err


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "application/json;charset=UTF-8", "APPLICATION/JSON",
                                   None])
@pytest.mark.parametrize("path", [CHAT, COMPL])
def test_json_or_absent_content_type_accepted(kolm_server, path, ctype):
    """application/json with parameters or in any case (media types are case-insensitive),
    and a body with no Content-Type at all (sent raw: http.client would add none either)."""
    srv = kolm_server
    obj = chat_body(srv) if path == CHAT else compl_body(srv)
    body = json.dumps(obj).encode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=IO_TIMEOUT)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        if ctype is not None:
            conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, f"Content-Type {ctype!r} -> {resp.status}: {data[:300]!r}"
    j = json.loads(data)
    assert j["object"] == ("chat.completion" if path == CHAT else "text_completion"), j


UNSUPPORTED = ["/v1/embeddings", "/v1/images/generations", "/v1/images/edits",
               "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech",
               "/v1/files", "/v1/files/file-abc123", "/v1/fine_tuning/jobs", "/v1/batches",
               "/v1/moderations", "/v1/assistants", "/v1/threads", "/v1/vector_stores",
               "/v1/responses", "/v1/responses/resp_123", "/v1/uploads",
               "/v1/chat/completions/chatcmpl-123"]


@pytest.mark.parametrize("path", UNSUPPORTED)
def test_unsupported_openai_endpoint_is_404_named(kolm_server, path):
    for method in ("POST", "GET"):
        status, headers, body = kolm_server.request(
            method, path, {"model": "x", "input": "hello"} if method == "POST" else None)
        err = assert_openai_error(status, headers, body, 404)
        assert err["code"] == "unsupported_endpoint", (method, path, err)
        assert path in err["message"], (method, path, err)


@pytest.mark.parametrize("path", ["/v1/foo", "/v1/chat/complete", "/v1/embeddingsx",
                                  "/v1/chat", "/v2/chat/completions", "/foo"])
def test_unknown_url_is_404(kolm_server, path):
    for method in ("POST", "GET"):
        status, headers, body = kolm_server.request(
            method, path, {"model": "x"} if method == "POST" else None)
        err = assert_openai_error(status, headers, body, 404)
        assert err["code"] == "unknown_url", (method, path, err)


def test_sdk_unsupported_endpoint_raises_not_found(openai_client, model_id):
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.embeddings.create(model=model_id, input="hello")
    assert ei.value.status_code == 404
    body = ei.value.body
    assert isinstance(body, dict) and body.get("code") == "unsupported_endpoint", body
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.moderations.create(input="hello")
    assert ei.value.body.get("code") == "unsupported_endpoint", ei.value.body


SPEC_PATH = REPO.parent / "shared" / "openai" / "openapi.yaml"
SERVED = {"/chat/completions", "/completions", "/models", "/models/{model}"}


def spec_operations():
    """(method, /v1 path with placeholders filled) for every operation of the pinned
    OpenAI spec that kolm does not serve, grouped by the path's first segment."""
    if not SPEC_PATH.is_file():
        return {}
    text = SPEC_PATH.read_text()
    # Only the top-level paths: block is needed; a line scan is enough and fast.
    start = text.index("\npaths:\n")
    ops, path = {}, None
    for ln in text[start + 8:].splitlines():
        if ln and not ln.startswith(" "):
            break  # the next top-level key
        m = re.match(r"^  (/\S*):\s*$", ln)
        if m:
            path = m.group(1)
            continue
        m = re.match(r"^    (get|post|put|patch|delete):\s*$", ln)
        if m and path and path.split("?")[0] not in SERVED:
            url = "/v1" + re.sub(r"\{[^}]+\}", "x1", path)
            family = path.strip("/").split("/")[0].split("?")[0]
            ops.setdefault(family, []).append((m.group(1).upper(), url))
    return ops


_SPEC_OPS = spec_operations()


@pytest.mark.parametrize("family", sorted(_SPEC_OPS) or ["(spec missing)"])
def test_every_spec_endpoint_is_unsupported_endpoint(kolm_server, family):
    if family == "(spec missing)":
        pytest.fail(f"{SPEC_PATH} not found", pytrace=False)
    wrong = []
    for method, url in _SPEC_OPS[family]:
        body = {} if method in ("POST", "PUT", "PATCH") else None
        status, headers, rbody = kolm_server.request(method, url, body, timeout=10)
        err = assert_openai_error(status, headers, rbody, status)
        if status != 404 or err["code"] != "unsupported_endpoint":
            wrong.append(f"{method} {url} -> {status} {err['code']}")
    assert not wrong, f"{len(wrong)} of {len(_SPEC_OPS[family])}: " + "; ".join(wrong[:12])


def test_metrics_prometheus_text(kolm_server):
    srv = kolm_server
    pids = wait_for(srv.worker_pids, 30, "a worker process")
    headers, m = get_metrics(srv)
    ctype = headers.get("content-type", "")
    assert ctype.startswith("text/plain"), ctype
    ready = m.get("kolm_worker_ready")
    assert ready, f"no kolm_worker_ready in {sorted(m)}"
    assert [(lab.get("worker"), lab.get("pid"), v) for lab, v in ready] == \
        [("0", str(pids[0]), 1.0)], (ready, pids)
    for name in ("kolm_worker_jobs", "kolm_worker_running", "kolm_worker_waiting",
                 "kolm_worker_tokens_generated_total", "kolm_worker_tokens_prompt_total"):
        assert name in m, f"{name} missing from /metrics: {sorted(m)}"
        for lab, v in m[name]:
            assert lab.get("worker") == "0" and lab.get("pid") == str(pids[0]), (name, lab)
            assert v >= 0, (name, v)
    # # TYPE lines name each metric once, before its samples.
    body = srv.request("GET", "/metrics")[2].decode()
    typed = re.findall(r"^# TYPE (\S+) (gauge|counter|histogram|summary|untyped)$", body, re.M)
    assert len(typed) == len({n for n, _ in typed}), typed
    assert {n for n, _ in typed} >= set(m), (typed, sorted(m))

    before = worker_gauge(srv, "kolm_worker_tokens_generated_total")
    status, j = srv.chat("Say hi.", max_tokens=3)
    assert status == 200, j
    n = j["usage"]["completion_tokens"]
    wait_for(lambda: worker_gauge(srv, "kolm_worker_tokens_generated_total") >= before + n, 10,
             "kolm_worker_tokens_generated_total to count the completion", 0.1)
    wait_jobs_zero(srv)


def test_default_max_messages(kolm_server):
    srv = kolm_server
    msg = {"role": "user", "content": "hi"}
    status, headers, body = post(srv, CHAT, {"model": srv.model_id, "messages": [msg] * 2049,
                                             "max_tokens": 1})
    err = assert_openai_error(status, headers, body, 400)
    assert (err["param"], err["code"]) == ("messages", "array_above_max_length"), err
    # 2048 messages are within the default limit (they overflow the context instead).
    status, headers, body = post(srv, CHAT, {"model": srv.model_id, "messages": [msg] * 2048,
                                             "max_tokens": 1})
    err = assert_openai_error(status, headers, body, 400)
    assert err["code"] != "array_above_max_length", err


@pytest.mark.parametrize("path,kw", [
    (CHAT, {"max_tokens": 8193, "n": 128}),     # 1048704 > 1048576
    (CHAT, {"max_tokens": 600000, "n": 2}),
    (CHAT, {"max_tokens": 2000000}),
    (CHAT, {"max_completion_tokens": 2000000}),
    (COMPL, {"max_tokens": 600000, "n": 2}),
    (COMPL, {"max_tokens": 400000, "prompt": ["a", "b", "c"]}),
])
def test_default_max_request_tokens(kolm_server, path, kw):
    srv = kolm_server
    obj = chat_body(srv) if path == CHAT else compl_body(srv)
    obj.pop("max_tokens")
    obj.update(kw)
    status, headers, body = post(srv, path, obj)
    err = assert_openai_error(status, headers, body, 400)
    assert err["param"] in ("max_tokens", "max_completion_tokens"), err
    assert err["type"] == "invalid_request_error", err


def test_default_server_keeps_serving(kolm_server):
    kolm_server.assert_serving()


# --- --max-messages / --max-request-tokens -------------------------------------------------

@pytest.fixture(scope="module")
def small_limits(request, kolm_bin, kolm_model, tmp_path_factory):
    """ctx 32, at most 3 messages and 40 completion tokens per request."""
    return module_server(request, kolm_bin, kolm_model, tmp_path_factory,
                         ["--ctx", "32", "--max-messages", "3", "--max-request-tokens", "40"])


@pytest.fixture
def lim(small_limits):
    return alive(small_limits)


def msgs(n):
    return [{"role": "user", "content": "hi"}] * n


def test_max_messages_at_limit_ok(lim):
    status, headers, body = post(lim, CHAT, dict(chat_body(lim), messages=msgs(3)))
    assert status == 200, body[:300]


@pytest.mark.parametrize("n", [4, 5, 50])
@pytest.mark.parametrize("stream", [False, True])
def test_max_messages_exceeded(lim, n, stream):
    status, headers, body = post(lim, CHAT, dict(chat_body(lim), messages=msgs(n), stream=stream))
    err = assert_openai_error(status, headers, body, 400)
    assert (err["param"], err["code"], err["type"]) == \
        ("messages", "array_above_max_length", "invalid_request_error"), err


def test_max_messages_sdk(lim):
    client = make_client(lim, timeout=60)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=lim.model_id, messages=msgs(4), max_tokens=1)
    assert ei.value.body.get("code") == "array_above_max_length", ei.value.body
    assert ei.value.body.get("param") == "messages", ei.value.body


@pytest.mark.parametrize("path,kw", [
    (CHAT, {"max_tokens": 20, "n": 2}),          # 40: at the limit
    (CHAT, {"max_tokens": 10, "n": 4}),
    (CHAT, {}),                                  # absent: ctx 32 x 1 choice
    (COMPL, {"max_tokens": 20, "n": 2}),
    (COMPL, {"max_tokens": 10, "prompt": ["a", "b", "c", "d"]}),
])
def test_max_request_tokens_within(lim, path, kw):
    obj = chat_body(lim) if path == CHAT else compl_body(lim)
    obj.pop("max_tokens")
    obj.update(kw)
    status, headers, body = post(lim, path, obj)
    assert status == 200, f"{kw} -> {status}: {body[:300]!r}"
    j = json.loads(body)
    want = kw.get("n", 1) * (len(kw["prompt"]) if isinstance(kw.get("prompt"), list) else 1)
    assert len(j["choices"]) == want, j


@pytest.mark.parametrize("path,kw", [
    (CHAT, {"max_tokens": 21, "n": 2}),          # 42
    (CHAT, {"max_tokens": 41}),
    (CHAT, {"max_completion_tokens": 41}),
    (CHAT, {"n": 2}),                            # absent: ctx 32 x 2 = 64
    (CHAT, {"max_tokens": 14, "n": 3, "stream": True}),
    (COMPL, {"max_tokens": 14, "n": 3}),
    (COMPL, {"max_tokens": 11, "prompt": ["a", "b", "c", "d"]}),
    (COMPL, {"max_tokens": 7, "n": 2, "prompt": ["a", "b", "c"]}),  # 42
    (COMPL, {"max_tokens": 41, "stream": True}),
])
def test_max_request_tokens_exceeded(lim, path, kw):
    obj = chat_body(lim) if path == CHAT else compl_body(lim)
    obj.pop("max_tokens")
    obj.update(kw)
    status, headers, body = post(lim, path, obj)
    err = assert_openai_error(status, headers, body, 400)
    assert err["param"] in ("max_tokens", "max_completion_tokens"), err
    if "max_completion_tokens" not in kw:
        assert err["param"] == "max_tokens", err
    assert err["type"] == "invalid_request_error", err


def test_max_request_tokens_sdk(lim):
    client = make_client(lim, timeout=60)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=lim.model_id, messages=msgs(1), max_tokens=21, n=2)
    assert ei.value.body.get("param") == "max_tokens", ei.value.body
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=lim.model_id, prompt="a", max_tokens=41)
    assert ei.value.body.get("param") == "max_tokens", ei.value.body


def test_small_limits_keeps_serving(lim):
    lim.assert_serving()


# --- --api-key / KOLM_API_KEY --------------------------------------------------------------

API_KEY = "sk-kolm_Test.key~42"


@pytest.fixture(scope="module")
def keyed_server(request, kolm_bin, kolm_model, tmp_path_factory):
    srv = module_server(request, kolm_bin, kolm_model, tmp_path_factory, ["--api-key", API_KEY])
    status, _, body = srv.request("GET", "/v1/models", headers=auth(API_KEY))
    assert status == 200, body[:300]
    srv._model_id = json.loads(body)["data"][0]["id"]  # srv.model_id would ask without the key
    return srv


@pytest.fixture
def keyed(keyed_server):
    return alive(keyed_server)


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def v1_paths(srv):
    return [("GET", "/v1/models"), ("GET", f"/v1/models/{srv.model_id}"),
            ("POST", CHAT), ("POST", COMPL), ("GET", "/v1/foo"), ("POST", "/v1/embeddings"),
            ("GET", "/v1/models?limit=1"), ("POST", CHAT + "?x=1")]

BAD_AUTH = [None, f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY}x", "Bearer wrong", "Bearer ",
            "Bearer", API_KEY, f"Basic {API_KEY}", f"Token {API_KEY}", f"Bearer  x{API_KEY}",
            f"Bearer {API_KEY.upper()}"]


def keyed_req(srv, method, path, authz):
    body = None
    if method == "POST":
        body = (chat_body(srv) if path.startswith(CHAT) else
                compl_body(srv) if path == COMPL else {})
    headers = {} if authz is None else {"Authorization": authz}
    return srv.request(method, path, body, headers=headers)


@pytest.mark.parametrize("authz", BAD_AUTH)
def test_api_key_missing_or_wrong_is_401(keyed, authz):
    for method, path in v1_paths(keyed):
        status, headers, body = keyed_req(keyed, method, path, authz)
        err = assert_openai_error(status, headers, body, 401)
        assert (err["code"], err["type"]) == ("invalid_api_key", "invalid_request_error"), \
            (method, path, authz, err)
        assert API_KEY not in err["message"], "the 401 leaks the server's key"


def test_api_key_checked_before_parsing(keyed):
    """Without the key, nothing about the request is evaluated: bad JSON, a non-JSON
    Content-Type, a huge n all get the 401."""
    for body, ctype in ((b'{"model": ', "application/json"), (b"x=1", "text/plain"),
                        (json.dumps(chat_body(keyed, n=128, max_tokens=10 ** 7)).encode(),
                         "application/json")):
        status, headers, rbody = keyed.request("POST", CHAT, body, headers={"Content-Type": ctype})
        err = assert_openai_error(status, headers, rbody, 401)
        assert err["code"] == "invalid_api_key", err


@pytest.mark.parametrize("authz", [f"Bearer {API_KEY}", f"bearer {API_KEY}"])
def test_api_key_right_key_works(keyed, authz):
    for method, path in v1_paths(keyed):
        status, headers, body = keyed_req(keyed, method, path, authz)
        want = 404 if path in ("/v1/foo", "/v1/embeddings") else 200
        assert status == want, (method, path, status, body[:300])
    # header names are case-insensitive
    status, _, body = keyed.request("GET", "/v1/models", headers={"authorization": authz})
    assert status == 200, body[:300]


def test_api_key_health_and_metrics_open(keyed):
    for path in ("/health", "/metrics"):
        for hdrs in ({}, auth("wrong"), auth(API_KEY)):
            status, _, body = keyed.request("GET", path, headers=hdrs)
            assert status == 200, (path, hdrs, status, body[:300])


def test_api_key_sdk(keyed):
    good = openai.OpenAI(base_url=keyed.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    model = good.models.list().data[0].id
    r = good.chat.completions.create(model=model, messages=msgs(1), max_tokens=2, temperature=0)
    assert r.choices[0].message.role == "assistant"
    text = ""
    for chunk in good.chat.completions.create(model=model, messages=msgs(1), max_tokens=3,
                                              temperature=0, stream=True):
        for ch in chunk.choices:
            text += ch.delta.content or ""
    assert text
    c = good.completions.create(model=model, prompt="Hello", max_tokens=2)
    assert c.choices and isinstance(c.choices[0].text, str)

    bad = openai.OpenAI(base_url=keyed.base_url, api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.models.list()
    assert ei.value.status_code == 401 and ei.value.body.get("code") == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model, messages=msgs(1), max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model, messages=msgs(1), max_tokens=2, stream=True)


def test_api_key_server_keeps_serving(keyed):
    status, _, body = keyed.request("GET", "/health")
    assert status == 200
    status, _, body = post(keyed, CHAT, chat_body(keyed), headers=auth(API_KEY))
    assert status == 200, body[:300]


def test_api_key_from_environment(kolm_server_factory, kolm_model, monkeypatch):
    monkeypatch.setenv("KOLM_API_KEY", "env-key-1")
    srv = kolm_server_factory()
    model = kolm_model.name  # the model id is the file's name (README)
    body = {"model": model, "messages": msgs(1), "max_tokens": 1}
    status, headers, rbody = post(srv, CHAT, body)
    err = assert_openai_error(status, headers, rbody, 401)
    assert err["code"] == "invalid_api_key", err
    assert post(srv, CHAT, body, headers=auth("env-key-1"))[0] == 200
    assert srv.request("GET", "/v1/models", headers=auth("env-key-1"))[0] == 200
    assert srv.request("GET", "/health")[0] == 200
    srv.stop()
    # --api-key wins over the environment.
    srv2 = kolm_server_factory(extra_args=["--api-key", "flag-key-2"])
    assert srv2.request("GET", "/v1/models", headers=auth("flag-key-2"))[0] == 200
    status, headers, rbody = srv2.request("GET", "/v1/models", headers=auth("env-key-1"))
    assert_openai_error(status, headers, rbody, 401)


# --- --max-jobs: 429 -----------------------------------------------------------------------

def assert_429(status, headers, body):
    err = assert_openai_error(status, headers, body, 429)
    assert (err["type"], err["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded"), err
    assert headers.get("retry-after") == "1", headers
    return err


def test_max_jobs_429_then_recovers(kolm_server_factory):
    srv = kolm_server_factory(extra_args=["--max-jobs", "1"])
    model = srv.model_id
    first = Stream(srv, CHAT, chat_body(srv, LONG_PROMPT, max_tokens=500, stream=True))
    try:
        assert first.status == 200, first.resp.read()[:300]
        read_until_content(first)
        # the one slot is taken: every kind of completion request is refused
        assert_429(*post(srv, CHAT, chat_body(srv)))
        assert_429(*post(srv, CHAT, chat_body(srv, stream=True)))
        assert_429(*post(srv, COMPL, compl_body(srv)))
        assert_429(*post(srv, COMPL, compl_body(srv, stream=True)))
        client = make_client(srv, timeout=30)
        with pytest.raises(openai.RateLimitError) as ei:
            client.chat.completions.create(model=model, messages=msgs(1), max_tokens=1)
        assert ei.value.status_code == 429
        assert ei.value.response.headers.get("retry-after") == "1"
        assert ei.value.body.get("code") == "rate_limit_exceeded", ei.value.body
        # other endpoints are not limited
        assert srv.request("GET", "/v1/models")[0] == 200
        assert srv.request("GET", "/health")[0] == 200
        wait_for(lambda: worker_gauge(srv, "kolm_worker_jobs") == 1, 10,
                 "/metrics kolm_worker_jobs 1 while the stream runs", 0.1)
        # the first stream is still going
        read_until_content(first)
    finally:
        first.close()

    # the slot frees once the client went away (the job is cancelled)
    def ok():
        status, headers, body = post(srv, CHAT, chat_body(srv))
        if status == 429:
            assert headers.get("retry-after") == "1"
            return False
        assert status == 200, body[:300]
        return True
    wait_for(ok, 15, "a 200 after the long stream was closed", 0.1)
    wait_jobs_zero(srv)

    # a stream that finished by itself frees its slot too: sequential requests never 429
    for i, (path, stream) in enumerate([(CHAT, False), (CHAT, True), (COMPL, False),
                                        (COMPL, True)] * 2):
        obj = (chat_body if path == CHAT else compl_body)(srv, max_tokens=2, stream=stream)
        status, headers, body = post(srv, path, obj)
        assert status == 200, f"sequential request {i} {path} -> {status}: {body[:300]!r}"
    srv.assert_serving()


def test_max_jobs_rejected_requests_hold_no_slot(kolm_server_factory):
    """Requests refused with a 400 hold no slot; a stream that finished frees its slot
    before the client has read the end of it."""
    srv = kolm_server_factory(extra_args=["--max-jobs", "1"])
    for _ in range(5):
        status, headers, body = post(srv, CHAT, chat_body(srv, max_tokens=-1))
        assert_openai_error(status, headers, body, 400)
        status, headers, body = post(srv, CHAT, b'{"model": ')
        assert_openai_error(status, headers, body, 400)
    assert post(srv, CHAT, chat_body(srv))[0] == 200
    s = Stream(srv, CHAT, chat_body(srv, max_tokens=4, stream=True))
    try:
        assert s.status == 200
        evs = [ev for _, ev in s.events(60)]
    finally:
        s.close()
    assert evs[-1] == b"data: [DONE]", evs[-3:]
    status, _, body = post(srv, CHAT, chat_body(srv))
    assert status == 200, f"right after a finished stream: {status} {body[:300]!r}"


def test_max_jobs_is_per_worker(kolm_server_factory):
    """--workers 2 --max-jobs 1: two long streams run (one per worker), a third is a 429."""
    srv = kolm_server_factory(extra_args=["--max-jobs", "1"], workers=2, threads=1)
    wait_for(lambda: len(get_metrics(srv)[1].get("kolm_worker_ready", [])) == 2 and
             worker_gauge(srv, "kolm_worker_ready") == 2, 60, "two ready workers", 0.2)
    streams = []
    try:
        for i in range(2):
            s = Stream(srv, CHAT, chat_body(srv, LONG_PROMPT, max_tokens=500, stream=True))
            streams.append(s)
            assert s.status == 200, f"stream {i}: {s.status} {s.resp.read()[:300]!r}"
            read_until_content(s)
        assert_429(*post(srv, CHAT, chat_body(srv)))
        _, m = get_metrics(srv)
        assert sorted(lab["worker"] for lab, _ in m["kolm_worker_ready"]) == ["0", "1"], m
    finally:
        for s in streams:
            s.close()
    wait_jobs_zero(srv, 15)
    srv.assert_serving()


def test_503_no_worker_carries_retry_after(kolm_server_factory):
    """While the only worker restarts after a SIGKILL, completions get 503 + Retry-After."""
    srv = kolm_server_factory()
    pid = wait_for(srv.worker_pids, 30, "a worker process")[0]
    obj = chat_body(srv)
    os.kill(pid, signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, headers, body = post(srv, CHAT, obj, timeout=30)
        if status == 200:
            break
        err = assert_openai_error(status, headers, body, 503)
        assert headers.get("retry-after", "").isdigit(), (headers, err)
        seen.append(err["code"])
        time.sleep(0.02)
    assert seen, "no 503 while the worker restarted (the restart was faster than a request?)"
    wait_for(lambda: post(srv, CHAT, chat_body(srv))[0] == 200, 60, "a 200 after respawn", 0.2)
    srv.assert_serving()


# --- --request-timeout ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def timeout_server(request, kolm_bin, kolm_model, tmp_path_factory):
    return module_server(request, kolm_bin, kolm_model, tmp_path_factory,
                         ["--request-timeout", "0.5"])


@pytest.fixture
def tmo(timeout_server):
    return alive(timeout_server)


def assert_timeout_error(err):
    assert (err["type"], err["code"]) == ("server_error", "timeout"), err


def serving_again(srv, timeout=15):
    """A short request succeeds within timeout s. Under a 0.5 s deadline, one that
    arrives while the worker still finishes the prefill step it was in when the
    timed-out job was cancelled (up to a second or so on a small CPU) may itself get a
    504; only 504s are tolerated meanwhile. Returns the seconds it took."""
    t0 = time.monotonic()
    obj = chat_body(srv, max_tokens=1)

    def ok():
        status, headers, body = post(srv, CHAT, obj, timeout=30)
        if status == 504:
            return False
        assert status == 200, body[:300]
        return True
    wait_for(ok, timeout, "a short request to succeed after the timeout", 0.02)
    return time.monotonic() - t0


def after_timeout(srv):
    wait_jobs_zero(srv, 10)
    serving_again(srv)
    assert srv.alive()
    status, _, _ = srv.request("GET", "/health")
    assert status == 200


@pytest.mark.parametrize("path", [CHAT, COMPL])
def test_timeout_non_streamed_is_504(tmo, path):
    obj = chat_body(tmo, LONG_PROMPT, 2000) if path == CHAT else compl_body(tmo, "1, 2, 3,", 2000)
    t0 = time.monotonic()
    status, headers, body = post(tmo, path, obj, timeout=60)
    took = time.monotonic() - t0
    err = assert_openai_error(status, headers, body, 504)
    assert_timeout_error(err)
    assert 0.45 <= took < 10, f"504 after {took:.2f}s with --request-timeout 0.5"
    after_timeout(tmo)


@pytest.mark.parametrize("path", [CHAT, COMPL])
def test_timeout_streamed_error_event(tmo, path):
    obj = chat_body(tmo, LONG_PROMPT, 2000) if path == CHAT else compl_body(tmo, "1, 2, 3,", 2000)
    obj["stream"] = True
    s = Stream(tmo, path, obj, timeout=60)
    try:
        if s.status == 504:  # the deadline passed before the first token: a plain 504
            body = s.resp.read()
            assert_timeout_error(assert_openai_error(s.status, s.headers, body, 504))
            after_timeout(tmo)
            return
        assert s.status == 200, s.resp.read()[:300]
        assert s.headers.get("content-type", "").startswith("text/event-stream")
        evs = [ev for _, ev in s.events(30)]
        took = time.monotonic() - s.t0
        conn_close = s.headers.get("connection", "").lower() == "close"
        # the response is complete (chunked terminator read): the connection is reusable
        if not conn_close:
            s.conn.request("GET", "/health")
            r = s.conn.getresponse()
            assert r.status == 200, r.status
            r.read()
    finally:
        s.close()
    data = [ev for ev in evs if not ev.startswith(b":")]
    assert data, "no events"
    assert b"data: [DONE]" not in data, "a timed-out stream ended with [DONE]"
    last = event_json(data[-1])
    assert "error" in last, f"last event is not an error: {data[-1][:300]!r}"
    assert_timeout_error(last["error"])
    for k in ("message", "type", "param", "code"):
        assert k in last["error"], last
    for ev in data[:-1]:
        j = event_json(ev)
        assert "error" not in j, ev
        assert all(ch.get("finish_reason") is None for ch in j.get("choices", [])), \
            f"a finish_reason was sent before the timeout error: {ev[:300]!r}"
    assert 0.45 <= took < 10, f"stream ended after {took:.2f}s with --request-timeout 0.5"
    after_timeout(tmo)


def test_timeout_streamed_long_prompt(tmo):
    """A deadline that passes during a long prefill: a 504, or an error event when the
    headers were already out; the prefill is abandoned in the worker."""
    s = Stream(tmo, CHAT, chat_body(tmo, long_prompt(700), 50, stream=True), timeout=60)
    try:
        if s.status != 200:
            body = s.resp.read()
            assert_timeout_error(assert_openai_error(s.status, s.headers, body, 504))
        else:
            data = [ev for _, ev in s.events(60) if not ev.startswith(b":")]
            assert data and b"data: [DONE]" not in data, data[-2:]
            last = event_json(data[-1])
            assert "error" in last, data[-1][:300]
            assert_timeout_error(last["error"])
        took = time.monotonic() - s.t0
    finally:
        s.close()
    assert took < 15, f"the timeout took {took:.1f}s"
    after_timeout(tmo)


def test_timeout_sdk(tmo):
    client = make_client(tmo, timeout=60)
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model=tmo.model_id, messages=[
            {"role": "user", "content": LONG_PROMPT}], max_tokens=2000, temperature=0)
    assert ei.value.status_code == 504
    assert ei.value.body.get("code") == "timeout", ei.value.body
    got = ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in client.chat.completions.create(
                model=tmo.model_id, messages=[{"role": "user", "content": LONG_PROMPT}],
                max_tokens=2000, temperature=0, stream=True):
            for ch in chunk.choices:
                got += ch.delta.content or ""
        pytest.fail(f"the stream ended without an error after {len(got)} chars", pytrace=False)
    body = ei.value.body
    assert isinstance(body, dict) and body.get("code") == "timeout", body
    after_timeout(tmo)


def test_timeout_abandons_prefill(kolm_server_factory):
    """The job is cancelled in the worker, mid-prefill: after a timed-out ~6500-token
    prompt the worker is free again well before that prefill would have finished (its
    duration estimated from a shorter prompt's, prefill cost being at least linear).
    Also: --request-timeout 0 means no deadline."""
    ref = kolm_server_factory(extra_args=["--request-timeout", "0"])
    t0 = time.monotonic()
    status, headers, body = post(ref, CHAT, chat_body(ref, long_prompt(300), 1), timeout=300)
    small = time.monotonic() - t0
    assert status == 200, body[:300]
    small_toks = json.loads(body)["usage"]["prompt_tokens"]
    ref.stop()

    srv = kolm_server_factory(extra_args=["--request-timeout", "0.5"])
    prompt = long_prompt(1650)  # about 4 tokens per item; under the 8192-token context
    t0 = time.monotonic()
    status, headers, body = post(srv, CHAT, chat_body(srv, prompt, 1), timeout=60)
    assert_timeout_error(assert_openai_error(status, headers, body, 504))
    serving_again(srv, timeout=60)
    free = time.monotonic() - t0
    n_toks = 1650 * small_toks / 300
    full = small * n_toks / small_toks
    print(f"{small_toks} prompt tokens took {small:.2f}s -> ~{n_toks:.0f} tokens ~{full:.1f}s; "
          f"worker free {free:.2f}s after the start")
    if full < 1.5:
        pytest.skip(f"prefill is too fast here ({full:.2f}s estimated) to tell")
    assert free < 0.5 + 0.7 * full, \
        (f"the worker was busy {free:.2f}s after a request that timed out at 0.5s, about "
         f"as long as its whole ~{n_toks:.0f}-token prefill ({full:.1f}s): not abandoned")
    wait_jobs_zero(srv)


def test_timeout_short_requests_unaffected(tmo):
    for _ in range(3):
        status, j = tmo.chat("Say hi.", max_tokens=2)
        assert status == 200, j
    wait_jobs_zero(tmo)


def test_timeout_frees_max_jobs_slot(kolm_server_factory):
    """--max-jobs 1 --request-timeout 0.5: a timed-out request gives its slot back."""
    srv = kolm_server_factory(extra_args=["--max-jobs", "1", "--request-timeout", "0.5"])
    for _ in range(2):
        status, headers, body = post(srv, CHAT, chat_body(srv, LONG_PROMPT, 2000), timeout=60)
        assert_timeout_error(assert_openai_error(status, headers, body, 504))

        def ok():
            status, headers, body = post(srv, CHAT, chat_body(srv))
            if status == 429:
                return False
            assert status == 200, body[:300]
            return True
        wait_for(ok, 10, "the slot of the timed-out request to be free", 0.1)
    wait_jobs_zero(srv)


# --- --sse-keepalive -----------------------------------------------------------------------

KEEPALIVE = 0.2


@pytest.fixture(scope="module")
def keepalive_server(request, kolm_bin, kolm_model, tmp_path_factory):
    return module_server(request, kolm_bin, kolm_model, tmp_path_factory,
                         ["--sse-keepalive", str(KEEPALIVE)])


@pytest.fixture
def ka(keepalive_server):
    return alive(keepalive_server)


def timed_stream(srv, items, max_tokens=2):
    """A streamed chat completion of a long unique prompt -> (list of (t, event), Stream)."""
    s = Stream(srv, CHAT, chat_body(srv, long_prompt(items), max_tokens, stream=True,
                                    stream_options={"include_usage": True}))
    try:
        assert s.status == 200, s.resp.read()[:300]
        evs = [(s.t_headers, b"(headers)")] + list(s.events(IO_TIMEOUT))
    finally:
        s.close()
    return evs, s


def first_content_index(evs):
    for i, (_, ev) in enumerate(evs):
        if ev.startswith(b"data: {"):
            j = json.loads(ev[6:])
            if any((c.get("delta") or {}).get("content") for c in j.get("choices", [])):
                return i
    pytest.fail("no content chunk in the stream", pytrace=False)


def test_keepalive_during_prefill_raw(ka):
    items = 800  # ~3200 tokens; doubled once if this machine prefilled it too fast
    for attempt in range(2):
        evs, s = timed_stream(ka, items)
        fc = first_content_index(evs)
        silent = [(t, ev) for t, ev in evs[:fc + 1] if not ev.startswith(b":")]
        longest = max(b[0] - a[0] for a, b in zip(silent, silent[1:])) if len(silent) > 1 else 0
        if longest > 3 * KEEPALIVE or attempt == 1:
            break
        items *= 2
    raw = s.raw
    kas = [i for i, (_, ev) in enumerate(evs) if ev.startswith(b":")]
    assert longest > 3 * KEEPALIVE, f"the prefill gap was only {longest:.2f}s; cannot test"
    assert any(i < fc for i in kas), \
        f"no ': keep-alive' before the first content chunk (silent {longest:.2f}s)"
    # exact framing: a comment line on its own, between complete events
    for i in kas:
        assert evs[i][1] == b": keep-alive", evs[i][1][:100]
    assert b"\n\n: keep-alive\n\n" in raw, raw[:400]
    assert raw.count(b": keep-alive") == len(kas)
    # no more than one per interval, and none missing for long: every silence between
    # two events stays under 2 intervals (+ scheduling slack)
    t_hdr, t_fc = evs[0][0], evs[fc][0]
    pre = [i for i in kas if i < fc]
    assert len(pre) <= (t_fc - t_hdr) / KEEPALIVE + 2, \
        f"{len(pre)} keep-alives in {t_fc - t_hdr:.2f}s with an interval of {KEEPALIVE}s"
    gaps = [evs[i + 1][0] - evs[i][0] for i in range(fc)]
    assert max(gaps) < 2 * KEEPALIVE + 1.5, f"a {max(gaps):.2f}s silence without a keep-alive"
    # the stream itself is intact
    data = [ev for _, ev in evs[1:] if not ev.startswith(b":")]
    assert data[-1] == b"data: [DONE]", data[-2:]
    usage = event_json(data[-2])["usage"]
    assert usage["prompt_tokens"] > 1000, usage


def _httpx():
    try:
        import httpx2 as httpx
    except ImportError:  # an openai SDK built on plain httpx
        import httpx
    return httpx


def tee_client(srv):
    """An openai client whose transport also records the raw response bytes."""
    httpx = _httpx()
    sink = bytearray()

    class Tee(httpx.SyncByteStream):
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            for part in self.inner:
                sink.extend(part)
                yield part

        def close(self):
            self.inner.close()

    class Transport(httpx.HTTPTransport):
        def handle_request(self, request):
            r = super().handle_request(request)
            return httpx.Response(status_code=r.status_code, headers=r.headers,
                                  stream=Tee(r.stream), extensions=r.extensions)

    http_client = httpx.Client(transport=Transport(), timeout=IO_TIMEOUT)
    client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0,
                           http_client=http_client)
    return client, sink


def test_keepalive_sdk_parses_stream(ka):
    client, sink = tee_client(ka)
    items = 800
    for attempt in range(2):
        sink.clear()
        chunks = list(client.chat.completions.create(
            model=ka.model_id, messages=[{"role": "user", "content": long_prompt(items)}],
            max_tokens=3, temperature=0, stream=True, stream_options={"include_usage": True}))
        if b": keep-alive" in sink or attempt == 1:
            break
        items *= 2
    assert b": keep-alive" in sink, "the raw stream had no keep-alive (prefill too fast?)"
    assert chunks, "the SDK yielded nothing"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, "no content parsed"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"]), finishes
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_keepalive_not_in_non_streamed(ka):
    t0 = time.monotonic()
    status, headers, body = post(ka, CHAT, chat_body(ka, long_prompt(500), 2))
    took = time.monotonic() - t0
    assert status == 200, body[:300]
    assert b"keep-alive" not in body, body[:300]
    j = json.loads(body)  # the whole body is one JSON document
    assert j["object"] == "chat.completion"
    print(f"non-streamed long prompt took {took:.2f}s")


def test_keepalive_server_keeps_serving(ka):
    ka.assert_serving()


def test_keepalive_zero_disables(kolm_server_factory):
    srv = kolm_server_factory(extra_args=["--sse-keepalive", "0"])
    evs, s = timed_stream(srv, 500)
    assert b"keep-alive" not in s.raw, s.raw[:500]
    assert evs[-1][1] == b"data: [DONE]"


def test_keepalive_http2(ka, tmp_path):
    """The same comments over HTTP/2 (curl --http2-prior-knowledge)."""
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl not installed")
    req = tmp_path / "req.json"
    req.write_text(json.dumps(chat_body(ka, long_prompt(800), 2, stream=True)))
    p = subprocess.run([curl, "-sS", "-N", "--http2-prior-knowledge", "--max-time", "110",
                        "-H", "Content-Type: application/json", "--data-binary", f"@{req}",
                        "-w", "\n%{http_version} %{http_code}",
                        f"http://127.0.0.1:{ka.port}{CHAT}"],
                       capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    out, _, trailer = p.stdout.rpartition(b"\n")
    assert p.returncode == 0 and trailer == b"2 200", (p.returncode, trailer, p.stderr[-300:])
    evs = out.split(b"\n\n")
    fc = next(i for i, ev in enumerate(evs) if b'"content":"' in ev and b'"role"' not in ev)
    assert b": keep-alive" in evs[:fc], [ev[:60] for ev in evs[:fc + 1]]
    assert b"data: [DONE]" in evs, evs[-3:]


def test_disconnect_during_prefill_frees_slot(kolm_server_factory):
    """A client that goes away while its stream only gets keep-alives (a long prefill)
    has its job cancelled: with --max-jobs 1 the next request is served soon."""
    srv = kolm_server_factory(extra_args=["--max-jobs", "1", "--sse-keepalive", "0.2"])
    s = Stream(srv, CHAT, chat_body(srv, long_prompt(1600), 2, stream=True))
    try:
        assert s.status == 200, s.resp.read()[:300]
        for _, ev in s.events(IO_TIMEOUT):
            if ev.startswith(b":"):
                break
            j = event_json(ev)
            assert not any((c.get("delta") or {}).get("content") for c in j["choices"]), \
                "content before any keep-alive: the prefill was too fast for this test"
        assert_429(*post(srv, CHAT, chat_body(srv)))
    finally:
        s.conn.sock.shutdown(socket.SHUT_RDWR)
        s.close()
    t0 = time.monotonic()

    def ok():
        status, headers, body = post(srv, CHAT, chat_body(srv))
        if status == 429:
            return False
        assert status == 200, body[:300]
        return True
    wait_for(ok, 15, "a 200 after the prefilling client disconnected", 0.1)
    print(f"slot free {time.monotonic() - t0:.2f}s after the disconnect")
    wait_jobs_zero(srv)
