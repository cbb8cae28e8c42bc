"""The OpenAI request fields beyond the basics, through the official `openai` SDK (and
raw HTTP where the SDK hides the wire) against the real `kolm serve`: n choices,
seeds, logprobs / top_logprobs, top_k / top_p / min_p, logit_bias, presence / frequency penalties, stop strings
split across tokens, prefix-cache cached_tokens, include_usage ordering, the legacy
POST /v1/completions, and a client disconnect freeing the worker (GET /metrics).

The default model is a small base model, so the checks are about the mechanics (what
must equal what, what must follow from the raw logprobs), never about the text."""

import json
import math
import re
import socket
import time
import uuid

import openai
import pytest

PROMPT = "Write a haiku about the sea."
REPEAT_PROMPT = "one one one one one one one one"
FORCED_ID = 1000          # any ordinary vocabulary id; logit_bias +100 forces it
CHAT = "/v1/chat/completions"


def msgs(content=PROMPT):
    return [{"role": "user", "content": content}]


def chat(client, model, content=PROMPT, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=msgs(content), **kw)


def collect_chat_stream(stream):
    """SDK chunks -> (chunks, {index: text}, {index: [finish_reasons]},
    {index: [logprob entries as dicts]})."""
    chunks = list(stream)
    text, fins, lps = {}, {}, {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] = text.get(ch.index, "") + (ch.delta.content or "")
            fins.setdefault(ch.index, [])
            if ch.finish_reason is not None:
                fins[ch.index].append(ch.finish_reason)
            if ch.logprobs is not None and ch.logprobs.content:
                lps.setdefault(ch.index, []).extend(e.to_dict() for e in ch.logprobs.content)
    return chunks, text, fins, lps


def lp_dicts(choice):
    return [e.to_dict() for e in choice.logprobs.content]


def assert_logprobs_close(got, want, tol=1e-4):
    """Two lists of chat logprob entries: same tokens and bytes, logprobs within tol."""
    assert [e["token"] for e in got] == [e["token"] for e in want]
    for g, w in zip(got, want):
        assert g["bytes"] == w["bytes"]
        assert g["logprob"] == pytest.approx(w["logprob"], abs=tol)
        assert [t["token"] for t in g["top_logprobs"]] == [t["token"] for t in w["top_logprobs"]]
        for gt, wt in zip(g["top_logprobs"], w["top_logprobs"]):
            assert gt["logprob"] == pytest.approx(wt["logprob"], abs=tol)


def sse_events(raw):
    """`data:` payloads of an SSE body, in order (comment lines ignored)."""
    out = []
    for block in raw.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        for ln in block.split("\n"):
            if ln.startswith("data:"):
                out.append(ln[len("data:"):].removeprefix(" "))
    return out


# --- n choices and seeds ------------------------------------------------------------------

def test_n3_greedy_choices_identical_and_usage_summed(openai_client, model_id):
    r = chat(openai_client, model_id, n=3, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert texts[0] and texts == [texts[0]] * 3, texts
    assert [c.finish_reason for c in r.choices] == ["length"] * 3
    assert all(c.message.role == "assistant" for c in r.choices)
    one = chat(openai_client, model_id, n=1, max_tokens=8)
    assert one.choices[0].message.content == texts[0]
    # the prompt is counted once, completion tokens summed over the choices
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_n3_seeded_sampling_repeats_and_choices_differ(openai_client, model_id):
    kw = dict(n=3, max_tokens=16, temperature=1.0, seed=7)
    a = [c.message.content for c in chat(openai_client, model_id, **kw).choices]
    b = [c.message.content for c in chat(openai_client, model_id, **kw).choices]
    assert a == b, "the same request with the same seed did not repeat"
    assert len(set(a)) >= 2, f"3 sampled choices at temperature 1 are all equal: {a}"
    # choice c samples from seed + c: choice 1 of seed 7 is choice 0 of seed 8
    c = chat(openai_client, model_id, n=1, max_tokens=16, temperature=1.0, seed=8)
    assert c.choices[0].message.content == a[1]
    d = [x.message.content for x in chat(openai_client, model_id, **dict(kw, seed=8)).choices]
    assert d[:2] == a[1:], "choices of seed 8 are not those of seed 7 shifted by one"


def test_n2_stream_equals_non_stream(openai_client, model_id):
    kw = dict(n=2, max_tokens=8, temperature=1.0, seed=11)
    full = chat(openai_client, model_id, **kw)
    chunks, text, fins, _ = collect_chat_stream(chat(
        openai_client, model_id, stream=True, stream_options={"include_usage": True}, **kw))
    assert sorted(text) == [0, 1]
    assert [text[i] for i in (0, 1)] == [c.message.content for c in full.choices]
    for i in (0, 1):
        assert fins[i] == [full.choices[i].finish_reason], f"choice {i}: {fins[i]}"
    # the stream opens with one role chunk per choice, in index order
    for i in (0, 1):
        first = chunks[i].choices
        assert len(first) == 1 and first[0].index == i and first[0].delta.role == "assistant"
    # finish_reason on each choice's last chunk
    last_of = {}
    for k, c in enumerate(chunks):
        for ch in c.choices:
            last_of[ch.index] = (k, ch)
    for i, (_, ch) in last_of.items():
        assert ch.finish_reason is not None, f"choice {i}: last chunk has no finish_reason"
    # usage last, with choices == [], equal to the non-streamed usage
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    u, fu = chunks[-1].usage, full.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        fu.prompt_tokens, fu.completion_tokens, fu.total_tokens)
    assert fu.completion_tokens == 16


def test_sdk_stream_helper_final_completion(openai_client, model_id):
    full = chat(openai_client, model_id, max_tokens=8)
    deltas, done = [], []
    with openai_client.chat.completions.stream(
            model=model_id, messages=msgs(), max_tokens=8, temperature=0,
            stream_options={"include_usage": True}) as st:
        for ev in st:
            if ev.type == "content.delta":
                deltas.append(ev.delta)
            elif ev.type == "content.done":
                done.append(ev.content)
        try:
            final = st.get_final_completion()
        except openai.LengthFinishReasonError as e:  # the SDK's reaction to "length"
            final = e.completion
    want = full.choices[0].message.content
    assert "".join(deltas) == want
    assert done == [want]
    assert final.choices[0].message.content == want
    assert final.choices[0].finish_reason == full.choices[0].finish_reason == "length"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (
        full.usage.prompt_tokens, full.usage.completion_tokens)


# --- logprobs -------------------------------------------------------------------------------

def check_greedy_logprobs(content, text, top_n):
    assert "".join(e["token"] for e in content) == text
    for k, e in enumerate(content):
        assert bytes(e["bytes"]).decode("utf-8") == e["token"], f"entry {k}: {e}"
        assert e["logprob"] <= 0, f"entry {k}: {e}"
        tops = e["top_logprobs"]
        assert len(tops) == top_n, f"entry {k}: {len(tops)} top_logprobs"
        if not top_n:
            continue
        vals = [t["logprob"] for t in tops]
        assert vals == sorted(vals, reverse=True), f"entry {k}: not sorted: {vals}"
        assert all(v <= 0 for v in vals)
        assert sum(math.exp(v) for v in vals) <= 1 + 1e-4
        assert len({t["token"] for t in tops}) == top_n, f"entry {k}: repeated alternatives"
        for t in tops:
            assert bytes(t["bytes"]).decode("utf-8") == t["token"]
        # greedy: the sampled token is the most likely one
        assert e["token"] == tops[0]["token"], f"entry {k}: {e['token']!r} vs {tops[0]}"
        assert e["logprob"] == tops[0]["logprob"]


def test_logprobs_greedy(openai_client, model_id):
    r = chat(openai_client, model_id, max_tokens=8, logprobs=True, top_logprobs=5)
    c = r.choices[0]
    assert c.finish_reason == "length"
    assert c.logprobs.refusal is None
    content = lp_dicts(c)
    assert len(content) == r.usage.completion_tokens == 8
    check_greedy_logprobs(content, c.message.content, 5)

    # top_logprobs=0: the sampled tokens only
    r0 = chat(openai_client, model_id, max_tokens=8, logprobs=True, top_logprobs=0)
    c0 = lp_dicts(r0.choices[0])
    check_greedy_logprobs(c0, r0.choices[0].message.content, 0)
    assert [e["token"] for e in c0] == [e["token"] for e in content]
    assert [e["logprob"] for e in c0] == pytest.approx([e["logprob"] for e in content], abs=1e-4)

    # logprobs off: null
    assert chat(openai_client, model_id, max_tokens=2).choices[0].logprobs is None

    # streamed: each delta carries its tokens' logprobs; together the same list
    chunks, text, _, lps = collect_chat_stream(chat(
        openai_client, model_id, max_tokens=8, logprobs=True, top_logprobs=5, stream=True))
    assert text[0] == c.message.content
    assert_logprobs_close(lps[0], content)
    for ch in chunks:
        for x in ch.choices:
            if x.delta.content:
                assert x.logprobs is not None
                assert "".join(e.token for e in x.logprobs.content) == x.delta.content


def test_logprobs_with_n2_sampling(openai_client, model_id):
    """Sampled (not greedy) tokens: each choice's token is among the raw distribution's
    tokens and carries its own logprob; the top list is the same for all choices at the
    first position (same prompt)."""
    r = chat(openai_client, model_id, n=2, max_tokens=6, temperature=1.0, seed=5,
             logprobs=True, top_logprobs=20)
    firsts = []
    for c in r.choices:
        content = lp_dicts(c)
        assert len(content) == 6
        assert "".join(e["token"] for e in content) == c.message.content
        for e in content:
            tops = {t["token"]: t["logprob"] for t in e["top_logprobs"]}
            if e["token"] in tops:
                assert e["logprob"] == pytest.approx(tops[e["token"]], abs=1e-6)
            else:
                assert e["logprob"] <= min(tops.values()) + 1e-6
        firsts.append([(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]])
    assert firsts[0] == firsts[1]
    # the logprobs are taken before temperature: the first position's list is the
    # greedy request's
    g = chat(openai_client, model_id, max_tokens=1, logprobs=True, top_logprobs=20)
    gl = [(t["token"], t["logprob"]) for t in lp_dicts(g.choices[0])[0]["top_logprobs"]]
    assert [t for t, _ in firsts[0]] == [t for t, _ in gl]
    assert [v for _, v in firsts[0]] == pytest.approx([v for _, v in gl], abs=1e-4)


EOS_ID = 1  # Gemma's <eos>; +100 makes it the first token, so the completion is empty


def test_logprobs_present_for_empty_completion(openai_client, model_id):
    r = chat(openai_client, model_id, max_tokens=4, logprobs=True, top_logprobs=2,
             logit_bias={str(EOS_ID): 100})
    c = r.choices[0]
    assert c.message.content == "" and c.finish_reason == "stop"
    legacy = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=4,
                                              temperature=0, logprobs=1,
                                              logit_bias={str(EOS_ID): 100})
    lc = legacy.choices[0]
    assert lc.text == "" and lc.finish_reason == "stop"
    assert c.logprobs is not None and c.logprobs.content == []
    assert lc.logprobs is not None and lc.logprobs.tokens == []


def test_logprobs_errors(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(openai_client, model_id, max_tokens=2, top_logprobs=3)
    assert ei.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as ei:
        chat(openai_client, model_id, max_tokens=2, logprobs=True, top_logprobs=21)
    assert ei.value.param == "top_logprobs"


# --- logit_bias and penalties ----------------------------------------------------------------

def test_logit_bias_forces_a_token_and_logprobs_stay_raw(openai_client, model_id):
    plain = chat(openai_client, model_id, max_tokens=6, logprobs=True, top_logprobs=1)
    p0 = lp_dicts(plain.choices[0])[0]
    r = chat(openai_client, model_id, max_tokens=6, logprobs=True, top_logprobs=1,
             logit_bias={str(FORCED_ID): 100})
    content = lp_dicts(r.choices[0])
    toks = {e["token"] for e in content}
    assert len(content) == 6 and len(toks) == 1, f"bias +100 did not force one token: {content}"
    forced = content[0]["token"]
    assert forced != p0["token"]
    assert r.choices[0].message.content == forced * 6
    # the logprobs are the model's, before the bias: the top alternative is still the
    # unbiased greedy token with its logprob, and the forced token is less likely
    assert content[0]["top_logprobs"][0]["token"] == p0["token"]
    assert content[0]["top_logprobs"][0]["logprob"] == pytest.approx(p0["logprob"], abs=1e-4)
    assert content[0]["logprob"] < p0["logprob"]
    # id FORCED_ID is that token: the legacy endpoint echoes it back as its text
    leg = openai_client.completions.create(model=model_id, prompt=[FORCED_ID], max_tokens=1,
                                           temperature=0, echo=True)
    assert leg.choices[0].text.startswith(forced)
    # sampling at temperature 1 cannot escape a +100 bias either
    s = chat(openai_client, model_id, max_tokens=4, temperature=1.0, seed=3,
             logit_bias={str(FORCED_ID): 100})
    assert s.choices[0].message.content == forced * 4


def test_logit_bias_minus_100_bans_the_greedy_token(openai_client, model_id):
    """A prompt of the forced token repeated: greedy continues with it; -100 bans it and
    the next most likely raw token comes instead."""
    prompt = [2] + [FORCED_ID] * 5
    plain = openai_client.completions.create(model=model_id, prompt=prompt, max_tokens=3,
                                             temperature=0, logprobs=3)
    lp = plain.choices[0].logprobs
    forced = lp.tokens[0]
    assert lp.tokens == [forced] * 3, lp.tokens  # precondition of this test
    banned = openai_client.completions.create(model=model_id, prompt=prompt, max_tokens=3,
                                              temperature=0, logprobs=3,
                                              logit_bias={str(FORCED_ID): -100})
    blp = banned.choices[0].logprobs
    assert forced not in blp.tokens, blp.tokens
    # first step: same raw distribution as without the bias; the runner-up is chosen
    assert blp.top_logprobs[0] == pytest.approx(lp.top_logprobs[0], abs=1e-4)
    runner_up = sorted(lp.top_logprobs[0].items(), key=lambda kv: -kv[1])[1]
    assert blp.tokens[0] == runner_up[0]
    assert blp.token_logprobs[0] == pytest.approx(runner_up[1], abs=1e-4)


def test_min_p_one_is_greedy(openai_client, model_id):
    """min_p 1 keeps only the tokens as likely as the best one: hot sampling with any
    seed is the greedy completion."""
    greedy = chat(openai_client, model_id, max_tokens=12).choices[0].message.content
    for seed in (1, 2, 3):
        r = chat(openai_client, model_id, max_tokens=12, temperature=1.8, seed=seed,
                 extra_body={"min_p": 1.0})
        assert r.choices[0].message.content == greedy, seed


@pytest.mark.parametrize("extra,temperature", [({"top_k": 2}, 1.5), ({"min_p": 0.2}, 1.0),
                                               ({"top_p": 0.5}, 1.0)],
                         ids=["top_k", "min_p", "top_p"])
def test_sampling_filters_bound_every_token(openai_client, model_id, extra, temperature):
    """Each sampled token, against the raw distribution its step's logprobs report
    (no bias or penalty, so the filters see the same logits): top_k 2 draws one of
    the two best; min_p 0.2 at temperature 1 a token at least 0.2 times as likely
    as the best; top_p 0.5 a token whose better tokens hold under half the mass."""
    top_p = extra.pop("top_p", None)
    kw = {"top_p": top_p} if top_p is not None else {}
    n_checked = 0
    for seed in (11, 12, 13):
        r = chat(openai_client, model_id, max_tokens=16, temperature=temperature, seed=seed,
                 logprobs=True, top_logprobs=20, extra_body=extra or None, **kw)
        for step in r.choices[0].logprobs.content:
            tops = sorted(((t.logprob, t.token) for t in step.top_logprobs), reverse=True)
            if "top_k" in extra:
                assert step.logprob >= tops[1][0] - 1e-4, (step.token, tops[:3])
            elif "min_p" in extra:
                assert step.logprob >= tops[0][0] + math.log(0.2) - 1e-4, (step.token, tops[:3])
            else:
                above = sum(math.exp(lp) for lp, _ in tops if lp > step.logprob + 1e-5)
                assert above < 0.5 + 1e-4, (step.token, above)
            n_checked += 1
    assert n_checked >= 30


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5"])
def test_min_p_out_of_range_is_400(openai_client, model_id, value):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(openai_client, model_id, max_tokens=1, extra_body={"min_p": value})
    assert ei.value.param == "min_p", ei.value.body


def check_penalized_greedy(content, presence, frequency):
    """At temperature 0 each chosen token must maximize
    logprob - frequency * count - presence * (count > 0) over its candidates, where count
    is how often that token already appeared in this choice's output (OpenAI's formula;
    log-softmax differs from the logits by a per-step constant, so argmax is the same).
    Penalties >= 0 only lower scores, so the argmax lies in the top list whenever the
    top list holds a token not yet seen."""
    counts = {}
    for k, e in enumerate(content):
        def score(tok, lp):
            n = counts.get(tok, 0)
            return lp - frequency * n - presence * (n > 0)
        cands = {t["token"]: t["logprob"] for t in e["top_logprobs"]}
        best_tok, best = max(((t, score(t, lp)) for t, lp in cands.items()), key=lambda x: x[1])
        if e["token"] in cands:
            mine = score(e["token"], cands[e["token"]])
            assert mine >= best - 1e-3, (
                f"step {k}: chose {e['token']!r} (penalized {mine:.4f}) over {best_tok!r} "
                f"(penalized {best:.4f}); counts {counts}")
        else:
            assert all(counts.get(t, 0) > 0 for t in cands), (
                f"step {k}: chose {e['token']!r}, outside the top list, although the unseen "
                f"{[t for t in cands if not counts.get(t)]} were available")
        counts[e["token"]] = counts.get(e["token"], 0) + 1


@pytest.mark.parametrize("presence,frequency", [(0, 0), (0, 2), (2, 0), (1.5, 0.7)],
                         ids=["none", "frequency", "presence", "both"])
def test_penalties_follow_openai_formula(openai_client, model_id, presence, frequency):
    r = chat(openai_client, model_id, REPEAT_PROMPT, max_tokens=16, logprobs=True,
             top_logprobs=20, presence_penalty=presence, frequency_penalty=frequency)
    content = lp_dicts(r.choices[0])
    assert len(content) == 16
    assert "".join(e["token"] for e in content) == r.choices[0].message.content
    check_penalized_greedy(content, presence, frequency)


def test_penalties_count_each_choice_own_tokens(openai_client, model_id):
    """With n=2 at temperature 0 each choice is penalized by its own output only, so
    both equal the n=1 answer (counts shared across choices would make them differ)."""
    kw = dict(max_tokens=16, frequency_penalty=1.5, presence_penalty=0.5)
    one = chat(openai_client, model_id, REPEAT_PROMPT, **kw).choices[0].message.content
    two = [c.message.content for c in chat(openai_client, model_id, REPEAT_PROMPT, n=2,
                                           **kw).choices]
    assert two == [one, one]
    base = chat(openai_client, model_id, REPEAT_PROMPT, max_tokens=16).choices[0].message.content
    assert one != base


def test_frequency_penalty_reduces_repetition(openai_client, model_id):
    def most_common(r):
        toks = [e.token for e in r.choices[0].logprobs.content]
        return max(toks.count(t) for t in set(toks))
    kw = dict(max_tokens=16, logprobs=True)
    base = chat(openai_client, model_id, REPEAT_PROMPT, **kw)
    pen = chat(openai_client, model_id, REPEAT_PROMPT, frequency_penalty=2, **kw)
    assert pen.choices[0].message.content != base.choices[0].message.content
    assert most_common(pen) < most_common(base)
    # a negative presence penalty rewards repeats: never less repetitive than none
    neg = chat(openai_client, model_id, REPEAT_PROMPT, presence_penalty=-2, **kw)
    assert most_common(neg) >= most_common(base)


@pytest.mark.parametrize("bias", [{"999999999": 1}, {"262144": 1}, {"1000": 101},
                                  {"1000": -100.5}, {"abc": 1}, {"-1": 1}],
                         ids=["huge_id", "vocab_size", "over_100", "under_minus_100",
                              "not_a_number", "negative_id"])
def test_logit_bias_invalid_is_400(openai_client, model_id, bias):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(openai_client, model_id, max_tokens=1, logit_bias=bias)
    assert ei.value.status_code == 400
    assert ei.value.param == "logit_bias", ei.value.body


@pytest.mark.parametrize("field,value", [("presence_penalty", 2.5), ("frequency_penalty", -2.01),
                                         ("n", 0), ("n", 129)])
def test_out_of_range_fields_are_400(openai_client, model_id, field, value):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(openai_client, model_id, max_tokens=1, **{field: value})
    assert ei.value.param == field, ei.value.body


def test_logit_bias_edge_ids_accepted(openai_client, model_id):
    r = chat(openai_client, model_id, max_tokens=1, logit_bias={"0": -100, "262143": 0.5})
    assert r.choices[0].finish_reason in ("stop", "length")


# --- stop strings ---------------------------------------------------------------------------

STOP_PROMPT = "Tell me a story about a dragon."


def pick_split_stop(tokens, text):
    """A 4-character stop string made of the last 2 characters of one token and the
    first 2 of the next, whose first occurrence in text is exactly at that boundary."""
    off = 0
    for i in range(len(tokens) - 1):
        off += len(tokens[i])
        a, b = tokens[i], tokens[i + 1]
        if i < 1 or len(a) < 2 or len(b) < 2:
            continue
        stop = a[-2:] + b[:2]
        if text.find(stop) == off - 2:
            return stop, off - 2
    pytest.fail(f"no token boundary to split a stop string across: {tokens}")


def test_stop_string_split_across_tokens(openai_client, model_id):
    full = chat(openai_client, model_id, STOP_PROMPT, max_tokens=24, logprobs=True)
    text = full.choices[0].message.content
    tokens = [e.token for e in full.choices[0].logprobs.content]
    assert "".join(tokens) == text
    stop, at = pick_split_stop(tokens, text)
    want = text[:at]

    r = chat(openai_client, model_id, STOP_PROMPT, max_tokens=24, stop=[stop])
    assert r.choices[0].message.content == want, f"stop {stop!r}"
    assert stop not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24

    # with logprobs: the entries cover a prefix of the content, the same streamed
    rl = chat(openai_client, model_id, STOP_PROMPT, max_tokens=24, stop=[stop], logprobs=True)
    assert rl.choices[0].message.content == want
    ltoks = [e.token for e in rl.choices[0].logprobs.content]
    assert want.startswith("".join(ltoks)) and ltoks == tokens[:len(ltoks)], (ltoks, want)
    _, _, _, slps = collect_chat_stream(chat(openai_client, model_id, STOP_PROMPT, max_tokens=24,
                                             stop=[stop], logprobs=True, stream=True))
    assert [e["token"] for e in slps.get(0, [])] == ltoks

    # one of several stop strings; the earliest one wins
    r2 = chat(openai_client, model_id, STOP_PROMPT, max_tokens=24, stop=["#@never@#", stop])
    assert r2.choices[0].message.content == want

    # streamed: the held-back characters never leak into a delta
    chunks, stext, fins, _ = collect_chat_stream(chat(
        openai_client, model_id, STOP_PROMPT, max_tokens=24, stop=stop, stream=True))
    assert stext[0] == want
    assert fins[0] == ["stop"]
    for c in chunks:
        for ch in c.choices:
            assert stop not in (ch.delta.content or "")

    # with n=2 (greedy) both choices stop at the same place
    rn = chat(openai_client, model_id, STOP_PROMPT, max_tokens=24, stop=[stop], n=2)
    assert [c.message.content for c in rn.choices] == [want, want]
    assert [c.finish_reason for c in rn.choices] == ["stop", "stop"]


# --- prefix cache -----------------------------------------------------------------------------

def test_cached_tokens_on_repeat(openai_client, model_id):
    words = ("the quick brown fox jumps over the lazy dog while the cat sleeps on a warm "
             "mat by the door ").split()
    # a nonce first: no earlier request shares even the first block
    content = f"z{uuid.uuid4().hex[:8]} " + " ".join((words * 6)[:100])
    a = chat(openai_client, model_id, content, max_tokens=4)
    b = chat(openai_client, model_id, content, max_tokens=4)
    p = a.usage.prompt_tokens
    assert p > 32 and b.usage.prompt_tokens == p
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached < p, (cached, p)
    # every full block of the prompt but the one holding its last token is reused
    assert cached == (p - 1) // 16 * 16, (cached, p)
    assert b.choices[0].message.content == a.choices[0].message.content
    # a prompt that shares only a prefix reuses the blocks of that prefix
    c = chat(openai_client, model_id, content + " and then something else entirely", max_tokens=2)
    assert 0 < c.usage.prompt_tokens_details.cached_tokens <= cached


# --- include_usage ordering on the wire ---------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2])
def test_include_usage_ordering_raw(kolm_server, n):
    body = {"model": kolm_server.model_id, "messages": msgs(), "max_tokens": 4,
            "temperature": 0, "n": n, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = kolm_server.request("POST", CHAT, body)
    assert status == 200, raw[:500]
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    for k, c in enumerate(chunks[:-1]):
        assert "usage" in c and c["usage"] is None, f"chunk {k}: {c}"
        assert c["choices"], f"chunk {k}: no choices before the usage chunk"
    last = chunks[-1]
    assert last["choices"] == []
    u = last["usage"]
    assert u["completion_tokens"] == 4 * n
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # role chunks first, one per choice
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks[:n]] == [
        (i, {"role": "assistant", "content": ""}) for i in range(n)]
    per = {}
    for c in chunks[:-1]:
        assert len(c["choices"]) == 1
        ch = c["choices"][0]
        per.setdefault(ch["index"], []).append(ch["finish_reason"])
    assert sorted(per) == list(range(n))
    for i, f in per.items():
        assert [x for x in f if x] == ["length"] and f[-1] == "length", f"choice {i}: {f}"


# --- legacy completions ---------------------------------------------------------------------

LEGACY_PROMPT = "The capital of France is"


def test_legacy_default_max_tokens(openai_client, model_id):
    r = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].index == 0
    c = r.choices[0]
    assert c.logprobs is None
    assert c.text
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 16
    else:
        assert c.finish_reason == "stop" and r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_legacy_prompts_times_n(openai_client, model_id):
    prompts = [LEGACY_PROMPT, "Once upon a time"]
    r = openai_client.completions.create(model=model_id, prompt=prompts, n=2, max_tokens=4,
                                         temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    t = [c.text for c in r.choices]
    assert t[0] == t[1] and t[2] == t[3] and t[0] != t[2], t
    # index = prompt_index * n + j: each pair is its own prompt's greedy answer
    prompt_tokens = 0
    for i, p in enumerate(prompts):
        one = openai_client.completions.create(model=model_id, prompt=p, max_tokens=4,
                                               temperature=0)
        assert one.choices[0].text == t[2 * i]
        prompt_tokens += one.usage.prompt_tokens
    # every prompt counted once, completion tokens summed over the 4 choices
    assert r.usage.completion_tokens == 16
    assert r.usage.prompt_tokens == prompt_tokens


def test_legacy_token_id_prompts(openai_client, model_id):
    r = openai_client.completions.create(model=model_id, prompt=[2, 818, 5279], max_tokens=4,
                                         temperature=0)
    assert r.choices[0].text and r.usage.prompt_tokens == 3
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    rr = openai_client.completions.create(model=model_id, prompt=[[2, 818, 5279], [2, FORCED_ID]],
                                          max_tokens=4, temperature=0)
    assert [c.index for c in rr.choices] == [0, 1]
    assert rr.choices[0].text == r.choices[0].text
    assert rr.usage.prompt_tokens == 5


def test_legacy_echo(openai_client, model_id):
    plain = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=4,
                                             temperature=0)
    r = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=4,
                                         temperature=0, echo=True)
    assert r.choices[0].text == LEGACY_PROMPT + plain.choices[0].text
    assert r.usage.completion_tokens == plain.usage.completion_tokens
    prompts = [LEGACY_PROMPT, "Once upon a time"]
    rr = openai_client.completions.create(model=model_id, prompt=prompts, n=2, max_tokens=3,
                                          temperature=0, echo=True)
    assert len(rr.choices) == 4
    for c in rr.choices:
        p = prompts[c.index // 2]
        assert c.text.startswith(p) and len(c.text) > len(p), (c.index, c.text)
    # token-id prompt: the echo is the prompt's text (the forced token's text here)
    forced = chat(openai_client, model_id, max_tokens=1,
                  logit_bias={str(FORCED_ID): 100}).choices[0].message.content
    t = openai_client.completions.create(model=model_id, prompt=[2, FORCED_ID, FORCED_ID],
                                         max_tokens=2, temperature=0, echo=True)
    assert t.choices[0].text.startswith(forced * 2), t.choices[0].text


def test_legacy_logprobs_shape(openai_client, model_id):
    r = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=6,
                                         temperature=0, logprobs=3)
    c = r.choices[0]
    lp = c.logprobs
    n = len(lp.tokens)
    assert n == r.usage.completion_tokens == 6
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    # each token starts where the previous one ended (the origin is left open: kolm
    # counts from the completion's start, OpenAI from the prompt's)
    for k in range(1, n):
        assert lp.text_offset[k] == lp.text_offset[k - 1] + len(lp.tokens[k - 1])
        assert lp.text_offset[k] > lp.text_offset[k - 1]
    for k in range(n):
        tops = lp.top_logprobs[k]
        assert isinstance(tops, dict) and 1 <= len(tops) <= 3
        assert all(v <= 0 for v in tops.values())
        # greedy: the chosen token is the most likely one
        best = max(tops.items(), key=lambda kv: kv[1])
        assert lp.tokens[k] == best[0]
        assert lp.token_logprobs[k] == pytest.approx(best[1], abs=1e-6)
    r0 = openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=6,
                                          temperature=0, logprobs=0)
    lp0 = r0.choices[0].logprobs
    assert lp0.tokens == lp.tokens
    assert all(not t for t in lp0.top_logprobs), lp0.top_logprobs


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_legacy_text_offset_counts_characters(openai_client, model_id, stream):
    prompt = "Caf\u00e9, cr\u00e8me br\u00fbl\u00e9e, r\u00e9sum\u00e9, na\u00efve, caf\u00e9,"
    kw = dict(model=model_id, prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    if stream:
        text, tokens, offsets = "", [], []
        for ch in openai_client.completions.create(stream=True, **kw):
            for c in ch.choices:
                text += c.text
                if c.logprobs is not None:
                    tokens += c.logprobs.tokens
                    offsets += c.logprobs.text_offset
    else:
        c = openai_client.completions.create(**kw).choices[0]
        text, tokens, offsets = c.text, c.logprobs.tokens, c.logprobs.text_offset
    assert "".join(tokens) == text
    assert any(ord(ch) > 127 for ch in text), f"precondition: non-ASCII output {text!r}"
    base = offsets[0]
    for tok, off in zip(tokens, offsets):
        assert text[off - base:].startswith(tok), (tokens, offsets)


def test_legacy_stream_equals_non_stream(openai_client, model_id):
    kw = dict(model=model_id, prompt=[LEGACY_PROMPT, "Once upon a time"], n=2, max_tokens=5,
              temperature=1.0, seed=21, logprobs=2)
    full = openai_client.completions.create(**kw)
    chunks = list(openai_client.completions.create(stream=True,
                                                   stream_options={"include_usage": True}, **kw))
    text, fins, toks = {}, {}, {}
    for ch in chunks[:-1]:
        assert ch.object == "text_completion" and ch.usage is None
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + c.text
            if c.finish_reason is not None:
                fins.setdefault(c.index, []).append(c.finish_reason)
            if c.logprobs is not None:
                toks.setdefault(c.index, []).extend(c.logprobs.tokens)
    assert sorted(text) == [0, 1, 2, 3]
    assert [text[i] for i in range(4)] == [c.text for c in full.choices]
    assert [fins.get(i) for i in range(4)] == [[c.finish_reason] for c in full.choices]
    assert [toks[i] for i in range(4)] == [c.logprobs.tokens for c in full.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 20


@pytest.mark.parametrize("kw,param", [
    (dict(suffix="and so on"), "suffix"),
    (dict(echo=True, logprobs=1), "echo"),
    (dict(best_of=3, n=2), "best_of"),
    (dict(logprobs=6), "logprobs"),
], ids=["suffix", "echo_logprobs", "best_of", "logprobs_6"])
def test_legacy_errors(openai_client, model_id, kw, param):
    with pytest.raises(openai.BadRequestError) as ei:
        openai_client.completions.create(model=model_id, prompt=LEGACY_PROMPT, max_tokens=2, **kw)
    assert ei.value.status_code == 400
    assert ei.value.param == param, ei.value.body


# --- cancellation and /metrics ------------------------------------------------------------------

def metrics(srv):
    """{metric name: value} for worker "0" from GET /metrics."""
    status, headers, body = srv.request("GET", "/metrics", timeout=10)
    assert status == 200, body[:300]
    assert headers.get("content-type", "").startswith("text/plain"), headers
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        if labels.get("worker") == "0":
            out[m[1]] = float(m[3])
    return out


def wait_metrics(srv, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    m = metrics(srv)
    while not pred(m) and time.monotonic() < deadline:
        time.sleep(0.1)
        m = metrics(srv)
    return m


IDLE = ("kolm_worker_jobs", "kolm_worker_running", "kolm_worker_waiting")


@pytest.mark.parametrize("n", [1, 3])
def test_disconnect_mid_stream_frees_the_worker(kolm_server, n):
    m0 = wait_metrics(kolm_server, lambda m: all(m.get(k) == 0 for k in IDLE))
    assert all(m0.get(k) == 0 for k in IDLE), f"worker not idle before the test: {m0}"
    body = json.dumps({"model": kolm_server.model_id, "messages": msgs("Count to a thousand."),
                       "max_tokens": 2000, "temperature": 0, "stream": True, "n": n}).encode()
    sock = socket.create_connection(("127.0.0.1", kolm_server.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        buf = b""
        deadline = time.monotonic() + 30
        while not re.search(rb'"content":"[^"]', buf):
            assert time.monotonic() < deadline, f"no content chunk: {buf[:500]!r}"
            data = sock.recv(65536)
            assert data, f"server closed before a content chunk: {buf[:500]!r}"
            buf += data
        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        running = metrics(kolm_server)
        assert running.get("kolm_worker_jobs") == 1, running
        # the choices are sequences: running (or waiting behind the prompt's first)
        assert running.get("kolm_worker_running", 0) >= 1, running
        assert running.get("kolm_worker_running", 0) + running.get("kolm_worker_waiting", 0) == n
        if n == 1:
            assert running.get("kolm_worker_waiting") == 0, running
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    t0 = time.monotonic()
    m = wait_metrics(kolm_server, lambda m: all(m.get(k) == 0 for k in IDLE))
    assert all(m.get(k) == 0 for k in IDLE), (
        f"worker still busy {time.monotonic() - t0:.1f}s after the client left: {m}")
    # no KV block leaked: an idle worker's blocks are all free or held by the prefix cache
    m = wait_metrics(kolm_server, lambda m: m["kolm_worker_kv_blocks_free"]
                     + m["kolm_worker_kv_blocks_cached"] == m["kolm_worker_kv_blocks_total"],
                     timeout=3)
    assert m["kolm_worker_kv_blocks_total"] > 0
    assert (m["kolm_worker_kv_blocks_free"] + m["kolm_worker_kv_blocks_cached"]
            == m["kolm_worker_kv_blocks_total"]), m
    # it stopped early: far fewer than 2000 tokens were generated for it
    gen = m.get("kolm_worker_tokens_generated_total")
    if gen is not None and "kolm_worker_tokens_generated_total" in m0:
        assert gen - m0["kolm_worker_tokens_generated_total"] < 1000 * n, (m0, m)
    kolm_server.assert_serving()


def test_metrics_before_any_request(kolm_server_factory):
    """A fresh server reports its worker's KV pool from the start (total > 0, all free),
    not zeros until the first job changes a count."""
    srv = kolm_server_factory()
    m = metrics(srv)
    for k in IDLE:
        assert m.get(k) == 0, m
    assert m.get("kolm_worker_kv_blocks_total", 0) > 0, m
    assert m["kolm_worker_kv_blocks_free"] == m["kolm_worker_kv_blocks_total"], m
