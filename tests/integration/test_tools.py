"""Tool calling (function calling enforced by grammar-constrained decoding) through the
official `openai` SDK against the real `kolm serve`.

The server renders the tool definitions into the prompt and constrains the output to
its call format; what comes back is the OpenAI shape. Checked here:

- tool_choice "required": message.tool_calls has at least one call; each has a
  non-empty id (unique within the response), type "function", a function.name among
  the tools' names and function.arguments a JSON *string* that parses to an object
  validating against that tool's parameters (Draft 2020-12); finish_reason
  "tool_calls"; no text (content None or "");
- named tool_choice {"type": "function", "function": {"name": X}}: only calls to X
  (exactly one with parallel_tool_calls=False), arguments valid, finish_reason "stop",
  no text; forcing a tool the prompt does not ask for works too;
- tool_choice "none": no tool_calls, text content, finish_reason "stop"/"length";
- tool_choice "auto" and tool_choice absent: either text (no tool_calls, no call
  markup in the content, finish "stop"/"length") or calls (finish "tool_calls", each
  valid), for a prompt that asks for a tool and one that does not;
- parallel_tool_calls False (exactly one call) and True/default (every call valid);
- three tools with different schemas (required string + optional enum; bounded
  integer; nested object + array with maxItems, strict);
- sampled (temperature 1.5, n=3, seeded): every choice's calls validate; choice
  indices 0..2; call ids unique across the whole response;
- streaming: the first delta of each call carries index, id, type "function",
  function.name and function.arguments (a string, possibly ""); later deltas only
  index and arguments fragments; indices dense from 0; no text deltas; one
  finish_reason, last ("tool_calls" required, "stop" named); the reassembled calls
  equal the non-streamed ones at temperature 0 (names and arguments strings);
  a refused request fails before the stream starts;
- the SDK's chat.completions.stream() helper (tool_calls.function.arguments.delta and
  .done events, get_final_completion) and chat.completions.parse() with
  openai.pydantic_function_tool (parsed_arguments an instance of the model);
- a round trip: the call and a tool result appended to the history, then
  tool_choice "none" gives a text answer;
- the deprecated functions/function_call: named -> message.function_call (name,
  arguments valid), tool_calls None, finish "stop"; "auto" -> text or a
  function_call (finish "function_call"); "none" -> text; functions with tools -> 400;
- tools without parameters (an empty object schema): arguments parse to an object;
  a 64-character name is accepted;
- 400s naming their param: tool_choice without tools, a named tool_choice naming an
  unknown function, a tool type other than "function", bad names (spaces, 65
  characters), duplicate names, parameters not an object, an unsupported schema
  keyword ('not'), a strict tool without additionalProperties false, more than 128
  tools, logprobs with tools, response_format json_schema with tools, and tools on
  the legacy POST /v1/completions.

The model is tiny: prompts ask for the tool, strings in the schemas carry maxLength,
arrays maxItems, and max_tokens stays at or under 300. Tool-call *history* in the
messages (assistant tool_calls, tool results) is covered by test_chat_sdk.py."""

import json
import re
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
from jsonschema import Draft202012Validator

MAX_TOKENS = 200       # for tool calls (the largest call here is well under 100 tokens)
TEXT_MAX_TOKENS = 80   # where a text answer is allowed
SAMPLED_T = 1.5
ERR_PROMPT = "What's the weather in Paris?"
MARKUP = ("<tool_call>", "</tool_call>")  # the server's call format: never seen by clients

# --- tools -----------------------------------------------------------------------------

WEATHER_PARAMS = {  # object: a required string and an optional enum
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40, "description": "City name, e.g. Paris"},
        "unit": {"enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
    },
    "required": ["city"],
}
VOLUME_PARAMS = {  # an integer with bounds
    "type": "object",
    "properties": {"level": {"type": "integer", "minimum": 0, "maximum": 10,
                             "description": "Volume level from 0 (mute) to 10 (max)"}},
    "required": ["level"],
}
EVENT_PARAMS = {  # nested object + array with maxItems; obeys the strict rules
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "location": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30},
                           "room": {"type": "string", "maxLength": 20}},
            "required": ["city", "room"],
            "additionalProperties": False,
        },
        "attendees": {"type": "array", "items": {"type": "string", "maxLength": 20},
                      "maxItems": 3},
    },
    "required": ["title", "location", "attendees"],
    "additionalProperties": False,
}


def tool(name, description=None, parameters=None, strict=None):
    fn = {"name": name}
    if description is not None:
        fn["description"] = description
    if parameters is not None:
        fn["parameters"] = parameters
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}


WEATHER = tool("get_weather", "Get the current weather for a city.", WEATHER_PARAMS)
VOLUME = tool("set_volume", "Set the speaker volume.", VOLUME_PARAMS)
EVENT = tool("create_event", "Put an event in the calendar.", EVENT_PARAMS, strict=True)
TOOLS = [WEATHER, VOLUME, EVENT]
PING = tool("ping", "Check that the service is up.")  # no parameters: an empty object schema

WEATHER_PROMPT = "What's the weather in Paris? Use the get_weather tool."
VOLUME_PROMPT = "Set the volume to 7. Use the set_volume tool."
EVENT_PROMPT = ("Schedule a meeting called Standup in Berlin, room 4, with Ann and Bob. "
                "Use the create_event tool.")
HELLO_PROMPT = "Say hello."
TWO_CITIES_PROMPT = ("What's the weather in Paris and in Rome? Call get_weather once for each "
                     "city.")
DAY_PROMPT = ("Help me with my day: check the weather in Oslo, set the volume to 3, or put "
              "lunch with Kim in the calendar. Use one of the tools.")

EMPTY_OBJECT = {"type": "object", "properties": {}}


def by_name(tools):
    """{name: function definition} for a tools list (or a legacy functions list)."""
    out = {}
    for t in tools:
        fn = t["function"] if "function" in t else t
        out[fn["name"]] = fn
    return out


def params_of(fn):
    params = fn.get("parameters")
    return EMPTY_OBJECT if params is None else params


def named(name):
    return {"type": "function", "function": {"name": name}}


# --- validation ------------------------------------------------------------------------

def clip(x, limit=2000):
    text = repr(x)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def as_dict(obj):
    if obj is None or isinstance(obj, dict):
        return obj
    return obj.model_dump()


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def schema_errors(schema, doc):
    v = Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in v.iter_errors(doc))


def valid_call(tool_by_name, call, content=None, where="tool call"):
    """call (an SDK tool call, a legacy message.function_call, or their dicts) names one
    of tool_by_name's functions and its arguments are a JSON string that parses to an
    object valid against that function's parameters. Returns the parsed arguments.
    A tool call (it has "function") must also have a non-empty id and type "function"."""
    c = as_dict(call)
    ctx = f"{where}\ncall: {clip(c)}\ncontent: {clip(content)}"
    assert isinstance(c, dict), f"no call: {ctx}"
    if "function" in c:
        assert isinstance(c.get("id"), str) and c["id"], f"the call has no id: {ctx}"
        assert c.get("type") == "function", f"type {c.get('type')!r}, want 'function': {ctx}"
        fn = c["function"] or {}
    else:
        fn = c
    name = fn.get("name")
    assert name in tool_by_name, (
        f"function name {name!r} is not one of the tools {sorted(tool_by_name)}: {ctx}")
    schema = params_of(tool_by_name[name])
    ctx += f"\nschema: {clip(json.dumps(schema), 1500)}"
    text = fn.get("arguments")
    assert isinstance(text, str), f"arguments is a {type(text).__name__}, not a JSON string: {ctx}"
    try:
        args = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        pytest.fail(f"arguments are not JSON ({e}): {ctx}", pytrace=False)
    assert isinstance(args, dict), f"arguments are a JSON {type(args).__name__}, not an object: {ctx}"
    errs = schema_errors(schema, args)
    assert not errs, "arguments do not validate:\n  " + "\n  ".join(errs[:8]) + f"\n{ctx}"
    return args


def check_calls(where, choice, tools, finish, name=None, count=None):
    """choice answered with tool calls only: finish_reason finish (or "length" when
    parallel calls ran to max_tokens), >= 1 calls (count when given), every one valid (and to name when given), ids unique, no text, no
    legacy function_call. Returns [(name, arguments string, parsed arguments)]."""
    m = choice.message
    ctx = f"{where}\nmessage: {clip(as_dict(m))}\nfinish_reason: {choice.finish_reason!r}"
    assert m.role == "assistant", f"role {m.role!r}: {ctx}"
    # Parallel calls may go on until max_tokens; the grammar then closes the last call
    # within the budget: finish "length", every call still whole.
    ok = (finish, "length") if finish == "tool_calls" and count is None else (finish,)
    assert choice.finish_reason in ok, f"finish_reason {choice.finish_reason!r}, want {ok}: {ctx}"
    calls = m.tool_calls
    assert calls, f"no tool_calls: {ctx}"
    if count is not None:
        assert len(calls) == count, f"{len(calls)} tool calls, want exactly {count}: {ctx}"
    assert m.content in (None, ""), f"text alongside forced tool calls: {ctx}"
    assert m.function_call is None, f"legacy function_call set in a tools request: {ctx}"
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids), f"tool call ids are not unique: {ids}: {ctx}"
    tbn = by_name(tools)
    out = []
    for i, c in enumerate(calls):
        args = valid_call(tbn, c, m.content, f"{where}, tool_calls[{i}]")
        if name is not None:
            assert c.function.name == name, (
                f"tool_calls[{i}] calls {c.function.name!r}, want only {name!r}: {ctx}")
        out.append((c.function.name, c.function.arguments, args))
    return out


def check_text(where, choice, markup=True):
    """choice answered with text only: content a non-empty string, no tool_calls or
    function_call, finish "stop"/"length"; with markup, no call markup in the text."""
    m = choice.message
    ctx = f"{where}\nmessage: {clip(as_dict(m))}\nfinish_reason: {choice.finish_reason!r}"
    assert m.role == "assistant", f"role {m.role!r}: {ctx}"
    assert not m.tool_calls, f"tool_calls in a text answer: {ctx}"
    assert m.function_call is None, f"function_call in a text answer: {ctx}"
    assert isinstance(m.content, str) and m.content, f"no text content: {ctx}"
    assert choice.finish_reason in ("stop", "length"), (
        f"finish_reason {choice.finish_reason!r}, want 'stop' or 'length': {ctx}")
    if markup:
        assert not any(t in m.content for t in MARKUP), f"call markup leaked into the text: {ctx}"
    return m.content


def check_auto(where, choice, tools):
    """Either outcome of tool_choice auto, each checked strictly."""
    if choice.message.tool_calls:
        m = choice.message
        ctx = f"{where}\nmessage: {clip(as_dict(m))}\nfinish_reason: {choice.finish_reason!r}"
        assert choice.finish_reason in ("tool_calls", "length"), (  # parallel calls may run to max_tokens
            f"finish_reason {choice.finish_reason!r} with tool calls, want 'tool_calls': {ctx}")
        assert m.function_call is None, f"legacy function_call set in a tools request: {ctx}"
        assert not any(t in (m.content or "") for t in MARKUP), f"call markup in content: {ctx}"
        ids = [c.id for c in m.tool_calls]
        assert len(set(ids)) == len(ids), f"tool call ids are not unique: {ids}: {ctx}"
        tbn = by_name(tools)
        for i, c in enumerate(m.tool_calls):
            valid_call(tbn, c, m.content, f"{where}, tool_calls[{i}]")
        return "calls"
    check_text(where, choice)
    return "text"


# --- requests --------------------------------------------------------------------------

def msgs(content):
    return [{"role": "user", "content": content}]


def chat(client, model, prompt, tools=TOOLS, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("temperature", 0)
    if tools is not None:
        kw["tools"] = tools
    messages = prompt if isinstance(prompt, list) else msgs(prompt)
    return client.chat.completions.create(model=model, messages=messages, **kw)


ENGLISH = {"not"}  # keywords that are also English words


def names_keyword(message, name):
    """name appears in message as a whole word; an English-word keyword only quoted
    ('not', "not", `not`) or at the end of a path (/not, .not)."""
    before = r"[\"'`/.]" if name in ENGLISH else r"(?<![A-Za-z0-9_])"
    return re.search(before + re.escape(name) + r"(?![A-Za-z0-9_])", message) is not None


def check_400(e, what, param=None, names=(), contains=()):
    err = e.body
    where = f"{what} -> {clip(err)}"
    assert e.status_code == 400, f"status {e.status_code}, want 400: {where}"
    assert isinstance(err, dict), f"the error body is not an object: {where}"
    assert err.get("type") == "invalid_request_error", f"error type {err.get('type')!r}: {where}"
    if param is not None:
        assert err.get("param") == param, f"param {err.get('param')!r}, want {param!r}: {where}"
    message = err.get("message") or ""
    assert isinstance(message, str) and message, f"no error message: {where}"
    for n in names:
        assert names_keyword(message, n), f"the message does not name {n!r}: {where}"
    for s in contains:
        assert s in message, f"the message does not contain {s!r}: {where}"
    return err


def expect_400(client, model, what, param=None, names=(), contains=(), prompt=ERR_PROMPT,
               tools=TOOLS, **kw):
    """The chat request is refused with a 400 invalid_request_error naming param."""
    kw.setdefault("max_tokens", 8)
    try:
        r = chat(client, model, prompt, tools, **kw)
        if kw.get("stream"):
            r = list(r)
        pytest.fail(f"{what}: accepted ({clip(r if kw.get('stream') else as_dict(r))}); want 400 "
                    f"with param {param!r}", pytrace=False)
    except openai.BadRequestError as e:
        return check_400(e, what, param, names, contains)


# --- tool_choice "required" ----------------------------------------------------------------

def test_tool_definitions_are_valid_schemas():
    """The tools themselves (no server): valid 2020-12 schemas, the strict one obeying
    the strict rules."""
    for t in TOOLS + [PING]:
        Draft202012Validator.check_schema(params_of(t["function"]))
    p = EVENT["function"]["parameters"]
    assert EVENT["function"]["strict"] is True
    for obj in (p, p["properties"]["location"]):
        assert obj["additionalProperties"] is False and set(obj["required"]) == set(obj["properties"])


def test_required_single_tool(openai_client, model_id):
    r = chat(openai_client, model_id, WEATHER_PROMPT, [WEATHER], tool_choice="required")
    assert len(r.choices) == 1, f"{len(r.choices)} choices"
    check_calls("required, get_weather only", r.choices[0], [WEATHER], "tool_calls",
                name="get_weather")
    assert r.usage.completion_tokens <= MAX_TOKENS, f"usage {r.usage}"


@pytest.mark.parametrize("prompt", [WEATHER_PROMPT, VOLUME_PROMPT, EVENT_PROMPT],
                         ids=["weather", "volume", "event"])
def test_required_three_tools(openai_client, model_id, prompt):
    r = chat(openai_client, model_id, prompt, tool_choice="required")
    check_calls(f"required, three tools, prompt {prompt!r}", r.choices[0], TOOLS, "tool_calls")


def test_required_no_parallel_is_one_call(openai_client, model_id):
    r = chat(openai_client, model_id, TWO_CITIES_PROMPT, tool_choice="required",
             parallel_tool_calls=False)
    check_calls("required, parallel_tool_calls=False", r.choices[0], TOOLS, "tool_calls", count=1)


@pytest.mark.parametrize("parallel", [None, True], ids=["default", "true"])
def test_required_parallel_all_valid(openai_client, model_id, parallel):
    kw = {} if parallel is None else {"parallel_tool_calls": parallel}
    r = chat(openai_client, model_id, TWO_CITIES_PROMPT, tool_choice="required", **kw)
    check_calls(f"required, parallel_tool_calls={parallel}", r.choices[0], TOOLS, "tool_calls")


# --- named tool_choice ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["get_weather", "set_volume", "create_event"])
def test_named_exactly_one_call(openai_client, model_id, name):
    r = chat(openai_client, model_id, DAY_PROMPT, tool_choice=named(name),
             parallel_tool_calls=False)
    check_calls(f"named {name}, parallel_tool_calls=False", r.choices[0], TOOLS, "stop",
                name=name, count=1)


def test_named_against_the_prompt(openai_client, model_id):
    """The prompt asks for the weather; the forced function is set_volume."""
    r = chat(openai_client, model_id, WEATHER_PROMPT, tool_choice=named("set_volume"))
    check_calls("named set_volume, weather prompt, parallel default", r.choices[0], TOOLS,
                "stop", name="set_volume")


# --- "none" and "auto" ----------------------------------------------------------------------

def test_none_gives_text(openai_client, model_id):
    r = chat(openai_client, model_id, WEATHER_PROMPT, tool_choice="none",
             max_tokens=TEXT_MAX_TOKENS)
    check_text("tool_choice none, weather prompt", r.choices[0], markup=False)


@pytest.mark.parametrize("choice", ["auto", None], ids=["auto", "absent"])
@pytest.mark.parametrize("prompt", [WEATHER_PROMPT, HELLO_PROMPT], ids=["weather", "hello"])
def test_auto_text_or_calls(openai_client, model_id, choice, prompt):
    kw = {} if choice is None else {"tool_choice": choice}
    r = chat(openai_client, model_id, prompt, max_tokens=TEXT_MAX_TOKENS * 2, **kw)
    check_auto(f"tool_choice {choice!r}, prompt {prompt!r}", r.choices[0], TOOLS)


# --- sampled --------------------------------------------------------------------------------

def check_sampled(where, r, n, finishes, count=None):
    assert [c.index for c in r.choices] == list(range(n)), (
        f"{where}: choice indices {[c.index for c in r.choices]}")
    ids = []
    for c in r.choices:
        w = f"{where}, choice {c.index}"
        assert c.finish_reason in finishes, f"{w}: finish_reason {c.finish_reason!r}, want {finishes}"
        check_calls(w, c, TOOLS, c.finish_reason, count=count)
        ids += [t.id for t in c.message.tool_calls]
    assert len(set(ids)) == len(ids), f"{where}: tool call ids repeat across the response: {ids}"


def test_sampled_n3_one_call_each(openai_client, model_id):
    r = chat(openai_client, model_id, DAY_PROMPT, tool_choice="required", parallel_tool_calls=False,
             temperature=SAMPLED_T, n=3, seed=7)
    check_sampled(f"required, temperature {SAMPLED_T}, n=3, seed 7, one call", r, 3,
                  ("tool_calls",), count=1)


def test_sampled_n3_parallel(openai_client, model_id):
    """Parallel calls allowed: a sampled choice may keep calling until max_tokens, where
    the grammar closes the last call ("length"); every call must still validate."""
    r = chat(openai_client, model_id, DAY_PROMPT, tool_choice="required", temperature=SAMPLED_T,
             n=3, seed=1234, max_tokens=300)
    check_sampled(f"required, temperature {SAMPLED_T}, n=3, seed 1234, parallel", r, 3,
                  ("tool_calls", "length"))


# --- streaming ------------------------------------------------------------------------------

def collect_tool_stream(where, stream):
    """Reassembles a streamed chat completion, checking the tool-call delta protocol.
    -> {choice index: {"calls": [{"id", "type", "name", "arguments"}], "content": str,
    "finish": [finish_reasons]}}."""
    out = {}
    last_with = {}  # choice index -> position of the last chunk carrying it
    finish_at = {}
    pos = 0
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", f"{where}: chunk object {chunk.object!r}"
        for ch in chunk.choices:
            st = out.setdefault(ch.index, {"calls": [], "content": "", "finish": []})
            w = f"{where}, choice {ch.index}, chunk {pos}: {clip(as_dict(ch))}"
            assert ch.index not in finish_at, f"a delta after finish_reason: {w}"
            last_with[ch.index] = pos
            st["content"] += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                assert isinstance(tc.index, int), f"tool call delta without an index: {w}"
                calls = st["calls"]
                if tc.index == len(calls):  # a new call: its first delta
                    assert isinstance(tc.id, str) and tc.id, f"first delta of a call has no id: {w}"
                    assert tc.type == "function", f"first delta of a call: type {tc.type!r}: {w}"
                    assert tc.function is not None and isinstance(tc.function.name, str) \
                        and tc.function.name, f"first delta of a call has no function.name: {w}"
                    assert isinstance(tc.function.arguments, str), (
                        f"first delta of a call: function.arguments is not a string: {w}")
                    calls.append({"id": tc.id, "type": tc.type, "name": tc.function.name,
                                  "arguments": tc.function.arguments})
                else:
                    assert tc.index < len(calls), (
                        f"tool call index {tc.index} skips ahead of {len(calls)} calls: {w}")
                    assert tc.id is None, f"a later delta repeats the id: {w}"
                    assert tc.type is None, f"a later delta repeats the type: {w}"
                    assert tc.function is not None and tc.function.name is None, (
                        f"a later delta carries a function name (or no function): {w}")
                    assert isinstance(tc.function.arguments, str), (
                        f"a later delta has no arguments fragment: {w}")
                    calls[tc.index]["arguments"] += tc.function.arguments
            if ch.finish_reason is not None:
                st["finish"].append(ch.finish_reason)
                finish_at[ch.index] = pos
        pos += 1
    for i, st in out.items():
        assert len(st["finish"]) == 1, f"{where}, choice {i}: finish reasons {st['finish']}"
        assert finish_at[i] == last_with[i], (
            f"{where}, choice {i}: finish_reason is not on the last chunk of the choice")
    return out


STREAM_CASES = [  # (id, prompt, tool_choice, finish_reason)
    ("required", EVENT_PROMPT, "required", "tool_calls"),  # parallel: may also end "length"
    ("named", WEATHER_PROMPT, named("get_weather"), "stop"),
]


@pytest.mark.parametrize("prompt,tc,finish", [c[1:] for c in STREAM_CASES],
                         ids=[c[0] for c in STREAM_CASES])
def test_stream_equals_non_stream(openai_client, model_id, prompt, tc, finish):
    where = f"streamed, tool_choice {tc!r}"
    got = collect_tool_stream(where, chat(openai_client, model_id, prompt, tool_choice=tc,
                                          stream=True))
    assert sorted(got) == [0], f"{where}: choices {sorted(got)}"
    st = got[0]
    ok = [[finish], ["length"]] if finish == "tool_calls" else [[finish]]
    assert st["finish"] in ok, f"{where}: finish reasons {st['finish']}, want one of {ok}"
    assert st["content"] == "", f"{where}: text deltas alongside forced calls: {clip(st['content'])}"
    assert st["calls"], f"{where}: no tool calls streamed"
    ids = [c["id"] for c in st["calls"]]
    assert len(set(ids)) == len(ids), f"{where}: ids not unique: {ids}"
    tbn = by_name(TOOLS)
    for i, c in enumerate(st["calls"]):
        valid_call(tbn, {"id": c["id"], "type": c["type"],
                         "function": {"name": c["name"], "arguments": c["arguments"]}},
                   st["content"], f"{where}, call {i} reassembled")
        if isinstance(tc, dict):
            assert c["name"] == tc["function"]["name"], f"{where}: call {i} to {c['name']!r}"
    full = chat(openai_client, model_id, prompt, tool_choice=tc)
    want = check_calls(f"non-streamed, tool_choice {tc!r}", full.choices[0], TOOLS, finish)
    assert [(c["name"], c["arguments"]) for c in st["calls"]] == [(n, a) for n, a, _ in want], (
        f"{where}: streamed calls {clip(st['calls'])} != non-streamed {clip(want)}")


def test_stream_refused_before_stream(openai_client, model_id):
    expect_400(openai_client, model_id, "streamed, named tool_choice of an unknown function",
               "tool_choice", tool_choice=named("no_such_tool"), stream=True)


@pytest.mark.parametrize("prompt,tc,finish", [c[1:] for c in STREAM_CASES],
                         ids=[c[0] for c in STREAM_CASES])
def test_sdk_stream_helper(openai_client, model_id, prompt, tc, finish):
    where = f"chat.completions.stream(), tool_choice {tc!r}"
    deltas, done = {}, []
    with openai_client.chat.completions.stream(
            model=model_id, messages=msgs(prompt), tools=TOOLS, tool_choice=tc,
            parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=0) as st:
        for ev in st:
            if ev.type == "tool_calls.function.arguments.delta":
                deltas[ev.index] = deltas.get(ev.index, "") + ev.arguments_delta
            elif ev.type == "tool_calls.function.arguments.done":
                done.append(ev)
            elif ev.type == "content.delta":
                assert ev.delta == "", f"{where}: text delta {ev.delta!r} alongside forced calls"
        final = st.get_final_completion()
    c = final.choices[0]
    calls = check_calls(where + ", get_final_completion()", c, TOOLS, finish, count=1)
    assert [e.index for e in done] == list(range(len(calls))), (
        f"{where}: arguments.done events for indices {[e.index for e in done]}, "
        f"{len(calls)} calls")
    for e, (name, arguments, args) in zip(done, calls):
        assert (e.name, e.arguments) == (name, arguments), (
            f"{where}: done event {clip(as_dict(e))} != final call {(name, arguments)}")
        assert deltas.get(e.index) == arguments, (
            f"{where}: joined argument deltas {clip(deltas.get(e.index))} != {clip(arguments)}")
        if by_name(TOOLS)[name].get("strict"):
            assert e.parsed_arguments == args, (
                f"{where}: parsed_arguments {clip(e.parsed_arguments)} != {clip(args)}")
    full = chat(openai_client, model_id, prompt, tool_choice=tc, parallel_tool_calls=False)
    want = check_calls(f"non-streamed, tool_choice {tc!r}", full.choices[0], TOOLS, finish, count=1)
    assert [(n, a) for n, a, _ in calls] == [(n, a) for n, a, _ in want], (
        f"{where}: final calls {clip(calls)} != non-streamed {clip(want)}")


# --- the SDK's pydantic tools ---------------------------------------------------------------

class GetWeather(pydantic.BaseModel):
    """Get the current weather for a city."""
    city: str = pydantic.Field(max_length=40, description="City name, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"]


class Location(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=30)
    room: str = pydantic.Field(max_length=20)


class CreateEvent(pydantic.BaseModel):
    """Put an event in the calendar."""
    title: str = pydantic.Field(max_length=40)
    location: Location
    attendees: list[str] = pydantic.Field(max_length=3)


PYDANTIC_TOOLS = [openai.pydantic_function_tool(GetWeather),
                  openai.pydantic_function_tool(CreateEvent)]
MODELS = {"GetWeather": GetWeather, "CreateEvent": CreateEvent}
PARSE_CASES = [  # (id, prompt, tool_choice, finish_reason)
    ("required", "What's the weather in Paris? Use the GetWeather tool.", "required",
     "tool_calls"),
    ("named", EVENT_PROMPT.replace("create_event", "CreateEvent"), named("CreateEvent"), "stop"),
]


@pytest.mark.parametrize("prompt,tc,finish", [c[1:] for c in PARSE_CASES],
                         ids=[c[0] for c in PARSE_CASES])
def test_sdk_parse_pydantic_tools(openai_client, model_id, prompt, tc, finish):
    where = f"chat.completions.parse(), pydantic tools, tool_choice {tc!r}"
    r = openai_client.chat.completions.parse(
        model=model_id, messages=msgs(prompt), tools=PYDANTIC_TOOLS, tool_choice=tc,
        parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=0)
    c = r.choices[0]
    calls = check_calls(where, c, PYDANTIC_TOOLS, finish, count=1)
    for call, (name, arguments, _) in zip(c.message.tool_calls, calls):
        parsed = call.function.parsed_arguments
        assert isinstance(parsed, MODELS[name]), (
            f"{where}: parsed_arguments {parsed!r} is not a {name}: {clip(arguments)}")
        assert parsed == MODELS[name].model_validate_json(arguments), (
            f"{where}: parsed_arguments {parsed!r} != {clip(arguments)}")
    if isinstance(tc, dict):
        assert [n for n, _, _ in calls] == ["CreateEvent"] * len(calls), f"{where}: {calls}"


# --- round trip -----------------------------------------------------------------------------

def test_round_trip_call_then_answer(openai_client, model_id):
    first = chat(openai_client, model_id, WEATHER_PROMPT, [WEATHER], tool_choice="required",
                 parallel_tool_calls=False)
    check_calls("round trip, first turn", first.choices[0], [WEATHER], "tool_calls", count=1)
    msg = first.choices[0].message
    call = msg.tool_calls[0]
    history = msgs(WEATHER_PROMPT) + [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    second = chat(openai_client, model_id, history, [WEATHER], tool_choice="none",
                  max_tokens=TEXT_MAX_TOKENS)
    check_text(f"round trip, second turn after {clip(history)}", second.choices[0], markup=False)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens, (
        f"the second prompt (with the call and its result) is not longer: "
        f"{first.usage} then {second.usage}")


# --- legacy functions / function_call -------------------------------------------------------

FUNCTIONS = [WEATHER["function"], VOLUME["function"]]


def legacy(client, model, prompt, function_call, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=msgs(prompt), functions=FUNCTIONS,
                                          function_call=function_call, **kw)


def check_function_call(where, choice, finish, name=None):
    m = choice.message
    ctx = f"{where}\nmessage: {clip(as_dict(m))}\nfinish_reason: {choice.finish_reason!r}"
    assert choice.finish_reason == finish, f"finish_reason {choice.finish_reason!r}, want {finish!r}: {ctx}"
    assert m.function_call is not None, f"no function_call: {ctx}"
    assert not m.tool_calls, f"tool_calls set in a functions request: {ctx}"
    if name is not None:
        assert m.function_call.name == name, f"function_call to {m.function_call.name!r}: {ctx}"
    return valid_call(by_name(FUNCTIONS), m.function_call, m.content, where)


def test_legacy_function_call_named(openai_client, model_id):
    r = legacy(openai_client, model_id, WEATHER_PROMPT, {"name": "get_weather"})
    c = r.choices[0]
    check_function_call("functions, function_call named", c, "stop", "get_weather")
    assert c.message.tool_calls is None, f"tool_calls {c.message.tool_calls!r}, want None"
    assert c.message.content in (None, ""), f"text alongside a forced function_call: {clip(as_dict(c.message))}"


def test_legacy_function_call_auto(openai_client, model_id):
    r = legacy(openai_client, model_id, WEATHER_PROMPT, "auto", max_tokens=TEXT_MAX_TOKENS * 2)
    c = r.choices[0]
    if c.message.function_call is not None:
        check_function_call("functions, function_call auto", c, "function_call")
    else:
        check_text("functions, function_call auto", c)


def test_legacy_function_call_none(openai_client, model_id):
    r = legacy(openai_client, model_id, WEATHER_PROMPT, "none", max_tokens=TEXT_MAX_TOKENS)
    check_text("functions, function_call none", r.choices[0], markup=False)


def test_functions_with_tools_refused(openai_client, model_id):
    expect_400(openai_client, model_id, "functions and tools together",
               functions=FUNCTIONS)


# --- tools without parameters ---------------------------------------------------------------

def test_tool_without_parameters(openai_client, model_id):
    r = chat(openai_client, model_id, "Check that the service is up. Use the ping tool.", [PING],
             tool_choice="required", parallel_tool_calls=False)
    (_, _, args), = check_calls("ping (no parameters), required", r.choices[0], [PING],
                                "tool_calls", name="ping", count=1)
    assert isinstance(args, dict), f"ping arguments {args!r}"


def test_name_of_64_chars_accepted(openai_client, model_id):
    name = ("Ab0_-" * 13)[:64]
    t = tool(name, "Check that the service is up.")
    r = chat(openai_client, model_id, "Check that the service is up.", [t],
             tool_choice=named(name), parallel_tool_calls=False)
    check_calls("a 64-character name, named", r.choices[0], [t], "stop", name=name, count=1)


# --- errors ---------------------------------------------------------------------------------

def strict_tool(params):
    return tool("f", "A function.", params, strict=True)


TOOL_ERRORS = [  # (id, tools, param, the message names these keywords, contains these)
    ("type_retrieval", [{"type": "retrieval", "function": WEATHER["function"]}], "tools[0].type",
     (), ()),
    ("type_code_interpreter", [{"type": "code_interpreter"}], "tools[0].type", (), ()),
    ("name_with_space", [tool("get weather", "x", WEATHER_PARAMS)], "tools[0].function.name",
     (), ()),
    ("name_65_chars", [tool("n" * 65, "x", WEATHER_PARAMS)], "tools[0].function.name", (), ()),
    ("second_tool_bad_name", [WEATHER, tool("set volume", "x", VOLUME_PARAMS)],
     "tools[1].function.name", (), ()),
    ("duplicate_names", [WEATHER, tool("get_weather", "again", VOLUME_PARAMS)], "tools", (), ()),
    ("parameters_a_string", [tool("f", "x", "object")], "tools[0].function.parameters", (), ()),
    ("parameters_an_array", [tool("f", "x", [{"type": "object"}])],
     "tools[0].function.parameters", (), ()),
    ("unsupported_not", [tool("f", "x", {"type": "object", "properties": {"a": {"not": {}}}})],
     "tools[0].function.parameters", ("not",), ()),
    ("strict_without_additional_properties_false",
     [strict_tool({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})],
     "tools[0].function.parameters", (), ("additionalProperties",)),
    ("129_tools", [tool(f"t{i}", None) for i in range(129)], "tools", (), ()),
]


@pytest.mark.parametrize("tools,param,names,contains", [e[1:] for e in TOOL_ERRORS],
                         ids=[e[0] for e in TOOL_ERRORS])
def test_bad_tools_refused(openai_client, model_id, tools, param, names, contains):
    expect_400(openai_client, model_id, f"tools {clip(tools, 600)}", param, names, contains,
               tools=tools)


@pytest.mark.parametrize("tc", ["required", named("get_weather")], ids=["required", "named"])
def test_tool_choice_without_tools_refused(openai_client, model_id, tc):
    expect_400(openai_client, model_id, f"tool_choice {tc!r} without tools", "tool_choice",
               tools=None, tool_choice=tc)


def test_named_unknown_function_refused(openai_client, model_id):
    expect_400(openai_client, model_id, "named tool_choice of an unknown function", "tool_choice",
               tool_choice=named("no_such_tool"))


def test_logprobs_with_tools_refused(openai_client, model_id):
    expect_400(openai_client, model_id, "logprobs with tools", "logprobs", logprobs=True,
               tool_choice="required")


def test_response_format_with_tools_refused(openai_client, model_id):
    rf = {"type": "json_schema", "json_schema": {"name": "w", "strict": True,
                                                 "schema": EVENT_PARAMS}}
    expect_400(openai_client, model_id, "response_format json_schema with tools", "response_format",
               response_format=rf)


def test_legacy_completions_refuse_tools(openai_client, model_id):
    try:
        r = openai_client.completions.create(model=model_id, prompt="Hello", max_tokens=4,
                                             extra_body={"tools": [WEATHER]})
        pytest.fail(f"/v1/completions accepted tools: {r.choices[0].text!r}", pytrace=False)
    except openai.BadRequestError as e:
        check_400(e, "/v1/completions with tools", "tools")
