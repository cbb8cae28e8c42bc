"""The wire, checked by the official `openai` SDK against the real `kolm serve`:
object shapes of chat completions (plain and streamed), streamed text equal to the
non-streamed text at temperature 0, /v1/models, and the unknown-model error."""

import json
import subprocess
import time

import openai
import pytest

PROMPT = "Write a haiku about the sea."
MAX_TOKENS = 24


def create(client, model, stream=False, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, temperature=0, stream=stream, **kw)


def check_usage(usage, finish_reason):
    assert usage is not None, "usage missing"
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish_reason == "length":
        assert usage.completion_tokens == MAX_TOKENS


def test_chat_completion_shape(openai_client, model_id):
    t0 = int(time.time())
    r = create(openai_client, model_id)
    assert isinstance(r.id, str) and r.id.startswith("chatcmpl-"), r.id
    assert r.object == "chat.completion"
    assert isinstance(r.created, int) and abs(r.created - t0) < 120, r.created
    assert r.model == model_id
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip(), repr(c.message.content)
    assert c.finish_reason in {"stop", "length"}
    check_usage(r.usage, c.finish_reason)


def test_stream_matches_non_stream(openai_client, model_id):
    full = create(openai_client, model_id)
    text = full.choices[0].message.content

    chunks = list(create(openai_client, model_id, stream=True))
    assert chunks, "no chunks"
    assert len({c.id for c in chunks}) == 1, "chunk ids differ"
    assert chunks[0].id.startswith("chatcmpl-")
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == model_id
        assert isinstance(c.created, int)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices, "no chunk has choices"
    first = with_choices[0].choices[0]
    assert first.index == 0
    assert first.delta.role == "assistant", f"first delta has no role: {first.delta!r}"

    finishes = [(i, c.choices[0].finish_reason) for i, c in enumerate(with_choices)
                if c.choices[0].finish_reason is not None]
    assert len(finishes) == 1, f"finish_reason appears {len(finishes)} times: {finishes}"
    idx, reason = finishes[0]
    assert idx == len(with_choices) - 1, "finish_reason is not on the last chunk with choices"
    assert reason == full.choices[0].finish_reason

    streamed = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert streamed == text, f"streamed {streamed!r} != non-streamed {text!r}"


def test_stream_raw_sse_framing(kolm_server):
    """The bytes on the wire: text/event-stream, `data: {json}` events separated by a
    blank line, and `data: [DONE]` last."""
    req = {"model": kolm_server.model_id, "stream": True, "max_tokens": 8, "temperature": 0,
           "messages": [{"role": "user", "content": PROMPT}]}
    status, headers, body = kolm_server.request("POST", "/v1/chat/completions", req)
    assert status == 200, body[:500]
    assert headers.get("content-type", "").startswith("text/event-stream"), headers
    events = body.decode("utf-8").replace("\r\n", "\n").split("\n\n")
    assert events[-1] == "", f"stream does not end with a blank line: {body[-100:]!r}"
    events = events[:-1]
    assert events and events[-1] == "data: [DONE]", f"last event {events[-1:]!r}"
    for ev in events[:-1]:
        assert ev.startswith("data: "), f"bad event {ev!r}"
        obj = json.loads(ev[len("data: "):])
        assert obj["object"] == "chat.completion.chunk"


def test_models_list(openai_client, model_id, kolm_model):
    models = list(openai_client.models.list())
    ids = [m.id for m in models]
    assert model_id in ids
    for m in models:
        assert m.object == "model"
        assert isinstance(m.id, str) and m.id
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str)


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.chat.completions.create(
            model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}],
            max_tokens=4)
    e = ei.value
    assert e.status_code == 404
    assert e.code == "model_not_found", e.body
    assert isinstance(e.body, dict) and isinstance(e.body.get("message"), str), e.body
    assert isinstance(e.body.get("type"), str), e.body


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_over_context_window_is_400(openai_client, model_id, stream):
    # ~12k tokens against the default 8192-token window; a stream fails before headers.
    with pytest.raises(openai.BadRequestError) as ei:
        r = openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hello " * 12000}],
            max_tokens=4, stream=stream)
        if stream:
            list(r)
    e = ei.value
    assert e.status_code == 400
    assert e.code == "context_length_exceeded", e.body
    assert e.body.get("param") == "messages", e.body
    assert "maximum context length is 8192 tokens" in e.body.get("message", ""), e.body


def test_max_tokens_past_context_window_is_400(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    assert ei.value.code == "context_length_exceeded", ei.value.body


def test_seed_makes_sampling_repeatable(openai_client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Tell me a story."}],
              max_tokens=16, temperature=1.0, top_p=0.95, seed=1234)
    a = openai_client.chat.completions.create(**kw).choices[0].message.content
    b = openai_client.chat.completions.create(**kw).choices[0].message.content
    assert a == b and a


def test_http2_prior_knowledge_stream(kolm_server, model_id):
    # HTTP/2 over cleartext with prior knowledge (h2o), driven by curl.
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 4, "temperature": 0, "stream": True})
    r = subprocess.run(["curl", "-sS", "-N", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                        "-H", "content-type: application/json", "--data-binary", body,
                        f"http://127.0.0.1:{kolm_server.port}/v1/chat/completions"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, _, tail = r.stdout.rpartition("\n")
    assert tail == "2 200", tail
    events = [line[6:] for line in out.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1


def test_tool_call_history(openai_client, model_id):
    """An assistant turn with tool_calls (content null) and the tool results that
    answer it are accepted and rendered; a result for an unknown call is a 400."""
    history = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "What is the weather in Paris and in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "22C, cloudy"},
    ]
    r = openai_client.chat.completions.create(model=model_id, messages=history, max_tokens=4,
                                              temperature=0)
    assert r.choices[0].message.role == "assistant"
    # The template put the calls and results in the prompt: far longer than the text alone.
    bare = openai_client.chat.completions.create(
        model=model_id, messages=history[:2], max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 30
    bad = history[:3] + [{"role": "tool", "tool_call_id": "call_zzz", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=bad, max_tokens=1)
    assert e.value.body["param"] == "messages[3].tool_call_id"
