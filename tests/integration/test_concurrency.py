"""Continuous batching must not change results: 8 streamed requests sent at once at
temperature 0 return exactly what the same requests return one at a time."""

import threading
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Tell me a short story about a robot.",
    "Who wrote Romeo and Juliet?",
    "Describe the city of Paris.",
    "def fibonacci(n):",
    "Name the planets of the solar system.",
]
MAX_TOKENS = 24


def run_stream(client, model, prompt, barrier=None):
    if barrier is not None:
        barrier.wait(timeout=60)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS, temperature=0, stream=True)
    text, finish = [], []
    for chunk in stream:
        for ch in chunk.choices:
            if ch.delta.content:
                text.append(ch.delta.content)
            if ch.finish_reason is not None:
                finish.append(ch.finish_reason)
    return "".join(text), finish


def test_concurrent_streams_equal_sequential(openai_client, model_id):
    sequential = [run_stream(openai_client, model_id, p) for p in PROMPTS]
    for (text, finish), p in zip(sequential, PROMPTS):
        assert text, f"empty completion for {p!r}"
        assert len(finish) == 1, f"{p!r}: finish_reason seen {finish}"

    barrier = threading.Barrier(len(PROMPTS))
    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        futs = [ex.submit(run_stream, openai_client, model_id, p, barrier) for p in PROMPTS]
        concurrent = [f.result(timeout=600) for f in futs]

    diffs = [f"  {p!r}:\n    one at a time: {s!r}\n    concurrent:    {c!r}"
             for p, s, c in zip(PROMPTS, sequential, concurrent) if s != c]
    assert not diffs, "concurrent results differ from sequential ones:\n" + "\n".join(diffs)
