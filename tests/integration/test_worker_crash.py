"""Process supervision: a worker killed mid-request fails its jobs (an SSE error or a
broken stream after headers, a 503 before them), the gateway stays up, reaps the dead
worker, starts a new one, and serves the next request. SIGTERM stops the gateway and
its workers."""

import os
import signal
import threading
import time

import openai
import pytest

from conftest import make_client, proc_state

LONG_PROMPT = "Count from 1 to 1000."  # the base model rambles well past 64 tokens


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)


def the_worker(srv):
    pids = wait_for(srv.worker_pids, 30, "a worker process")
    assert len(pids) == 1, f"--workers 1 but the gateway has children {pids}"
    return pids[0]


def recover(srv, client, model, dead_pid):
    """After a worker died: gateway alive, /health 200, dead worker reaped, a new
    worker, and a request that succeeds (503 only while the worker restarts)."""
    assert srv.alive(), f"the gateway died with the worker\n{srv.log_tail()}"

    def health_ok():
        try:
            return srv.request("GET", "/health", timeout=5)[0] == 200
        except OSError:
            return False

    wait_for(health_ok, 60, "/health 200 after the worker crash")
    wait_for(lambda: not (proc_state(dead_pid) == "Z"), 30, f"worker {dead_pid} to be reaped")
    new = wait_for(lambda: [p for p in srv.worker_pids() if p != dead_pid], 60,
                   "a replacement worker")
    assert dead_pid not in srv.worker_pids()
    assert len(new) == 1, new

    deadline = time.monotonic() + 60
    while True:
        try:
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=4, temperature=0)
            break
        except openai.APIStatusError as e:
            if e.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens > 0
    assert srv.alive()


def test_worker_sigkill_mid_stream(kolm_server_factory):
    srv = kolm_server_factory()
    client = make_client(srv, timeout=60)
    model = srv.model_id
    pid = the_worker(srv)

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=2000, temperature=0, stream=True)
    killed_after, finished, text = None, False, ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
                if ch.finish_reason is not None:
                    finished = True
            if text and killed_after is None:
                os.kill(pid, signal.SIGKILL)
                killed_after = len(text)
        pytest.fail(f"the stream ended without an error (finish_reason seen: {finished}, "
                    f"killed after {killed_after} chars, got {len(text)} chars)", pytrace=False)
    assert killed_after is not None, "the stream errored before any text arrived"
    assert not finished, "a finish_reason was sent although the worker was killed"
    print(f"client saw {type(ei.value).__name__}: {ei.value}")
    recover(srv, client, model, pid)


def test_worker_sigkill_before_headers_is_503(kolm_server_factory):
    """A non-streaming request in flight when its worker dies gets an OpenAI-shaped 503."""
    srv = kolm_server_factory()
    client = make_client(srv, timeout=120)
    model = srv.model_id
    pid = the_worker(srv)

    box = {}

    def call():
        try:
            box["resp"] = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": LONG_PROMPT}],
                max_tokens=2000, temperature=0)
        except Exception as e:  # noqa: BLE001 - examined below
            box["err"] = e

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.5)  # the job is in the worker by now (2000 tokens take far longer)
    os.kill(pid, signal.SIGKILL)
    t.join(120)
    assert not t.is_alive(), "the request hung after its worker died"
    assert "resp" not in box, "the request succeeded although its worker was killed"
    e = box["err"]
    assert isinstance(e, openai.APIStatusError), f"expected an HTTP error, got {e!r}"
    assert e.status_code == 503, (e.status_code, e.body)
    assert isinstance(e.body, dict) and isinstance(e.body.get("message"), str), e.body
    assert "type" in e.body and "code" in e.body and "param" in e.body, e.body
    recover(srv, client, model, pid)


def test_sigterm_stops_gateway_and_workers(kolm_server_factory):
    srv = kolm_server_factory()
    workers = wait_for(srv.worker_pids, 30, "a worker process")
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(15)
    except Exception:  # noqa: BLE001
        pytest.fail(f"kolm serve still running 15s after SIGTERM\n{srv.log_tail()}",
                    pytrace=False)
    wait_for(lambda: all(proc_state(p) in (None, "Z") for p in workers), 15,
             f"workers {workers} to exit after the gateway's SIGTERM")
