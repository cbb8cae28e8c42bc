"""The HTTP layer against the real server, over raw sockets and curl: HTTP/1.1
keep-alive and pipelining, a chunked SSE stream followed by another request on the
same connection, slow clients (slowloris headers, a body trickled in pieces) not
blocking others, invalid UTF-8 in a JSON body, HTTP/2 (curl with prior knowledge for
single requests, curl with h2c Upgrade and a minimal raw prior-knowledge client for
concurrent streams on one connection: curl 7.88.1 cannot reuse a prior-knowledge
connection, curl/curl#10634), a chunked request body, and Expect: 100-continue.

test_malformed.py covers garbage input, oversized bodies/headers, truncated
requests and error shapes on fresh connections; here the point is the connection:
every case checks that the connection it used (or the server) goes on serving.

All traffic goes to 127.0.0.1; every socket operation and loop has a deadline."""

import json
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest

from test_malformed import assert_openai_error

CHAT = "/v1/chat/completions"
IO_TIMEOUT = 60.0  # one response on a 2-core machine under load: generous, but bounded


# --- a raw HTTP/1.1 client that keeps its connection and its read buffer ---------------

class Response:
    def __init__(self, version, status, reason, headers, body, chunked, chunk_sizes):
        self.version, self.status, self.reason = version, status, reason
        self.headers, self.body = headers, body
        self.chunked, self.chunk_sizes = chunked, chunk_sizes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            pytest.fail(f"HTTP {self.status} body is not JSON: {self.body[:300]!r}", pytrace=False)

    def __repr__(self):
        return f"<HTTP {self.status} {self.headers} {self.body[:200]!r}>"


class Conn:
    """One TCP connection to the server; responses are parsed from a buffer that
    keeps whatever follows the current response (pipelined answers)."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no complete response within {self.timeout:.0f}s; have "
                        f"{self.buf[:300]!r}", pytrace=False)
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            pytest.fail(f"no complete response within {self.timeout:.0f}s; have "
                        f"{self.buf[:300]!r}", pytrace=False)
        if not d:
            pytest.fail(f"the server closed the connection mid-response; have "
                        f"{self.buf[:300]!r}", pytrace=False)
        self.buf += d

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._more(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n, deadline):
        while len(self.buf) < n:
            self._more(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head_request=False, skip_informational=True, timeout=None):
        """The next complete response on the connection (framing by Content-Length or
        chunked; a response framed by connection close is read to the close)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._more(deadline)
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            assert len(parts) >= 2 and parts[0] in ("HTTP/1.1", "HTTP/1.0"), \
                f"not an HTTP/1.x status line: {head[:200]!r}"
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers = {}
            for ln in lines[1:]:
                k, sep, v = ln.partition(":")
                assert sep, f"malformed header line {ln!r}"
                k = k.strip().lower()
                headers[k] = (headers[k] + ", " + v.strip()) if k in headers else v.strip()
            if 100 <= status < 200:
                if skip_informational:
                    continue
                return Response(version, status, reason, headers, b"", False, [])
            break
        if head_request or status in (204, 304):
            return Response(version, status, reason, headers, b"", False, [])
        te = headers.get("transfer-encoding", "").lower()
        if te:
            assert te == "chunked", f"transfer-encoding {te!r}"
            assert "content-length" not in headers, f"both framings: {headers}"
            body, sizes = b"", []
            while True:
                size_line = self._line(deadline)
                n = int(size_line.split(b";")[0].strip(), 16)
                sizes.append(n)
                if n == 0:
                    while self._line(deadline):  # trailers up to the empty line
                        pass
                    break
                body += self._take(n, deadline)
                crlf = self._take(2, deadline)
                assert crlf == b"\r\n", f"chunk of {n} bytes not followed by CRLF: {crlf!r}"
            return Response(version, status, reason, headers, body, True, sizes)
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]), deadline)
            return Response(version, status, reason, headers, body, False, [])
        # framed by close: only acceptable when the server says it closes
        body = self.buf
        self.buf = b""
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                pytest.fail("response without Content-Length or chunked framing and no close",
                            pytrace=False)
            if not d:
                break
            body += d
        return Response(version, status, reason, headers, body, False, [])

    def assert_open(self, wait=0.3):
        """No EOF (and no unsolicited bytes) on the connection within wait seconds."""
        assert self.buf == b"", f"unexpected bytes after the last response: {self.buf[:200]!r}"
        r, _, _ = select.select([self.sock], [], [], wait)
        if r:
            try:
                d = self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                pytest.fail("the server reset a keep-alive connection", pytrace=False)
            assert d, "the server closed a keep-alive connection"
            pytest.fail(f"unsolicited bytes on a keep-alive connection: {d[:200]!r}", pytrace=False)


def request_bytes(method, path, body=None, headers=(), close=False):
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    out = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if body is not None:
        out.append(b"Content-Type: application/json")
        out.append(b"Content-Length: %d" % len(body))
    out += [h.encode() if isinstance(h, str) else h for h in headers]
    if close:
        out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n" + (body or b"")


def chat_req(srv, content="Say hi.", max_tokens=2, **kw):
    return {"model": srv.model_id, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, **kw}


def check_models(resp):
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    j = resp.json()
    assert j.get("object") == "list" and j.get("data"), j
    assert all(m.get("object") == "model" and m.get("id") for m in j["data"]), j
    return j


def check_chat(resp, max_tokens=2):
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    j = resp.json()
    assert j.get("object") == "chat.completion", j
    ch = j["choices"]
    assert len(ch) == 1 and ch[0]["message"]["role"] == "assistant", j
    assert isinstance(ch[0]["message"]["content"], str), j
    assert ch[0]["finish_reason"] in ("stop", "length"), j
    assert 0 < j["usage"]["completion_tokens"] <= max_tokens, j
    return j


def check_health(resp):
    assert resp.status == 200, resp


def check_framed(resp):
    """Keep-alive needs explicit framing (not close-delimited) and no Connection: close."""
    assert resp.chunked or "content-length" in resp.headers, resp.headers
    assert "close" not in resp.headers.get("connection", "").lower(), resp.headers


def sse_events(body):
    """data: payloads of an SSE body (bytes), checking the event framing."""
    text = body.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), f"SSE body does not end with [DONE]: {text[-300:]!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        assert lines, f"empty SSE event in {text[:300]!r}"
        for ln in lines:
            assert ln.startswith("data: "), f"unexpected SSE line {ln!r}"
        events.append("\n".join(ln[6:] for ln in lines))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1], events
    return events


def check_stream_chunks(events):
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks, "no chunk before [DONE]"
    assert all(c.get("object") == "chat.completion.chunk" for c in chunks), chunks
    assert len({c["id"] for c in chunks}) == 1, "chunks of one stream carry different ids"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finals) == 1, chunks
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --- 1. keep-alive ------------------------------------------------------------------

def test_keepalive_three_requests_one_connection(kolm_server):
    srv = kolm_server
    with Conn(srv.port) as c:
        c.send(request_bytes("GET", "/v1/models"))
        r1 = c.read_response()
        check_models(r1)
        check_framed(r1)
        c.assert_open()

        c.send(request_bytes("POST", CHAT, chat_req(srv)))
        r2 = c.read_response()
        check_chat(r2)
        check_framed(r2)
        c.assert_open()

        c.send(request_bytes("GET", "/health"))
        r3 = c.read_response()
        check_health(r3)
        check_framed(r3)
        c.assert_open()


# --- 2. pipelining ------------------------------------------------------------------

@pytest.mark.parametrize("order", ["models_then_chat", "chat_then_models"])
def test_pipelined_requests_answered_in_order(kolm_server, order):
    # chat_then_models: the slow request first, so an out-of-order server would
    # answer /v1/models before the completion.
    srv = kolm_server
    models = request_bytes("GET", "/v1/models")
    chat = request_bytes("POST", CHAT, chat_req(srv))
    seq = [(models, check_models), (chat, check_chat)]
    if order == "chat_then_models":
        seq.reverse()
    with Conn(srv.port) as c:
        c.send(b"".join(req for req, _ in seq))  # both requests in one write
        for _, check in seq:
            r = c.read_response()
            check(r)
            check_framed(r)
        c.send(request_bytes("GET", "/health"))
        check_health(c.read_response())
        c.assert_open()


# --- 3. a stream on a keep-alive connection, then another request -------------------

def test_stream_then_next_request_same_connection(kolm_server):
    srv = kolm_server
    with Conn(srv.port) as c:
        c.send(request_bytes("POST", CHAT, chat_req(srv, "Count to five.", max_tokens=6,
                                                    stream=True)))
        r = c.read_response()
        assert r.status == 200, r
        assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
        assert r.chunked, f"SSE response is not chunked: {r.headers}"
        assert "close" not in r.headers.get("connection", "").lower(), r.headers
        assert r.chunk_sizes[-1] == 0 and len(r.chunk_sizes) >= 3, r.chunk_sizes
        assert r.body.endswith(b"data: [DONE]\n\n"), r.body[-200:]
        events = sse_events(r.body)
        check_stream_chunks(events)

        c.send(request_bytes("POST", CHAT, chat_req(srv)))
        check_chat(c.read_response())
        c.send(request_bytes("GET", "/v1/models"))
        check_models(c.read_response())
        c.assert_open()


# --- 4. slow clients --------------------------------------------------------------------

def test_slowloris_headers_do_not_block_others(kolm_server):
    """8 connections trickle a request header a byte every 0.5 s (half of them from the
    first byte of the request line, half after a complete request line, inside a
    header value); a normal chat is answered while all of them are still mid-header,
    and each slow request, once its header is finished, is answered too."""
    srv = kolm_server
    n_slow, interval, min_trickle, max_trickle = 8, 0.5, 3.0, 7.0  # under h2o's 10 s header timeout
    prefix = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    stop = threading.Event()
    sent = [0] * n_slow
    errors = []
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(n_slow)]
    for i, s in enumerate(socks):
        if i % 2:
            s.sendall(prefix[:len(b"GET /health HTTP/1.1\r\n")])
            sent[i] = len(b"GET /health HTTP/1.1\r\n")

    def trickle(i, s, t_end):
        try:
            while not stop.is_set() and time.monotonic() < t_end:
                s.sendall(prefix[sent[i]:sent[i] + 1] if sent[i] < len(prefix) else b"a")
                sent[i] += 1
                stop.wait(interval)
        except OSError as e:
            errors.append(f"slow connection {i}: {e!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=trickle, args=(i, s, started + max_trickle), daemon=True)
               for i, s in enumerate(socks)]
    base = list(sent)
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while min(a - b for a, b in zip(sent, base)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(a - b for a, b in zip(sent, base)) >= 3, f"slow connections did not get going: {sent}"

        t0 = time.monotonic()
        with Conn(srv.port, timeout=20) as c:
            c.send(request_bytes("POST", CHAT, chat_req(srv)))
            r = c.read_response()
        elapsed = time.monotonic() - t0
        check_chat(r)
        still_trickling = [t.is_alive() for t in threads]
        assert not errors, errors
        # The answer came while every slow client was still mid-header.
        assert all(still_trickling), (f"the chat took {elapsed:.1f}s: a slow client had stopped "
                                      f"trickling before the answer: {still_trickling}")

        while time.monotonic() - started < min_trickle:  # keep trickling a little longer
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        # Finish each header: every slow request is answered.
        for i, s in enumerate(socks):
            s.sendall(prefix[sent[i]:] + b"\r\nConnection: close\r\n\r\n")
            c = Conn.__new__(Conn)
            c.sock, c.buf, c.timeout = s, b"", 10
            r = c.read_response()
            assert r.status == 200, f"slow connection {i} ({sent[i]} bytes one by one): {r}"
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()
    srv.assert_serving()


def test_slow_body_in_pieces(kolm_server):
    srv = kolm_server
    req = chat_req(srv, "Name three colors.", max_tokens=4)
    body = json.dumps(req).encode()
    with Conn(srv.port) as c:
        c.send(request_bytes("POST", CHAT, body))
        want = check_chat(c.read_response(), 4)

        head, _, _ = request_bytes("POST", CHAT, body).partition(b"\r\n\r\n")
        c.send(head + b"\r\n\r\n")
        step = max(1, len(body) // 8)
        pieces = [body[i:i + step] for i in range(0, len(body), step)]
        assert len(pieces) >= 6
        for p in pieces[:-1]:
            c.send(p)
            time.sleep(0.3)
            # nothing may be answered before the announced body is complete
            r, _, _ = select.select([c.sock], [], [], 0)
            assert not r, f"the server answered before the body was complete: " \
                          f"{c.sock.recv(300, socket.MSG_PEEK)!r}"
        c.send(pieces[-1])
        got = check_chat(c.read_response(), 4)
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
        assert got["usage"] == want["usage"], (got["usage"], want["usage"])
        c.send(request_bytes("GET", "/health"))
        check_health(c.read_response())
        c.assert_open()


# --- 5. invalid UTF-8 in a JSON string ----------------------------------------------------

@pytest.mark.parametrize("bad", [b"\xff\xfe", b"ab\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80",
                                 b"\xf4\x90\x80\x80", b"\x80x"],
                         ids=["ff-fe", "truncated-3byte", "overlong", "surrogate", "above-10ffff",
                              "lone-continuation"])
def test_invalid_utf8_in_json_string_is_400(kolm_server, bad):
    srv = kolm_server
    body = (b'{"model":' + json.dumps(srv.model_id).encode() +
            b',"messages":[{"role":"user","content":"' + bad + b'"}],"max_tokens":2}')
    with Conn(srv.port) as c:
        c.send(request_bytes("POST", CHAT, body))
        r = c.read_response()
        err = assert_openai_error(r.status, r.headers, r.body, 400)
        assert err["type"] == "invalid_request_error", err
        # the error body itself is valid UTF-8 JSON (json.loads above decoded it)
        r.body.decode("utf-8")
        # keeps serving: on the same connection (if it stayed open) and on a new one
        if "close" not in r.headers.get("connection", "").lower():
            c.send(request_bytes("POST", CHAT, chat_req(srv)))
            check_chat(c.read_response())
    srv.assert_serving()


# --- 6. HTTP/2 with prior knowledge (curl) -----------------------------------------------------

CURL = shutil.which("curl")


def curl(args, timeout=90):
    assert CURL, "curl not installed (deploy/setup.sh installs it)"
    r = subprocess.run([CURL, "-sS", "--max-time", str(timeout - 10), *args],
                       capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r


def test_http2_bad_json_is_400(kolm_server, tmp_path):
    out, hdr = tmp_path / "body", tmp_path / "headers"
    r = curl(["--http2-prior-knowledge", "-o", str(out), "-D", str(hdr),
              "-w", "%{http_version} %{http_code}", "-H", "content-type: application/json",
              "--data-binary", '{"model": "x", "messages": [', f"http://127.0.0.1:{kolm_server.port}{CHAT}"])
    assert r.stdout.decode() == "2 400", r.stdout
    head = hdr.read_bytes().decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/2 400"), head
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:] if ln)}
    err = assert_openai_error(400, headers, out.read_bytes(), 400)
    assert err["type"] == "invalid_request_error", err
    kolm_server.assert_serving()


def test_http2_models(kolm_server):
    r = curl(["--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
              f"http://127.0.0.1:{kolm_server.port}/v1/models"])
    body, _, tail = r.stdout.decode().rpartition("\n")
    assert tail == "2 200", tail
    j = json.loads(body)
    assert j["object"] == "list" and j["data"][0]["id"] == kolm_server.model_id, j


def test_http2_two_concurrent_streams_one_connection_curl(kolm_server, tmp_path):
    """curl --parallel: GET /v1/models, then two streamed chats multiplexed on the same
    HTTP/2 connection. The connection is h2c by Upgrade (--http2), not prior knowledge:
    Debian 12's curl 7.88.1 fails every reuse of a prior-knowledge connection with
    "(16) Error in the HTTP2 framing layer" before sending anything (curl bug
    curl/curl#10634, fixed in 8.0.0). Prior knowledge with two concurrent streams is
    covered by test_http2_prior_knowledge_two_concurrent_streams (a raw client)."""
    srv = kolm_server
    base = f"http://127.0.0.1:{srv.port}"
    fmt = "%{http_version} %{http_code} %{local_port} %{num_connects} %{url_effective}\n"
    args = ["--parallel", "--parallel-max", "3",
            "--http2", "-o", str(tmp_path / "models"), "-w", fmt, f"{base}/v1/models"]
    outs = []
    for i, prompt in enumerate(["Count to ten.", "Name some fruits."]):
        body = tmp_path / f"req{i}.json"
        body.write_text(json.dumps(chat_req(srv, prompt, max_tokens=8, stream=True)))
        out = tmp_path / f"out{i}"
        outs.append(out)
        args += ["--next", "--http2", "-N", "-o", str(out), "-w", fmt,
                 "-H", "content-type: application/json", "--data-binary", f"@{body}",
                 f"{base}{CHAT}?n={i}"]
    r = curl(args)
    stats = [ln.split() for ln in r.stdout.decode().splitlines()]
    assert len(stats) == 3 and all(len(st) == 5 for st in stats), r.stdout
    for st in stats:
        assert st[:2] == ["2", "200"], stats
    assert len({st[2] for st in stats}) == 1, f"transfers used different connections: {stats}"
    assert sum(int(st[3]) for st in stats) == 1, f"more than one connection was opened: {stats}"
    check_models(Response("HTTP/2", 200, "", {"content-type": "application/json"},
                          (tmp_path / "models").read_bytes(), False, []))
    ids = set()
    for out in outs:
        events = sse_events(out.read_bytes())
        check_stream_chunks(events)
        ids.add(json.loads(events[0])["id"])
    assert len(ids) == 2, "the two streams carry the same completion id"


# A minimal HTTP/2 client (prior knowledge, RFC 9113) for what curl 7.88 cannot do.

H2_DATA, H2_HEADERS, H2_RST, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_WINDOW, H2_CONT = 0, 1, 3, 4, 6, 7, 8, 9
H2_END_STREAM, H2_END_HEADERS, H2_PADDED, H2_PRIORITY = 0x1, 0x4, 0x8, 0x20
HPACK_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}  # RFC 7541 App. A
HUFF_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4",
               "011011": "5", "011100": "6", "011101": "7", "011110": "8", "011111": "9"}


def h2_frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def hpack_read_int(buf, pos, prefix_bits):
    limit = (1 << prefix_bits) - 1
    value, pos = buf[pos] & limit, pos + 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value += (b & 127) << shift
        shift += 7
        if not b & 128:
            return value, pos


def h2_status(block):
    """:status from a response header block: h2o sends it first, as a static-table index
    or as a literal with the :status name index (value plain or Huffman digits)."""
    b0 = block[0]
    if b0 & 0x80:
        idx, _ = hpack_read_int(block, 0, 7)
        assert idx in HPACK_STATUS, f"first header field is index {idx}, not :status"
        return HPACK_STATUS[idx]
    prefix = 6 if b0 & 0x40 else 4
    idx, pos = hpack_read_int(block, 0, prefix)
    assert 8 <= idx <= 14, f"first header field (name index {idx}) is not :status: {block[:40]!r}"
    huff = block[pos] & 0x80
    n, pos = hpack_read_int(block, pos, 7)
    raw = block[pos:pos + n]
    if not huff:
        return int(raw.decode())
    bits, out, code = "".join(f"{x:08b}" for x in raw), "", ""
    for bit in bits:
        code += bit
        if code in HUFF_DIGITS:
            out, code = out + HUFF_DIGITS[code], ""
    assert len(out) == 3 and set(code) <= {"1"}, f"cannot decode :status {raw!r}"
    return int(out)


def h2_exchange(port, requests, timeout=IO_TIMEOUT):
    """Send requests [(method, path, body bytes or None), ...] as streams 1, 3, 5, ... on
    one prior-knowledge connection, all before reading anything. Returns
    ({stream: {"status", "body", "ended"}}, [(stream, frame type, flags, length), ...])."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", h2_frame(H2_SETTINGS, 0, 0)]
        streams = {}
        for k, (method, path, body) in enumerate(requests):
            sid = 2 * k + 1
            block = b"".join(hpack_literal(n, v) for n, v in [
                (":method", method), (":scheme", "http"), (":path", path),
                (":authority", f"127.0.0.1:{port}")] + ([("content-type", "application/json"),
                                                        ("content-length", str(len(body)))]
                                                       if body is not None else []))
            out.append(h2_frame(H2_HEADERS, H2_END_HEADERS | (0 if body is not None else H2_END_STREAM),
                                sid, block))
            if body is not None:
                out.append(h2_frame(H2_DATA, H2_END_STREAM, sid, body))
            streams[sid] = {"status": None, "body": b"", "ended": False, "block": b""}
        s.sendall(b"".join(out))
        buf, log = b"", []
        deadline = time.monotonic() + timeout

        def need(n):
            nonlocal buf
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"HTTP/2: streams not complete within {timeout:.0f}s: {log[-20:]}",
                                pytrace=False)
                s.settimeout(left)
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    pytest.fail(f"HTTP/2: the server closed the connection; frames: {log[-20:]}",
                                pytrace=False)
                buf += d

        while not all(st["ended"] for st in streams.values()):
            need(9)
            n = int.from_bytes(buf[:3], "big")
            ftype, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            need(9 + n)
            payload, buf = buf[9:9 + n], buf[9 + n:]
            log.append((sid, ftype, flags, n))
            if ftype == H2_SETTINGS and not flags & 1:
                s.sendall(h2_frame(H2_SETTINGS, 1, 0))
            elif ftype == H2_PING and not flags & 1:
                s.sendall(h2_frame(H2_PING, 1, 0, payload))
            elif ftype == H2_GOAWAY:
                pytest.fail(f"HTTP/2 GOAWAY {payload[4:8].hex()} {payload[8:]!r}; frames: {log}",
                            pytrace=False)
            elif ftype == H2_RST:
                pytest.fail(f"HTTP/2 RST_STREAM on stream {sid} (error {payload.hex()}); "
                            f"frames: {log}", pytrace=False)
            elif ftype in (H2_HEADERS, H2_CONT, H2_DATA):
                assert sid in streams, f"frame on unknown stream {sid}: {log}"
                st = streams[sid]
                if flags & H2_PADDED and ftype != H2_CONT:
                    payload = payload[1:len(payload) - payload[0]]
                if ftype == H2_HEADERS and flags & H2_PRIORITY:
                    payload = payload[5:]
                if ftype == H2_DATA:
                    assert st["status"] is not None, f"DATA before HEADERS on stream {sid}"
                    st["body"] += payload
                    if n:  # give the flow-control credit back
                        s.sendall(h2_frame(H2_WINDOW, 0, 0, n.to_bytes(4, "big")) +
                                  h2_frame(H2_WINDOW, 0, sid, n.to_bytes(4, "big")))
                else:
                    st["block"] += payload
                    if flags & H2_END_HEADERS and st["status"] is None:
                        st["status"] = h2_status(st["block"])
                if flags & H2_END_STREAM and ftype != H2_CONT:
                    st["ended"] = True
        return streams, log
    finally:
        s.close()


def test_http2_prior_knowledge_two_concurrent_streams(kolm_server):
    srv = kolm_server
    bodies = [json.dumps(chat_req(srv, p, max_tokens=12, stream=True)).encode()
              for p in ("Count to ten.", "Name some fruits.")]
    # streams 1 and 3: the chats; 5: GET /v1/models; 7: bad JSON (its error must not
    # disturb the other streams on the connection)
    streams, log = h2_exchange(srv.port, [("POST", CHAT, b) for b in bodies] +
                               [("GET", "/v1/models", None), ("POST", CHAT, b'{"model": [')])
    ids = set()
    for sid in (1, 3):
        st = streams[sid]
        assert st["status"] == 200, (sid, st)
        events = sse_events(st["body"])
        check_stream_chunks(events)
        ids.add(json.loads(events[0])["id"])
    assert len(ids) == 2, "the two streams carry the same completion id"
    assert streams[5]["status"] == 200
    check_models(Response("HTTP/2", 200, "", {"content-type": "application/json"},
                          streams[5]["body"], False, []))
    # (response header values are Huffman-coded and not decoded here; the content-type of
    # an HTTP/2 error is checked by test_http2_bad_json_is_400)
    assert streams[7]["status"] == 400, streams[7]
    err = assert_openai_error(400, {"content-type": "application/json"}, streams[7]["body"], 400)
    assert err["type"] == "invalid_request_error", err
    # Both streams were open at once: each got its response headers before the other ended.
    order = [(sid, t, f) for sid, t, f, _ in log if sid in (1, 3)]
    head_at = {sid: next(i for i, (s_, t, _) in enumerate(order) if s_ == sid and t == H2_HEADERS)
               for sid in (1, 3)}
    end_at = {sid: next(i for i, (s_, t, f) in enumerate(order)
                        if s_ == sid and f & H2_END_STREAM and t != H2_CONT) for sid in (1, 3)}
    assert head_at[1] < end_at[3] and head_at[3] < end_at[1], f"streams were serialized: {order}"
    srv.assert_serving()


# --- 7. chunked request body ------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1 << 20, 7, 1], ids=["one-chunk", "7-byte-chunks", "1-byte-chunks"])
def test_chunked_request_body(kolm_server, chunk):
    srv = kolm_server
    body = json.dumps(chat_req(srv, "Name three colors.", max_tokens=3)).encode()
    with Conn(srv.port) as c:
        c.send(request_bytes("POST", CHAT, body))
        want = check_chat(c.read_response(), 3)
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        c.send(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + framed)
        got = check_chat(c.read_response(), 3)
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
        c.send(request_bytes("GET", "/health"))
        check_health(c.read_response())
        c.assert_open()


# --- 8. Expect: 100-continue ---------------------------------------------------------------------

def test_expect_100_continue(kolm_server):
    srv = kolm_server
    body = json.dumps(chat_req(srv)).encode()
    head, _, _ = request_bytes("POST", CHAT, body, headers=["Expect: 100-continue"]).partition(b"\r\n\r\n")
    with Conn(srv.port) as c:
        c.send(head + b"\r\n\r\n")
        r, _, _ = select.select([c.sock], [], [], 3.0)
        if r:  # the server spoke before the body: it must be 100 Continue
            interim = c.read_response(skip_informational=False, timeout=5)
            assert interim.status == 100, f"answered {interim.status} before the body: {interim}"
            assert interim.body == b"" and c.buf == b"", (interim, c.buf)
        # (no 100 within 3 s: a client then sends the body anyway, RFC 9110 10.1.1)
        c.send(body)
        final = c.read_response(skip_informational=False)
        check_chat(final)
        check_framed(final)
        c.send(request_bytes("GET", "/health"))
        check_health(c.read_response())
        c.assert_open()


def test_keeps_serving_at_the_end(kolm_server):
    kolm_server.assert_serving()
