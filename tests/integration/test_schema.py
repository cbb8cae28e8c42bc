"""Golden tests: kolm's wire output validated against OpenAI's published OpenAPI spec.

The spec is ../shared/openai/openapi.yaml beside the repository (REPO.parent / "shared"
/ "openai" / "openapi.yaml"; CI has the same tree). It is OpenAPI 3.1, whose schema
objects are JSON Schema 2020-12, so the document is registered as one `referencing`
resource and "#/components/schemas/X" refs resolve inside it. One translation is
applied, and only this one: the file still carries OpenAPI 3.0's `nullable: true` in
111 places (e.g. CreateChatCompletionStreamResponse.choices[].finish_reason and
.usage). 3.1 dropped that keyword, and a 2020-12 validator ignores it, which would
reject the null that the spec's authors (and OpenAI's own API) mean to allow. So a
schema `{..., nullable: true}` becomes `{anyOf: [{...}, {type: "null"}]}`; `nullable:
false` is dropped. Nothing else is changed: no property, `required` or `enum` is
removed, `x-` keys are left in place (2020-12 ignores unknown keywords), and formats
are asserted where jsonschema knows them.

validate(name, obj) checks obj against components.schemas[name] and then, in a second
pass, that obj carries no key the spec does not declare (the spec's schemas are open,
so a misspelt optional field would otherwise pass); the two failures are reported
apart. To add a case: get a body from the server and call validate("SchemaName", body).
"""

import functools
import json

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

from conftest import REPO

SPEC_PATH = REPO.parent / "shared" / "openai" / "openapi.yaml"
SPEC_URI = "urn:openai:openapi"          # the spec as published (plus the nullable fix)
CLOSED_URI = "urn:openai:openapi:closed"  # the same, objects closed to undeclared keys


# --- the spec -----------------------------------------------------------------------

def _translate_nullable(node):
    """OpenAPI 3.0 `nullable` leftovers -> JSON Schema 2020-12 (see the module doc)."""
    if isinstance(node, list):
        return [_translate_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _translate_nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


# Keywords whose value is a schema (or a map / list of schemas) applied to a *child*
# of the instance: the places where a new instance location begins.
_CHILD_MAPS = ("properties", "patternProperties")
_CHILD_ONE = ("items", "additionalProperties", "unevaluatedProperties", "contains",
              "propertyNames", "unevaluatedItems")
_CHILD_LIST = ("prefixItems",)
# Keywords whose subschemas apply in place, to the same instance.
_INPLACE_LISTS = ("allOf", "anyOf", "oneOf")
_INPLACE_ONE = ("not", "if", "then", "else")


def _close_objects(doc):
    """A copy of doc where each schema at the start of an instance location (a property
    value, an array item, ...; not a component, nor an allOf/anyOf/oneOf member, which
    apply in place) gets unevaluatedProperties: false when, through its in-place
    subschemas and local $refs, it declares `properties` and no free-form object.
    unevaluatedProperties sees through $ref and the combinators, so a key declared by
    any applicable branch counts; an undeclared one fails."""

    def deref(ref):
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def inplace(node, seen):
        """node and every subschema applied in place to the same instance."""
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        yield node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            yield from inplace(deref(ref), seen)
        for k in _INPLACE_LISTS:
            for sub in node.get(k) or ():
                yield from inplace(sub, seen)
        for k in _INPLACE_ONE:
            yield from inplace(node.get(k), seen)

    def closable(node):
        parts = list(inplace(node, set()))
        if any({"additionalProperties", "unevaluatedProperties", "patternProperties"} & p.keys()
               for p in parts):
            return False
        if not any(isinstance(p.get("properties"), dict) for p in parts):
            return False
        # a free-form object branch ({"type": "object"} alone) allows any key
        return not any(p.get("type") == "object" and "properties" not in p and "$ref" not in p
                       and not any(k in p for k in _INPLACE_LISTS) for p in parts)

    def walk(node, entry):
        if isinstance(node, list):
            return [walk(x, False) for x in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if k in _CHILD_MAPS and isinstance(v, dict):
                out[k] = {name: walk(sub, True) for name, sub in v.items()}
            elif k in _CHILD_ONE and isinstance(v, dict):
                out[k] = walk(v, True)
            elif k in _CHILD_LIST and isinstance(v, list):
                out[k] = [walk(sub, True) for sub in v]
            else:
                out[k] = walk(v, False)
        if entry and closable(node):
            out["unevaluatedProperties"] = False
        return out

    return walk(doc, False), closable


@functools.lru_cache(maxsize=None)
def spec():
    """The parsed spec document (as published, before any translation)."""
    if not SPEC_PATH.is_file():
        pytest.fail(f"OpenAI spec not found at {SPEC_PATH} (expected beside the repository "
                    f"in ../shared/openai/)", pytrace=False)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SPEC_PATH, "rb") as f:
        doc = yaml.load(f, Loader=loader)
    version = str(doc.get("openapi", ""))
    if not version.startswith("3.1."):
        # 3.0 schema objects are not JSON Schema 2020-12 (exclusiveMinimum as a
        # boolean, no type arrays, ...): translating them needs more than nullable.
        pytest.fail(f"{SPEC_PATH}: openapi {version!r}; these tests handle OpenAPI 3.1 only",
                    pytrace=False)
    return doc


@functools.lru_cache(maxsize=None)
def translated():
    """The spec with the nullable translation (the document the validators use)."""
    return _translate_nullable(spec())


@functools.lru_cache(maxsize=None)
def _closed():
    return _close_objects(translated())


@functools.lru_cache(maxsize=None)
def _registry():
    return referencing.Registry().with_resources([
        (SPEC_URI, DRAFT202012.create_resource(translated())),
        (CLOSED_URI, DRAFT202012.create_resource(_closed()[0])),
    ])


@functools.lru_cache(maxsize=None)
def validator(schema_name, closed=False):
    if schema_name not in spec()["components"]["schemas"]:
        raise KeyError(f"no components.schemas.{schema_name} in {SPEC_PATH}")
    uri = CLOSED_URI if closed else SPEC_URI
    root = {"$ref": f"{uri}#/components/schemas/{schema_name}"}
    # the top level is an instance location like any property value: close it too
    if closed and _closed()[1](translated()["components"]["schemas"][schema_name]):
        root["unevaluatedProperties"] = False
    cls = jsonschema.Draft202012Validator
    return cls(root, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def _describe(schema_name, errors, limit=8):
    lines = []
    for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])[:limit]:
        keywords = "/".join(str(p) for p in e.absolute_schema_path)
        lines.append(f"  at {e.json_path}: {e.message}\n    (keywords from {schema_name}: "
                     f"{keywords})")
        for sub in (e.context or [])[:6]:  # why each anyOf/oneOf branch failed
            lines.append(f"      branch {sub.relative_schema_path[0]}: at {sub.json_path}: "
                         f"{sub.message}")
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    return "\n".join(lines)


def validate(schema_name, obj, closed=True):
    """Raise AssertionError naming each JSON path where obj breaks
    components.schemas[schema_name]; with closed (the default) also where obj holds
    a key that the spec does not declare."""
    shown = json.dumps(obj)[:2000]
    errors = list(validator(schema_name).iter_errors(obj))
    if errors:
        raise AssertionError(f"{schema_name}: {len(errors)} violation(s) of the OpenAI spec\n"
                             f"{_describe(schema_name, errors)}\nobject: {shown}")
    if closed:
        errors = list(validator(schema_name, closed=True).iter_errors(obj))
        if errors:
            raise AssertionError(f"{schema_name}: key(s) the OpenAI spec does not declare\n"
                                 f"{_describe(schema_name, errors)}\nobject: {shown}")


def response_schema(path, method, content_type="application/json", status="200"):
    """The components.schemas name that the spec's paths give for a response."""
    op = spec()["paths"][path][method]
    ref = op["responses"][status]["content"][content_type]["schema"]["$ref"]
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    return ref[len(prefix):]


# --- the validator itself -------------------------------------------------------------

SCHEMAS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
           "CreateCompletionResponse", "ErrorResponse", "ListModelsResponse", "Model"]


def test_spec_paths_name_the_schemas():
    """The schema names below are the ones the spec's paths use for those responses."""
    assert response_schema("/chat/completions", "post") == "CreateChatCompletionResponse"
    assert response_schema("/chat/completions", "post",
                           "text/event-stream") == "CreateChatCompletionStreamResponse"
    assert response_schema("/models", "get") == "ListModelsResponse"
    assert response_schema("/completions", "post") == "CreateCompletionResponse"
    assert response_schema("/models/{model}", "get") == "Model"
    assert "ErrorResponse" in spec()["components"]["schemas"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_spec_schemas_are_valid_2020_12(name):
    """The (translated) component schemas are themselves valid JSON Schema 2020-12."""
    jsonschema.Draft202012Validator.check_schema(translated()["components"]["schemas"][name])


def _completion_example():
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _chunk_example():
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None,
                         "finish_reason": None}], "usage": None}


def test_validator_catches_violations():
    """Each kind of breakage the server tests rely on is caught, with its JSON path."""
    validate("CreateChatCompletionResponse", _completion_example())
    validate("CreateChatCompletionStreamResponse", _chunk_example())
    cases = [
        ("CreateChatCompletionResponse", lambda o: o["choices"][0].pop("finish_reason"),
         "$.choices[0]"),
        ("CreateChatCompletionResponse",
         lambda o: o["choices"][0].__setitem__("finish_reason", "done"),
         "$.choices[0].finish_reason"),
        ("CreateChatCompletionResponse", lambda o: o.__setitem__("object", "chat.completion.chunk"),
         "$.object"),
        ("CreateChatCompletionResponse", lambda o: o["usage"].__setitem__("total_tokens", "2"),
         "$.usage.total_tokens"),
        ("CreateChatCompletionResponse", lambda o: o["choices"][0]["message"].pop("refusal"),
         "$.choices[0].message"),
        ("CreateChatCompletionStreamResponse",
         lambda o: o["choices"][0].__setitem__("finish_reason", "eos"),
         "$.choices[0].finish_reason"),
        ("CreateChatCompletionStreamResponse",
         lambda o: o.__setitem__("usage", {"prompt_tokens": 1}), "$.usage"),
        ("CreateChatCompletionStreamResponse", lambda o: o.__setitem__("created", 1.5),
         "$.created"),
    ]
    for name, mutate, where in cases:
        obj = _completion_example() if name == "CreateChatCompletionResponse" else _chunk_example()
        mutate(obj)
        with pytest.raises(AssertionError, match="violation") as ei:
            validate(name, obj)
        assert f"at {where}" in str(ei.value), str(ei.value)
    # the nullable translation accepts exactly null besides the declared type
    for value in (None, "stop"):
        obj = _chunk_example()
        obj["choices"][0]["finish_reason"] = value
        validate("CreateChatCompletionStreamResponse", obj)
    # undeclared keys: open spec passes, the closed pass reports them
    obj = _completion_example()
    obj["choices"][0]["message"]["reasoning"] = "x"
    validate("CreateChatCompletionResponse", obj, closed=False)
    with pytest.raises(AssertionError, match="does not declare") as ei:
        validate("CreateChatCompletionResponse", obj)
    assert "at $.choices[0].message" in str(ei.value)


# --- the server's output ------------------------------------------------------------------

def _chat_body(model_id, content="Say hi.", max_tokens=4, **kw):
    return {"model": model_id, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, **kw}


def _post_json(srv, body):
    status, headers, raw = srv.request("POST", "/v1/chat/completions", body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    return status, json.loads(raw)


@pytest.mark.parametrize("extra", [
    {},
    {"max_tokens": 1},
    {"stop": ["\n"], "max_tokens": 6},
    {"max_completion_tokens": 3, "seed": 1, "top_p": 0.9},
    {"stream": False},
], ids=["plain", "one_token", "stop", "mct_seed", "stream_false"])
def test_chat_completion_matches_spec(kolm_server, extra):
    body = _chat_body(kolm_server.model_id, **extra)
    status, j = _post_json(kolm_server, body)
    assert status == 200, j
    validate("CreateChatCompletionResponse", j)
    assert j["model"] == kolm_server.model_id
    assert len(j["choices"]) == 1 and j["choices"][0]["index"] == 0
    u = j["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_chat_completion_content_parts_matches_spec(kolm_server):
    body = _chat_body(kolm_server.model_id, max_tokens=2)
    body["messages"] = [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Say "},
                                                     {"type": "text", "text": "hi."}]}]
    status, j = _post_json(kolm_server, body)
    assert status == 200, j
    validate("CreateChatCompletionResponse", j)


def test_chat_completion_sdk_raw_matches_spec(openai_client, model_id):
    """Through the official SDK: the body it received, and its parse of it."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3,
        temperature=0)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    parsed = raw.parse()
    validate("CreateChatCompletionResponse", parsed.to_dict())
    assert parsed.choices[0].message.role == "assistant"


def _sse_events(raw):
    """`data:` payloads of an SSE body in order; ':' comment lines and other fields are
    ignored. Also checks that each event is one data line followed by a blank line."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-200:]!r}"
    out = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        data = [ln for ln in lines if ln.startswith("data:")]
        assert len(data) == 1, f"an SSE event without exactly one data line: {block!r}"
        out.append(data[0][len("data:"):].removeprefix(" "))
    return out


def without_receipt(chunks):
    """kolm's one documented extension of a stream: the last chunk carries its signed
    receipt as "kolm_receipt" (docs/kolm-format.md). It must be there, a string, and on
    no other chunk; the chunks are returned without it for the spec check."""
    assert chunks, "no chunk before [DONE]"
    *body, last = [dict(c) for c in chunks]
    for i, c in enumerate(body):
        assert "kolm_receipt" not in c, f"chunk {i} of {len(chunks)} carries a receipt: {c}"
    assert isinstance(last.pop("kolm_receipt", None), str), f"the last chunk has no kolm_receipt: {last}"
    return body + [last]


def check_stream(events, include_usage, n=1):
    """The stream framing rules for n choices, and every chunk against the spec.
    Returns the chunks."""
    assert events and events[-1] == "[DONE]", (
        f"stream does not end with data: [DONE]: {events[-3:]}")
    assert "[DONE]" not in events[:-1], "data: [DONE] before the end"
    chunks = without_receipt([json.loads(e) for e in events[:-1]])
    for i, c in enumerate(chunks):
        try:
            validate("CreateChatCompletionStreamResponse", c)
        except AssertionError as e:
            raise AssertionError(f"chunk {i} of {len(chunks)}: {e}") from None
    first = chunks[0]
    for c in chunks:
        assert (c["id"], c["created"], c["model"]) == (
            first["id"], first["created"], first["model"]), c
    assert first["choices"] and first["choices"][0]["delta"].get("role") == "assistant", first

    if include_usage:
        *body, last = chunks
        for i, c in enumerate(body):
            assert "usage" in c and c["usage"] is None, f"chunk {i}: usage must be null: {c}"
            assert c["choices"], f"chunk {i}: empty choices before the usage chunk"
        assert last["choices"] == [], f"the usage chunk must have choices == []: {last}"
        assert isinstance(last.get("usage"), dict), f"the last chunk carries no usage: {last}"
        u = last["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    else:
        body = chunks
        for i, c in enumerate(chunks):
            assert c.get("usage") is None, f"chunk {i}: usage without include_usage: {c}"
            assert c["choices"], f"chunk {i}: empty choices without include_usage"

    # per choice: finish_reason non-null exactly once, on that choice's last chunk
    per_choice = {}
    for i, c in enumerate(body):
        for ch in c["choices"]:
            per_choice.setdefault(ch["index"], []).append((i, ch))
    assert sorted(per_choice) == list(range(n)), f"choice indexes {sorted(per_choice)}"
    for idx, seq in per_choice.items():
        assert seq[0][1]["delta"].get("role") == "assistant", (
            f"choice {idx}: its first chunk has no delta.role 'assistant': {seq[0][1]}")
        finished = [i for i, ch in seq if ch["finish_reason"] is not None]
        assert len(finished) == 1, f"choice {idx}: finish_reason set in chunks {finished}"
        assert finished[0] == seq[-1][0], (
            f"choice {idx}: finish_reason in chunk {finished[0]}, its last chunk is {seq[-1][0]}")
        roles = [i for i, ch in seq if "role" in ch["delta"]]
        assert roles == [seq[0][0]], f"choice {idx}: delta.role in chunks {roles}"
    if include_usage:
        pieces = sum(1 for c in body for ch in c["choices"] if ch["delta"].get("content"))
        assert chunks[-1]["usage"]["completion_tokens"] >= pieces
    return chunks


@pytest.mark.parametrize("stream_options", [
    None,
    {"include_usage": True},
    {"include_usage": False},
], ids=["no_stream_options", "include_usage", "include_usage_false"])
@pytest.mark.parametrize("extra", [{}, {"stop": ["\n"], "max_tokens": 8}], ids=["length", "stop"])
def test_stream_matches_spec(kolm_server, stream_options, extra):
    body = _chat_body(kolm_server.model_id, stream=True, **extra)
    if stream_options is not None:
        body["stream_options"] = stream_options
    status, headers, raw = kolm_server.request("POST", "/v1/chat/completions", body)
    assert status == 200, raw[:500]
    assert headers.get("content-type", "").startswith("text/event-stream"), headers
    include_usage = bool(stream_options and stream_options["include_usage"])
    chunks = check_stream(_sse_events(raw), include_usage)

    # the streamed text and finish_reason are those of the same request unstreamed
    plain = dict(body, stream=False)
    plain.pop("stream_options", None)
    status, j = _post_json(kolm_server, plain)
    assert status == 200, j
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == j["choices"][0]["message"]["content"]
    fin = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert fin == [j["choices"][0]["finish_reason"]]
    if include_usage:
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        assert [chunks[-1]["usage"][k] for k in keys] == [j["usage"][k] for k in keys]


def test_stream_sdk_chunks_match_spec(openai_client, model_id):
    """The chunks as the official SDK parses them still match the spec."""
    stream = openai_client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = without_receipt([c.to_dict() for c in stream])
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


# --- n choices and logprobs ------------------------------------------------------------------

def _check_chat_logprobs(lp, n_tokens, top):
    assert lp is not None and lp["refusal"] is None, lp
    assert len(lp["content"]) == n_tokens, lp
    for e in lp["content"]:
        assert len(e["top_logprobs"]) == top, e


@pytest.mark.parametrize("top", [0, 3])
def test_chat_n_logprobs_matches_spec(kolm_server, top):
    body = _chat_body(kolm_server.model_id, max_tokens=4, n=2, temperature=1.0, seed=9,
                      logprobs=True, top_logprobs=top)
    status, j = _post_json(kolm_server, body)
    assert status == 200, j
    validate("CreateChatCompletionResponse", j)
    assert [c["index"] for c in j["choices"]] == [0, 1]
    for c in j["choices"]:
        assert c["finish_reason"] == "length"
        _check_chat_logprobs(c["logprobs"], 4, top)
    assert j["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "include_usage"])
def test_stream_n_logprobs_matches_spec(kolm_server, include_usage):
    body = _chat_body(kolm_server.model_id, max_tokens=4, n=2, temperature=1.0, seed=9,
                      logprobs=True, top_logprobs=2, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, headers, raw = kolm_server.request("POST", "/v1/chat/completions", body)
    assert status == 200, raw[:500]
    assert headers.get("content-type", "").startswith("text/event-stream"), headers
    chunks = check_stream(_sse_events(raw), include_usage, n=2)
    # each content delta carries the logprobs of its tokens; together those of the
    # non-streamed response (same seed)
    streamed = {0: [], 1: []}
    for c in chunks:
        for ch in c["choices"]:
            if ch["delta"].get("content"):
                lp = ch["logprobs"]
                assert lp is not None, ch
                assert "".join(e["token"] for e in lp["content"]) == ch["delta"]["content"]
                streamed[ch["index"]].extend(lp["content"])
    plain = dict(body, stream=False)
    plain.pop("stream_options", None)
    status, j = _post_json(kolm_server, plain)
    assert status == 200, j
    for c in j["choices"]:
        want = c["logprobs"]["content"]
        got = streamed[c["index"]]
        assert [e["token"] for e in got] == [e["token"] for e in want]
        assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want], abs=1e-4)


def test_stream_sdk_n_logprobs_chunks_match_spec(openai_client, model_id):
    stream = openai_client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3,
        temperature=0, n=2, logprobs=True, top_logprobs=1, stream=True,
        stream_options={"include_usage": True})
    chunks = without_receipt([c.to_dict() for c in stream])
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


# --- legacy completions -------------------------------------------------------------------------

def _legacy_body(model_id, **kw):
    return {"model": model_id, "prompt": "Say hi.", "max_tokens": 4, "temperature": 0, **kw}


@pytest.mark.parametrize("extra", [
    {},
    {"logprobs": 2},
    {"logprobs": 0},
    {"prompt": ["Say hi.", "Once upon a time"], "n": 2, "best_of": 2, "seed": 3,
     "temperature": 1.0},
    {"prompt": [[2, 818, 5279], [2, 1000]]},
    {"echo": True, "stop": ["\n"]},
], ids=["plain", "logprobs", "logprobs_0", "prompts_n2", "token_ids", "echo_stop"])
def test_completion_matches_spec(kolm_server, extra):
    body = _legacy_body(kolm_server.model_id, **extra)
    status, headers, raw = kolm_server.request("POST", "/v1/completions", body)
    assert status == 200, raw[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(raw)
    validate("CreateCompletionResponse", j)
    n_prompts = len(body["prompt"]) if isinstance(body["prompt"], list) and (
        isinstance(body["prompt"][0], (str, list))) else 1
    assert [c["index"] for c in j["choices"]] == list(range(n_prompts * body.get("n", 1)))
    for c in j["choices"]:
        if "logprobs" in extra:
            lp = c["logprobs"]
            assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) \
                == len(lp["top_logprobs"]) >= 1
        else:
            assert c["logprobs"] is None
    u = j["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_completion_sdk_raw_matches_spec(openai_client, model_id):
    raw = openai_client.completions.with_raw_response.create(
        model=model_id, prompt="Say hi.", max_tokens=3, temperature=0, logprobs=1)
    validate("CreateCompletionResponse", raw.http_response.json())
    parsed = raw.parse()
    validate("CreateCompletionResponse", parsed.to_dict())
    assert parsed.object == "text_completion"


# --- errors ------------------------------------------------------------------------------

def _bad_requests(model_id):
    """(id, method, path, body, HTTP status, error.param, error.code); None = not checked."""
    good = _chat_body(model_id, max_tokens=1)
    chat = "/v1/chat/completions"
    return [
        ("bad_temperature_type", "POST", chat, dict(good, temperature="hot"), 400, "temperature",
         "invalid_type"),
        ("temperature_out_of_range", "POST", chat, dict(good, temperature=3), 400, "temperature",
         "invalid_value"),
        ("unknown_field", "POST", chat, dict(good, bogus=1), 400, "bogus", "unknown_parameter"),
        ("missing_messages", "POST", chat, {k: v for k, v in good.items() if k != "messages"},
         400, "messages", "missing_required_parameter"),
        ("bad_role", "POST", chat, dict(good, messages=[{"role": "robot", "content": "hi"}]),
         400, "messages[0].role", None),
        ("n_0", "POST", chat, dict(good, n=0), 400, "n", None),
        ("stream_options_without_stream", "POST", chat,
         dict(good, stream_options={"include_usage": True}), 400, "stream_options", None),
        ("invalid_json", "POST", chat, "{not json", 400, None, "invalid_json"),
        ("context_length", "POST", chat, dict(good, max_tokens=10 ** 6), 400, "messages",
         "context_length_exceeded"),
        ("context_length_stream", "POST", chat, dict(good, max_tokens=10 ** 6, stream=True), 400,
         "messages", "context_length_exceeded"),
        ("unknown_model", "POST", chat, dict(good, model="no-such-model"), 404, "model",
         "model_not_found"),
        ("unknown_model_stream", "POST", chat, dict(good, model="no-such-model", stream=True),
         404, "model", "model_not_found"),
        ("retrieve_unknown_model", "GET", "/v1/models/no-such-model", None, 404, None,
         "model_not_found"),
        ("unknown_url", "GET", "/v1/no-such-endpoint", None, 404, None, None),
        ("method_not_allowed", "DELETE", "/v1/models", None, 405, None, None),
    ]


_BAD_IDS = [c[0] for c in _bad_requests("m")]


@pytest.mark.parametrize("case", _BAD_IDS)
def test_error_body_matches_spec(kolm_server, case):
    _, method, path, body, want_status, want_param, want_code = next(
        c for c in _bad_requests(kolm_server.model_id) if c[0] == case)
    status, headers, raw = kolm_server.request(method, path, body)
    assert status == want_status, raw[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(raw)
    validate("ErrorResponse", j)
    err = j["error"]
    assert err["message"], j
    if want_param is not None:
        assert err["param"] == want_param, j
    if want_code is not None:
        assert err["code"] == want_code, j


def test_error_sdk_matches_spec(openai_client, model_id):
    import openai
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    validate("ErrorResponse", ei.value.response.json())
    with pytest.raises(openai.BadRequestError) as ei:
        openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    validate("ErrorResponse", ei.value.response.json())
    assert ei.value.param == "max_tokens"


# --- models ------------------------------------------------------------------------------

def test_list_models_matches_spec(kolm_server):
    status, headers, raw = kolm_server.request("GET", "/v1/models")
    assert status == 200, raw[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(raw)
    validate("ListModelsResponse", j)
    assert [m["id"] for m in j["data"]] == [kolm_server.model_id]
    for m in j["data"]:
        validate("Model", m)


def test_retrieve_model_matches_spec(kolm_server):
    mid = kolm_server.model_id
    status, headers, raw = kolm_server.request("GET", f"/v1/models/{mid}")
    assert status == 200, raw[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(raw)
    validate("Model", j)
    _, _, listed = kolm_server.request("GET", "/v1/models")
    assert j == json.loads(listed)["data"][0]


def test_models_sdk_match_spec(openai_client, model_id):
    page = openai_client.models.with_raw_response.list()
    validate("ListModelsResponse", page.http_response.json())
    m = openai_client.models.with_raw_response.retrieve(model_id)
    validate("Model", m.http_response.json())
    assert m.parse().id == model_id
