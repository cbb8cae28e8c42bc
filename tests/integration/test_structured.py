"""Structured outputs (grammar-constrained decoding) through the official `openai` SDK
against the real `kolm serve`:

- response_format json_object: the content is one JSON object;
- response_format json_schema: a corpus of schemas (CORPUS, easy to hard) each run
  greedily and sampled (temperature 1.5, n=3, seeded): every choice parses and
  validates against its schema (Draft 2020-12, formats checked, numbers compared
  exactly as decimals); the root object's keys come in schema order and, with
  additionalProperties absent or false, only the listed ones. The document is whole
  even when max_tokens cuts it short: near the end of the budget the grammar keeps
  only tokens that can still finish it (finish_reason "length" then, "stop" when the
  model ended on its own);
- streaming (stream=True, the SDK's stream() helper) and the SDK's pydantic parse();
- 400s: unsupported keywords refused (never ignored), invalid schemas, strict-mode
  violations and malformed response_format objects, each naming its param and keyword;
  legacy POST /v1/completions refuses response_format;
- together with n, logprobs, stop and a too-small max_tokens;
- /metrics: the worker's grammar mask, mask-time, compile and compile-cache counters.

The model is tiny, so prompts say what JSON to produce (it gives the model a reason to
close the document), outputs are kept short (strings mostly carry maxLength, arrays
maxItems) and the sampled runs batch their three choices in one request."""

import json
import re
import time
import uuid
from collections import namedtuple
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal, Optional

import jsonschema
import openai
import pydantic
import pytest
from jsonschema import Draft202012Validator

MAX_TOKENS = 300
SAMPLED_T = 1.5
SAMPLED_N = 3
SEEDS = (7, 1234, 90001)  # the sampled run of corpus case i uses SEEDS[i % 3]
CHAT_ERR_PROMPT = "Say hi as JSON."


# --- validation --------------------------------------------------------------------------

FORMATS = jsonschema.FormatChecker()  # date, uuid, ipv4 built in; the rest below

_TIME = r"([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_TIME_RE = re.compile(_TIME)
_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt]" + _TIME)
_EMAIL_RE = re.compile(r"[^\s@\x00-\x1f\x7f]+@[^\s@\x00-\x1f\x7f]+")


@FORMATS.checks("date-time")
def _is_datetime(x):
    """RFC 3339 date-time (jsonschema checks it only with rfc3339-validator installed)."""
    if not isinstance(x, str):
        return True
    m = _DATETIME_RE.fullmatch(x)
    if not m:
        return False
    try:
        date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return False
    return True


@FORMATS.checks("time")
def _is_time(x):
    """RFC 3339 full-time, offset included (without rfc3339-validator, FormatChecker's
    'time' is draft 3's %H:%M:%S)."""
    return not isinstance(x, str) or bool(_TIME_RE.fullmatch(x))


@FORMATS.checks("email")
def _is_email(x):
    """local@domain, both non-empty, no whitespace or control characters (the built-in
    check is only '@' in x)."""
    return not isinstance(x, str) or bool(_EMAIL_RE.fullmatch(x))


def _is_integer(checker, x):
    """JSON Schema integers: any number with a zero fractional part (3, 3.0, 1e2)."""
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, Decimal) and x.is_finite()
                                  and x == x.to_integral_value())


# Numbers are parsed as Decimal, in the document and in the schema, so bounds such as
# exclusiveMaximum 1 are checked on the digits the model wrote, not on a rounded float.
ExactValidator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_doc(text):
    return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)


def schema_errors(schema, doc):
    exact = json.loads(json.dumps(schema), parse_float=Decimal)
    v = ExactValidator(exact, format_checker=FORMATS)
    return sorted((f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                   for e in v.iter_errors(doc)))


def clip(text, limit=2000):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def key_order_error(schema, doc):
    """The root object's keys must be a subsequence of the schema's properties (schema
    order; no unlisted keys when additionalProperties is absent or false)."""
    if not isinstance(schema, dict) or not isinstance(doc, dict) or "properties" not in schema:
        return None
    if schema.get("additionalProperties", False) is not False:
        return None
    props = list(schema["properties"])
    keys = list(doc)
    if keys != [k for k in props if k in doc]:
        return f"root keys {keys} are not in schema order {props} (or not all listed there)"
    return None


def check_doc(where, schema, content, finish_reason):
    """content is a complete document valid against schema, ended by the grammar (by
    the model, "stop", or closed within max_tokens, "length")."""
    msg = f"{where}\ncontent: {clip(content)}\nschema: {clip(json.dumps(schema), 1500)}"
    assert isinstance(content, str), f"no content: {msg}"
    assert finish_reason in ("stop", "length"), f"finish_reason {finish_reason!r}: {msg}"
    try:
        doc = parse_doc(content)
    except ValueError as e:
        pytest.fail(f"content is not JSON ({e}): {msg}", pytrace=False)
    errs = schema_errors(schema, doc)
    assert not errs, "content does not validate:\n  " + "\n  ".join(errs[:8]) + f"\n{msg}"
    order = key_order_error(schema, doc)
    assert order is None, f"{order}: {msg}"
    return doc


# --- requests ----------------------------------------------------------------------------

def msgs(content):
    return [{"role": "user", "content": content}]


def rf_schema(schema, name="out", strict=False):
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict}}


def chat(client, model, prompt, rf, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=msgs(prompt), response_format=rf,
                                          **kw)


ENGLISH = {"not", "if", "then", "else", "contains"}  # keywords that are also English words


def names_keyword(message, name):
    """name appears in message as a whole word; an English-word keyword only quoted
    ('not', "not", `not`) or at the end of a path (/not, .not)."""
    before = r"[\"'`/.]" if name in ENGLISH else r"(?<![A-Za-z0-9_])"
    return re.search(before + re.escape(name) + r"(?![A-Za-z0-9_])", message) is not None


def expect_400(client, model, rf, param, names=(), prompt=CHAT_ERR_PROMPT, **kw):
    """The request is refused with 400 invalid_request_error naming param; when names
    is given, the message names at least one of them (names_keyword)."""
    kw.setdefault("max_tokens", 8)
    try:
        r = chat(client, model, prompt, rf, **kw)
        if kw.get("stream"):
            r = "".join(c.choices[0].delta.content or "" for c in r if c.choices)
        else:
            r = r.choices[0].message.content
        pytest.fail(f"response_format {clip(json.dumps(rf), 1500)} was accepted (content "
                    f"{clip(r)}); want 400 with param {param!r}", pytrace=False)
    except openai.BadRequestError as e:
        err = e.body
        where = f"response_format {clip(json.dumps(rf), 1500)} -> {clip(err)}"
        assert e.status_code == 400, where
        assert isinstance(err, dict), where
        assert err.get("type") == "invalid_request_error", where
        assert err.get("param") == param, f"param {err.get('param')!r}, want {param!r}: {where}"
        message = err.get("message") or ""
        assert not names or any(names_keyword(message, n) for n in names), (
            f"the message names none of {list(names)}: {where}")
        return err


# --- the corpus --------------------------------------------------------------------------

Case = namedtuple("Case", "id prompt schema strict max_tokens", defaults=(MAX_TOKENS,))


def obj(props, required=None, additional=False):
    """An object schema; required defaults to every property and additionalProperties
    to false (OpenAI's strict rules); additional=None leaves additionalProperties out."""
    s = {"type": "object", "properties": props,
         "required": list(props) if required is None else list(required)}
    if additional is not None:
        s["additionalProperties"] = additional
    return s


def _typed(type_, kw, **bounds):
    return {"type": type_, **kw, **{k: v for k, v in bounds.items() if v is not None}}


def string(max_len=None, min_len=None, **kw):
    return _typed("string", kw, minLength=min_len, maxLength=max_len)


def integer(lo=None, hi=None, **kw):
    return _typed("integer", kw, minimum=lo, maximum=hi)


def number(lo=None, hi=None, **kw):
    return _typed("number", kw, minimum=lo, maximum=hi)


def array(items, lo=None, hi=None, **kw):
    return _typed("array", {"items": items, **kw}, minItems=lo, maxItems=hi)


def defs(schema, **d):
    return {"$defs": d, **schema}


PHONE = r"^\d{3}-\d{3}-\d{4}$"
SKU = r"^[A-Z]{3}-\d{4}$"
ADDRESS = obj({"street": string(40), "city": string(30), "zip": string(pattern=r"^\d{5}$")})
MONEY = obj({"amount": number(0, 10000), "currency": {"enum": ["USD", "EUR", "JPY"]}})

CORPUS = [
    # --- one JSON type per property --------------------------------------------------
    Case("city_string", 'What is the capital of France? Answer as JSON with a "city" field.',
         obj({"city": {"type": "string"}}), True),
    Case("age_integer", 'How old is a typical college freshman? Answer as JSON with an "age".',
         obj({"age": {"type": "integer"}}), True),
    Case("price_number", 'What does a cup of coffee cost in dollars? Answer as JSON with a '
         '"price".',
         obj({"price": {"type": "number"}}), True),
    Case("open_boolean", 'Are banks open on Sundays? Answer as JSON with a boolean "is_open".',
         obj({"is_open": {"type": "boolean"}}), True),
    Case("null_value", 'Return JSON for a person who has no middle name: "middle_name" is null.',
         obj({"first_name": string(20), "middle_name": {"type": "null"}}), True),
    Case("all_types", "Describe a fictional person as JSON.",
         obj({"name": string(30), "age": integer(), "height_m": number(),
              "active": {"type": "boolean"}, "nickname": {"type": "null"},
              "address": obj({"city": string(30)}),
              "hobbies": array(string(15), hi=3)}), True),
    Case("type_unions", "Describe a user account as JSON; unknown fields are null.",
         obj({"username": string(20), "email": {"type": ["string", "null"], "maxLength": 40},
              "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 130},
              "verified": {"type": ["boolean", "null"]}}), True),
    Case("optional_props", "Describe a famous book as JSON.",
         obj({"title": string(40), "author": string(30), "year": integer(1400, 2030),
              "isbn": string(pattern=r"^\d{13}$")}, required=["title"]), False),
    Case("no_additional_keyword", "Give one inventory line as JSON: a SKU and a quantity.",
         obj({"sku": string(pattern=SKU), "qty": integer(0, 1000)}, additional=None), False),
    # --- enum and const ----------------------------------------------------------------
    Case("enum_strings", "What is the status of an order that left the warehouse? Answer as JSON.",
         obj({"order_id": integer(1, 99999),
              "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]}}), True),
    Case("enum_numbers", "Rate a pizza restaurant as JSON.",
         obj({"stars": {"enum": [1, 2, 3, 4, 5]}, "portion_kg": {"enum": [0.25, 0.5, 1.25]},
              "offset": {"type": "integer", "enum": [-1, 0, 1]}}), True),
    Case("enum_mixed_null", "Give a task and its priority as JSON.",
         obj({"task": string(30), "priority": {"enum": ["low", "high", 3, 2.5, None, True]}}),
         True),
    Case("const_values", "Return an API health check response as JSON.",
         obj({"api": {"const": "v2"}, "build": {"const": 7}, "healthy": {"const": True},
              "deleted_at": {"const": None}, "region": string(12)}), True),
    # --- strings -----------------------------------------------------------------------
    Case("string_lengths", "Create a short user profile as JSON.",
         obj({"username": string(12, 3), "bio": string(60, 10), "initial": string(1, 1),
              "motto": string(min_len=2, max_len=2)}), True),
    Case("patterns", "Give a flight booking reference like ABC-1234 and a US phone number like "
         "555-123-4567 as JSON.",
         obj({"booking": string(pattern=SKU), "phone": string(pattern=PHONE)}), True),
    Case("pattern_unanchored", 'Return JSON with a "tag" whose value contains the letters abc, '
         'for example "xabcx".', obj({"tag": string(pattern="abc")}), True, 400),
    Case("pattern_classes", "Name a paint color and a Python variable name for it as JSON.",
         obj({"color": string(pattern=r"^(red|green|blue)-[0-9a-f]{6}$"),
              "var": string(pattern=r"^[a-z]{2,10}(_[a-z]{2,10}){0,2}$")}), True),
    Case("format_datetime", "Describe a conference talk with its start and end times as JSON.",
         obj({"title": string(40), "starts_at": string(format="date-time"),
              "ends_at": string(format="date-time")}), True),
    Case("format_date_time", "When is the next team meeting? Answer as JSON with a date and a "
         "time.",
         obj({"date": string(format="date"), "time": string(format="time")}), True),
    Case("format_ids", "Write a server login record as JSON: an id, the user's email and the "
         "client IP address.", obj({"id": string(format="uuid"), "email": string(format="email"),
                                    "ip": string(format="ipv4")}), True),
    # --- numbers -----------------------------------------------------------------------
    Case("integer_bounds", "Describe an apartment tenant as JSON.",
         obj({"age": integer(0, 120), "floor": integer(-3, 20),
              "since_year": integer(1900, 2100)}), True),
    Case("number_exclusive", "Describe a product on sale as JSON.",
         obj({"price": number(exclusiveMinimum=0), "discount": number(0, exclusiveMaximum=1),
              "storage_c": number(exclusiveMinimum=-50, exclusiveMaximum=60)}), True),
    Case("number_fractional_bounds", "Give sensor calibration settings as JSON.",
         obj({"offset": number(-2.5, 0.75), "gain": number(0.25, 0.5),
              "trim": number(exclusiveMinimum=-0.5, exclusiveMaximum=0.5)}), True),
    Case("integer_negative_exclusive", "Describe a temperature drop as JSON.",
         obj({"delta": integer(exclusiveMinimum=-10, exclusiveMaximum=-1), "level": integer(5, 5),
              "celsius": integer(-40, -20)}), True),
    # --- arrays ------------------------------------------------------------------------
    Case("array_strings", "List some fruits as JSON.", obj({"fruits": array(string(20), hi=5)}),
         True),
    Case("array_exact_count", "Name the three primary colors as JSON.",
         obj({"colors": array(string(12), 3, 3)}), True),
    Case("array_bounds", "Give a student's test scores as JSON.",
         obj({"student": string(20), "scores": array(integer(0, 100), 2, 4)}), True),
    Case("array_nullable_items", "Give four hourly temperature readings as JSON; a missing "
         "reading is null.", obj({"readings": array({"type": ["number", "null"], "minimum": -50,
                                                     "maximum": 50}, 1, 4)}), True),
    Case("matrix", "Give a 2x3 matrix of small numbers as JSON.",
         obj({"matrix": array(array(number(-10, 10), 3, 3), 2, 2)}), True, 500),
    Case("geojson_point", "Give the location of the Eiffel Tower as a GeoJSON point.",
         obj({"type": {"const": "Point"},
              "coordinates": {"type": "array", "minItems": 2, "items": False, "prefixItems": [
                  number(-180, 180), number(-90, 90)]}}), False),
    Case("prefix_items_typed_rest", "Give a spreadsheet row as JSON: a name, an age, then "
         "yes/no answers as booleans.",
         obj({"row": {"type": "array", "prefixItems": [string(20), integer(0, 150)],
                      "items": {"type": "boolean"}, "maxItems": 4}}), False),
    Case("prefix_items_open", 'Give a version record as JSON: "v1", a build number, and an '
         'optional note.',
         obj({"record": {"type": "array", "prefixItems": [{"const": "v1"}, integer(0, 9999)],
                         "minItems": 2, "maxItems": 3}}), False, 400),
    Case("root_array", "List a short grocery list as a JSON array of items with quantities.",
         array(obj({"item": string(20), "qty": integer(1, 12)}), 1, 3), False),
    Case("array_of_objects", "Write a small online order as JSON.",
         obj({"order_id": string(pattern=r"^ORD-\d{5}$"),
              "lines": array(obj({"sku": string(pattern=SKU), "qty": integer(1, 99),
                                  "unit_price": number(0, 1000)}), 1, 3),
              "total": number(0, 100000)}), True, 400),
    # --- composition -------------------------------------------------------------------
    Case("anyof_contact", "How can we reach the support team? Answer as JSON.",
         obj({"team": string(20), "contact": {"anyOf": [obj({"email": string(format="email")}),
                                                        obj({"phone": string(pattern=PHONE)})]}}),
         True),
    Case("anyof_scalars", "How many pets does a typical family have? Answer as JSON.",
         obj({"pets": {"anyOf": [integer(0, 9), {"type": "string", "enum": ["none", "many"]},
                                 {"type": "null"}]}}), True),
    Case("oneof_shapes", "Describe one geometric shape (a circle or a rectangle) as JSON.",
         obj({"shape": {"oneOf": [
             obj({"kind": {"const": "circle"}, "radius": number(exclusiveMinimum=0, maximum=100)}),
             obj({"kind": {"const": "rect"}, "width": number(0, 100),
                  "height": number(0, 100)})]}}), False),
    Case("oneof_disjoint_scalars", "Give a product identifier as JSON.",
         obj({"id": {"oneOf": [integer(1, 999), string(pattern=r"^[a-z]{3}\d{2}$")]}}), False),
    Case("allof_merge", "Write an employee record as JSON.",
         {"allOf": [{"type": "object", "properties": {"id": integer(1, 10000)},
                     "required": ["id"]},
                    {"type": "object", "properties": {"name": string(30),
                                                      "email": string(format="email")},
                     "required": ["name"]}]}, False),
    Case("allof_ref_extend", "Give a shipping address with delivery instructions as JSON.",
         defs(obj({"shipping": {"allOf": [
             {"$ref": "#/$defs/address"},
             {"type": "object", "properties": {"instructions": string(40)},
              "required": ["instructions"]}]}},
             additional=None),
             address={"type": "object", "properties": {"street": string(40), "city": string(30)},
                      "required": ["street", "city"]}), False, 400),
    # --- nesting -----------------------------------------------------------------------
    Case("nested_four_levels", "Describe a company and where its headquarters are as JSON.",
         obj({"company": obj({"name": string(30), "hq": obj({
             "address": obj({"city": string(30), "geo": obj({"lat": number(-90, 90),
                                                             "lon": number(-180, 180)})})})})}),
         True, 400),
    Case("config_object", "Write a web server configuration as JSON.",
         obj({"server": obj({"host": string(format="ipv4"), "port": integer(1, 65535),
                             "tls": obj({"enabled": {"type": "boolean"},
                                         "min_version": {"enum": ["1.2", "1.3"]}})}),
              "logging": obj({"level": {"enum": ["debug", "info", "warn", "error"]},
                              "file": {"type": ["string", "null"], "maxLength": 40}}),
              "features": array({"enum": ["gzip", "http2", "cache"]}, hi=3),
              "retries": integer(0, 10)}), True, 400),
    Case("api_response", "Return an API response listing two users as JSON.",
         obj({"status": {"enum": ["ok", "error"]}, "code": integer(100, 599),
              "data": obj({"users": array(obj({
                  "id": string(format="uuid"), "name": string(20),
                  "roles": array({"enum": ["admin", "dev", "ops"]}, hi=2)}), hi=2)}),
              "error": {"type": ["string", "null"], "maxLength": 60},
              "next_cursor": {"anyOf": [string(pattern=r"^[A-Za-z0-9]{8}$"), {"type": "null"}]}}),
         True, 500),
    Case("nullable_object", "Describe a user and their last login (or null) as JSON.",
         obj({"user": string(20), "last_login": {"anyOf": [
             obj({"at": string(format="date-time"), "ip": string(format="ipv4")}),
             {"type": "null"}]}}), True),
    Case("described_properties", "Describe a product in an online shop as JSON.",
         obj({"name": string(30, description="The product's display name."),
              "price": number(0, 5000, description="Price in US dollars."),
              "in_stock": {"type": "boolean", "description": "Whether it can ship today."},
              "category": {"enum": ["books", "games", "garden"],
                           "description": "The shop section."}}), True),
    Case("annotations", "Open a support ticket as JSON.",
         {"$schema": "https://json-schema.org/draft/2020-12/schema",
          "$id": "https://example.com/schemas/ticket.json", "$comment": "support ticket",
          "title": "Ticket", "description": "A support ticket.", "type": "object",
          "examples": [{"id": 1, "subject": "Help", "priority": "low"}],
          "properties": {
              "id": integer(1, 99999, title="Ticket id", examples=[42], readOnly=True),
              "subject": string(40, description="One line.", default="Help"),
              "priority": {"enum": ["low", "normal", "urgent"], "default": "normal",
                           "deprecated": False},
              "secret": string(16, writeOnly=True, **{"$comment": "never logged"}),
              "legacy_code": {"type": ["string", "null"], "maxLength": 8, "deprecated": True}},
          "required": ["id", "subject", "priority"], "additionalProperties": False}, False),
    # --- $defs and $ref ----------------------------------------------------------------
    Case("defs_ref", "Give billing and shipping addresses as JSON.",
         defs(obj({"billing": {"$ref": "#/$defs/address"},
                   "shipping": {"$ref": "#/$defs/address"}}), address=ADDRESS), True, 400),
    Case("defs_ref_chain", "Write a small invoice as JSON.",
         defs(obj({"lines": array({"$ref": "#/$defs/line"}, 1, 2),
                   "total": {"$ref": "#/$defs/money"}}),
              money=MONEY, line=obj({"item": string(30), "price": {"$ref": "#/$defs/money"}})),
         True, 500),
    Case("linked_list", "Write the linked list 1 -> 2 -> 3 as JSON: each node has a value and "
         "next, which is null at the end.",
         defs(obj({"head": {"$ref": "#/$defs/node"}}),
              node=obj({"value": integer(0, 99),
                        "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}})),
         True, 500),
    Case("category_tree", 'Write a tiny category tree as JSON: root "Food" with children "Fruit" '
         'and "Bread", which have no children.',
         defs(obj({"root": {"$ref": "#/$defs/category"}}),
              category=obj({"name": string(20),
                            "children": array({"$ref": "#/$defs/category"}, hi=2)})), True, 700),
    Case("root_ref_recursion", 'Plan "move house" as JSON: a task with two subtasks that have '
         'no subtasks.', obj({"task": string(30), "subtasks": array({"$ref": "#"}, hi=2)}),
         True, 700),
    # --- any JSON ----------------------------------------------------------------------
    Case("empty_schema_root", "Answer with just the JSON value true.", {}, False, 400),
    Case("true_property", "Write a webhook event as JSON with a tiny payload.",
         obj({"event": {"enum": ["created", "deleted"]}, "payload": True}, additional=None),
         False, 400),
    # --- realistic, larger -------------------------------------------------------------
    Case("person_full", "Describe a fictional person with contact details as JSON.",
         obj({"name": string(30), "born": string(format="date"), "email": string(format="email"),
              "phone": string(pattern=PHONE), "address": ADDRESS,
              "languages": array({"enum": ["en", "fr", "de", "es"]}, 1, 3)}), True, 400),
    Case("event_full", "Describe a meetup event with attendees as JSON.",
         obj({"id": string(format="uuid"), "title": string(40),
              "starts_at": string(format="date-time"),
              "venue": obj({"name": string(30), "lat": number(-90, 90), "lon": number(-180, 180)}),
              "attendees": array(obj({"name": string(20), "email": string(format="email")}), hi=2),
              "capacity": integer(1, 500)}), True, 500),
    Case("inventory_item", "Describe a warehouse inventory item as JSON.",
         obj({"sku": string(pattern=SKU), "name": string(30), "qty": integer(0, 10000),
              "price": number(exclusiveMinimum=0, maximum=10000),
              "size_cm": obj({"w": number(0, 500), "h": number(0, 500), "d": number(0, 500)}),
              "warehouse": {"enum": ["north", "south", "east"]},
              "discontinued": {"type": "boolean"}}), True, 400),
]


def strict_problems(schema, path="#"):
    """Where schema breaks OpenAI's strict rules (objects with additionalProperties false
    and every property required); the root must be an object."""
    out = []
    if path == "#" and schema.get("type") != "object":
        out.append("#: root is not an object")

    def walk(s, p):
        if not isinstance(s, dict):
            return
        t = s.get("type")
        if t == "object" or (isinstance(t, list) and "object" in t) or "properties" in s:
            if s.get("additionalProperties") is not False:
                out.append(f"{p}: additionalProperties is not false")
            if set(s.get("required", [])) != set(s.get("properties", {})):
                out.append(f"{p}: required does not list every property")
        for k, v in s.get("properties", {}).items():
            walk(v, f"{p}/properties/{k}")
        for k, v in s.get("$defs", {}).items():
            walk(v, f"{p}/$defs/{k}")
        for kw in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for i, v in enumerate(s.get(kw, [])):
                walk(v, f"{p}/{kw}/{i}")
        for kw in ("items", "additionalProperties"):
            walk(s.get(kw), f"{p}/{kw}")

    walk(schema, path)
    return out


def _keywords(s, acc):
    if isinstance(s, dict):
        acc.update(s)
        if "format" in s:
            acc.add("format:" + s["format"])
        if s.get("$ref") == "#":
            acc.add("$ref:#")
        if any(v is True for v in s.get("properties", {}).values()):
            acc.add("schema:true")
        for k, v in s.items():
            if k not in ("const", "enum", "default", "examples", "properties", "$defs"):
                _keywords(v, acc)
        for v in list(s.get("properties", {}).values()) + list(s.get("$defs", {}).values()):
            _keywords(v, acc)
    elif isinstance(s, list):
        for v in s:
            _keywords(v, acc)
    return acc


def test_corpus_is_well_formed():
    """The corpus itself (no server): at least 50 valid 2020-12 schemas, unique ids,
    strict ones obeying the strict rules, and every keyword the spec lists covered."""
    assert len(CORPUS) >= 50, len(CORPUS)
    ids = [c.id for c in CORPUS]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    for c in CORPUS:
        Draft202012Validator.check_schema(c.schema)
        if c.strict:
            assert not strict_problems(c.schema), (c.id, strict_problems(c.schema))
    assert any(c.strict for c in CORPUS) and any(not c.strict for c in CORPUS)
    seen = set()
    for c in CORPUS:
        _keywords(c.schema, seen)
    want = {"properties", "required", "additionalProperties", "enum", "const", "anyOf", "oneOf",
            "allOf", "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
            "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "$defs",
            "$ref", "format:date-time", "format:date", "format:time", "format:uuid",
            "format:email", "format:ipv4", "$ref:#", "schema:true"}
    assert want <= seen, f"not covered: {sorted(want - seen)}"
    assert any(c.schema == {} for c in CORPUS), "no empty schema"
    assert any(c.schema.get("type") == "array" and not c.strict for c in CORPUS), "no root array"
    assert any(isinstance(c.schema.get("type"), list) or any(
        isinstance(p, dict) and isinstance(p.get("type"), list)
        for p in c.schema.get("properties", {}).values()) for c in CORPUS), "no type union"


# --- json_object ---------------------------------------------------------------------------

def check_object(where, content, finish_reason):
    msg = f"{where}\ncontent: {clip(content)}"
    assert finish_reason in ("stop", "length"), f"finish_reason {finish_reason!r}: {msg}"
    try:
        doc = parse_doc(content)
    except (TypeError, ValueError) as e:
        pytest.fail(f"content is not JSON ({e}): {msg}", pytrace=False)
    assert isinstance(doc, dict), f"the JSON is a {type(doc).__name__}, not an object: {msg}"
    return doc


JSON_OBJECT = {"type": "json_object"}


@pytest.mark.parametrize("prompt", ["Describe a fictional person as JSON.",
                                    "Give tomorrow's weather forecast for Oslo as a JSON object."])
def test_json_object_greedy(openai_client, model_id, prompt):
    r = chat(openai_client, model_id, prompt, JSON_OBJECT, max_tokens=400)
    check_object(f"json_object greedy, prompt {prompt!r}", r.choices[0].message.content,
                 r.choices[0].finish_reason)


def test_json_object_sampled(openai_client, model_id):
    r = chat(openai_client, model_id, "Describe a pet as JSON.", JSON_OBJECT, max_tokens=500,
             temperature=1.0, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        check_object(f"json_object temperature 1 seed 3 choice {c.index}", c.message.content,
                     c.finish_reason)


# --- json_schema: the corpus ---------------------------------------------------------------

@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_schema_greedy(openai_client, model_id, case):
    r = chat(openai_client, model_id, case.prompt, rf_schema(case.schema, case.id, case.strict),
             max_tokens=case.max_tokens)
    assert len(r.choices) == 1
    check_doc(f"[{case.id}] temperature 0 (strict={case.strict})", case.schema,
              r.choices[0].message.content, r.choices[0].finish_reason)


@pytest.mark.parametrize("case,seed", [(c, SEEDS[i % len(SEEDS)]) for i, c in enumerate(CORPUS)],
                         ids=[c.id for c in CORPUS])
def test_schema_sampled(openai_client, model_id, case, seed):
    r = chat(openai_client, model_id, case.prompt, rf_schema(case.schema, case.id, case.strict),
             max_tokens=case.max_tokens, temperature=SAMPLED_T, n=SAMPLED_N, seed=seed)
    assert [c.index for c in r.choices] == list(range(SAMPLED_N)), [c.index for c in r.choices]
    for c in r.choices:
        check_doc(f"[{case.id}] temperature {SAMPLED_T} seed {seed} choice {c.index} "
                  f"(strict={case.strict})", case.schema, c.message.content, c.finish_reason)


# --- streaming and the SDK's helpers ---------------------------------------------------------

def collect(stream):
    """SDK chunks -> ({index: text}, {index: [finish_reasons]})."""
    text, fins = {}, {}
    for chunk in stream:
        for ch in chunk.choices:
            text[ch.index] = text.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason is not None:
                fins.setdefault(ch.index, []).append(ch.finish_reason)
    return text, fins


CASES = {c.id: c for c in CORPUS}


@pytest.mark.parametrize("cid", ["format_ids", "array_of_objects", "linked_list"])
def test_stream_greedy_equals_non_stream(openai_client, model_id, cid):
    case = CASES[cid]
    rf = rf_schema(case.schema, case.id, case.strict)
    text, fins = collect(chat(openai_client, model_id, case.prompt, rf,
                              max_tokens=case.max_tokens, stream=True))
    assert sorted(text) == [0] and fins.get(0) and len(fins[0]) == 1, (text, fins)
    check_doc(f"[{cid}] streamed, temperature 0", case.schema, text[0], fins[0][0])
    full = chat(openai_client, model_id, case.prompt, rf, max_tokens=case.max_tokens)
    assert full.choices[0].message.content == text[0], (
        f"[{cid}] streamed {clip(text[0])} != non-streamed "
        f"{clip(full.choices[0].message.content)}")


def test_stream_sampled_n2(openai_client, model_id):
    case = CASES["event_full"]
    text, fins = collect(chat(openai_client, model_id, case.prompt,
                              rf_schema(case.schema, case.id, case.strict),
                              max_tokens=case.max_tokens, stream=True, n=2, temperature=1.0,
                              seed=21))
    assert sorted(text) == [0, 1], text
    for i in (0, 1):
        assert len(fins.get(i, [])) == 1, f"choice {i}: finish reasons {fins.get(i)}"
        check_doc(f"[event_full] streamed, temperature 1 seed 21 choice {i}", case.schema, text[i],
                  fins[i][0])


def test_stream_json_object(openai_client, model_id):
    text, fins = collect(chat(openai_client, model_id, "Describe a city as JSON.", JSON_OBJECT,
                              max_tokens=400, stream=True))
    assert len(fins.get(0, [])) == 1, fins
    check_object("json_object streamed", text.get(0), fins[0][0])


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(max_length=40)
    city: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2 code")


class Contact(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30, description="Full name")
    age: int = pydantic.Field(ge=0, le=120)
    role: Literal["admin", "editor", "viewer"]
    email: Optional[str] = pydantic.Field(max_length=40)
    address: Address
    tags: list[Annotated[str, pydantic.Field(max_length=12)]] = pydantic.Field(max_length=3)


CONTACT_PROMPT = "Describe a fictional team member as JSON."


def test_sdk_parse_pydantic(openai_client, model_id):
    r = openai_client.chat.completions.parse(
        model=model_id, messages=msgs(CONTACT_PROMPT), response_format=Contact, max_tokens=400,
        temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
    assert isinstance(c.message.parsed, Contact), (
        f"parsed {c.message.parsed!r}: {clip(c.message.content)}")
    assert c.message.parsed == Contact.model_validate_json(c.message.content)


def test_sdk_stream_helper_pydantic(openai_client, model_id):
    deltas, done = [], []
    with openai_client.chat.completions.stream(
            model=model_id, messages=msgs(CONTACT_PROMPT), response_format=Contact,
            max_tokens=400, temperature=0) as st:
        for ev in st:
            if ev.type == "content.delta":
                deltas.append(ev.delta)
            elif ev.type == "content.done":
                done.append(ev)
        final = st.get_final_completion()  # raises LengthFinishReasonError on "length"
    c = final.choices[0]
    assert c.finish_reason == "stop", c.finish_reason
    assert "".join(deltas) == c.message.content
    assert len(done) == 1 and isinstance(done[0].parsed, Contact), done
    assert isinstance(c.message.parsed, Contact), (
        f"parsed {c.message.parsed!r}: {clip(c.message.content)}")
    assert c.message.parsed == done[0].parsed


# --- errors ------------------------------------------------------------------------------------

def in_prop(sub):
    """sub as the schema of property x (refusals must look inside subschemas too)."""
    return {"type": "object", "properties": {"x": sub}, "required": ["x"]}


UNSUPPORTED = [  # (id, schema, the message names one of these)
    ("not", in_prop({"type": "string", "not": {"const": "a"}}), ("not",)),
    ("if_then_else", {"type": "object", "properties": {"a": {"type": "integer"}},
                      "if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["a"]},
                      "else": {}}, ("if", "then", "else")),
    ("patternProperties",
     in_prop({"type": "object", "patternProperties": {"^s_": {"type": "string"}}}),
     ("patternProperties",)),
    ("uniqueItems", in_prop({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
     ("uniqueItems",)),
    ("multipleOf", in_prop({"type": "integer", "multipleOf": 5}), ("multipleOf",)),
    ("contains", in_prop({"type": "array", "contains": {"const": 3}}), ("contains",)),
    ("propertyNames", in_prop({"type": "object", "propertyNames": {"maxLength": 3}}),
     ("propertyNames",)),
    ("dependentRequired",
     {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
      "dependentRequired": {"a": ["b"]}}, ("dependentRequired",)),
    ("minProperties", in_prop({"type": "object", "minProperties": 1}), ("minProperties",)),
    ("unevaluatedProperties", {"type": "object", "properties": {"a": {"type": "string"}},
                               "unevaluatedProperties": False}, ("unevaluatedProperties",)),
    ("format_hostname", in_prop({"type": "string", "format": "hostname"}), ("hostname",)),
    ("pattern_lookahead", in_prop({"type": "string", "pattern": "^(?=.*\\d)[a-z0-9]{4,8}$"}),
     ("pattern",)),
    ("pattern_backreference", in_prop({"type": "string", "pattern": "^(\\w)\\1$"}), ("pattern",)),
]


@pytest.mark.parametrize("schema,names", [u[1:] for u in UNSUPPORTED],
                         ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_keyword_refused(openai_client, model_id, schema, names):
    expect_400(openai_client, model_id, rf_schema(schema), "response_format", names)


def test_unsupported_keyword_refused_when_streamed(openai_client, model_id):
    expect_400(openai_client, model_id, rf_schema(in_prop({"type": "integer", "multipleOf": 3})),
               "response_format", ("multipleOf",), stream=True)


INVALID = [  # (id, schema, the message names at least one of these)
    ("unknown_type", in_prop({"type": "strin"}), ("strin", "type")),
    ("minimum_string", in_prop({"type": "integer", "minimum": "3"}), ("minimum",)),
    ("required_not_array",
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}, ("required",)),
    ("missing_ref", in_prop({"$ref": "#/$defs/nope"}), ("#/$defs/nope",)),
    ("min_length_over_max", in_prop({"type": "string", "minLength": 5, "maxLength": 2}),
     ("minLength", "maxLength")),
    ("empty_enum", in_prop({"enum": []}), ("enum",)),
]


@pytest.mark.parametrize("schema,any_of", [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_schema_refused(openai_client, model_id, schema, any_of):
    err = expect_400(openai_client, model_id, rf_schema(schema), "response_format")
    assert any(w in err["message"] for w in any_of), (
        f"the message names none of {any_of}: {err}")


STRICT_VIOLATIONS = [  # (id, schema, word)
    ("no_additional_properties_false",
     obj({"a": obj({"b": {"type": "string"}}, additional=None)}), "additionalProperties"),
    ("property_not_required",
     obj({"a": {"type": "string"}, "b": {"type": "integer"}}, required=["a"]), "required"),
    ("root_not_object", array({"type": "string"}), "object"),
]


@pytest.mark.parametrize("schema,word", [s[1:] for s in STRICT_VIOLATIONS],
                         ids=[s[0] for s in STRICT_VIOLATIONS])
def test_strict_violation_refused(openai_client, model_id, schema, word):
    expect_400(openai_client, model_id, rf_schema(schema, strict=True), "response_format", (word,))


TINY = obj({"answer": {"enum": ["yes", "no"]}})
STRUCTURAL = [  # (id, response_format, param)
    ("no_name", {"type": "json_schema", "json_schema": {"schema": TINY}},
     "response_format.json_schema.name"),
    ("name_with_space",
     {"type": "json_schema", "json_schema": {"name": "my schema", "schema": TINY}},
     "response_format.json_schema.name"),
    ("name_65_chars", {"type": "json_schema", "json_schema": {"name": "n" * 65, "schema": TINY}},
     "response_format.json_schema.name"),
    ("no_json_schema", {"type": "json_schema"}, "response_format.json_schema"),
    ("schema_a_string", {"type": "json_schema", "json_schema": {"name": "s", "schema": "object"}},
     "response_format.json_schema.schema"),
    ("unknown_type", {"type": "yaml"}, "response_format.type"),
]


@pytest.mark.parametrize("rf,param", [s[1:] for s in STRUCTURAL], ids=[s[0] for s in STRUCTURAL])
def test_malformed_response_format_refused(openai_client, model_id, rf, param):
    expect_400(openai_client, model_id, rf, param)


def test_name_of_64_chars_and_text_format_accepted(openai_client, model_id):
    name = ("Ab0_-" * 13)[:64]
    r = chat(openai_client, model_id, "Is the sky blue? Answer as JSON.",
             rf_schema(TINY, name, True), max_tokens=40)
    check_doc("name of 64 characters", TINY, r.choices[0].message.content,
              r.choices[0].finish_reason)
    r = chat(openai_client, model_id, "Say hi.", {"type": "text"}, max_tokens=4)
    assert r.choices[0].message.content, "response_format text gave no content"


def test_legacy_completions_refuse_response_format(openai_client, model_id):
    for rf in (JSON_OBJECT, rf_schema(TINY)):
        try:
            r = openai_client.completions.create(model=model_id, prompt="Hello", max_tokens=4,
                                                 extra_body={"response_format": rf})
            pytest.fail(f"/v1/completions accepted response_format {rf}: {r.choices[0].text!r}",
                        pytrace=False)
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert e.body.get("param") == "response_format", e.body
            assert "response_format" in e.body.get("message", ""), e.body


# --- together with other request fields --------------------------------------------------------

def test_n2_both_choices_validate(openai_client, model_id):
    case = CASES["person_full"]
    r = chat(openai_client, model_id, case.prompt, rf_schema(case.schema, case.id, True),
             max_tokens=case.max_tokens, n=2, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        check_doc(f"[person_full] n=2 temperature 1 seed 5 choice {c.index}", case.schema,
                  c.message.content, c.finish_reason)


def test_logprobs_join_to_content(openai_client, model_id):
    r = chat(openai_client, model_id, "Describe a book as JSON.", JSON_OBJECT, max_tokens=300,
             logprobs=True, top_logprobs=2)
    c = r.choices[0]
    check_object("json_object with logprobs", c.message.content, c.finish_reason)
    entries = c.logprobs.content if c.logprobs else None
    assert entries, f"no logprobs: {c.logprobs!r}"
    assert all(e.bytes is not None for e in entries), [e.token for e in entries if e.bytes is None]
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8")
    assert joined == c.message.content, (
        f"logprob tokens {clip(joined)} != content {clip(c.message.content)}")
    assert r.usage.completion_tokens >= len(entries)
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2, e


def test_stop_with_schema(openai_client, model_id):
    schema = obj({"product": string(30), "stars": integer(1, 5), "summary": string(60)})
    stop = ["```", "</json>"]
    r = chat(openai_client, model_id, "Review a pair of headphones as JSON.",
             rf_schema(schema, "review", True), stop=stop)
    content = r.choices[0].message.content
    check_doc("json_schema with stop", schema, content, r.choices[0].finish_reason)
    assert not any(s in content for s in stop), clip(content)


@pytest.mark.parametrize("rf", [rf_schema(CASES["person_full"].schema, "person", True),
                                JSON_OBJECT], ids=["json_schema", "json_object"])
def test_small_max_tokens_is_length(openai_client, model_id, rf):
    """Five tokens cannot hold a whole person_full document: cut at max_tokens. They
    do hold an object: json_object closes it."""
    r = chat(openai_client, model_id, CASES["person_full"].prompt, rf, max_tokens=5)
    c = r.choices[0]
    assert r.usage.completion_tokens <= 5, r.usage
    if rf is JSON_OBJECT:
        check_object("json_object, max_tokens=5", c.message.content, c.finish_reason)
        return
    assert c.finish_reason == "length", (c.finish_reason, c.message.content)
    assert r.usage.completion_tokens == 5, r.usage
    assert (c.message.content or "").lstrip().startswith("{"), clip(c.message.content)


def test_budget_closes_the_document(openai_client, model_id):
    """With a budget a little above the shortest document, the output is still whole
    and valid: the grammar steers the end of the budget into closing it."""
    case = CASES["person_full"]
    for max_tokens in (150, 220):
        r = chat(openai_client, model_id, case.prompt, rf_schema(case.schema, case.id, case.strict),
                 max_tokens=max_tokens, temperature=1.5, n=2, seed=11)
        for c in r.choices:
            check_doc(f"[{case.id}] max_tokens={max_tokens} choice {c.index}", case.schema,
                      c.message.content, c.finish_reason)
        assert r.usage.completion_tokens <= 2 * max_tokens, r.usage


# --- /metrics ------------------------------------------------------------------------------------

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MASKS = "kolm_worker_grammar_masks_total"
MASK_SECONDS = "kolm_worker_grammar_mask_seconds_total"
COMPILES = "kolm_worker_grammar_compiles_total"
CACHE_HITS = "kolm_worker_grammar_cache_hits_total"
GRAMMAR_COUNTERS = (MASKS, MASK_SECONDS, COMPILES, CACHE_HITS)


def grammar_metrics(srv):
    """{name: value of its worker="0" sample} for GRAMMAR_COUNTERS, each of which must
    be declared a counter and have a worker="0" sample."""
    status, _, body = srv.request("GET", "/metrics", timeout=10)
    assert status == 200, f"/metrics -> {status}: {body[:300]!r}"
    text = body.decode()
    out = {}
    for ln in text.splitlines():
        m = METRIC_LINE.match(ln)
        if m and m.group(1) in GRAMMAR_COUNTERS:
            if dict(LABEL.findall(m.group(3) or "")).get("worker") == "0":
                out[m.group(1)] = float(m.group(4))
    for name in GRAMMAR_COUNTERS:
        assert f"# TYPE {name} counter\n" in text, f"no '# TYPE {name} counter' in:\n{text}"
        assert name in out, f'no {name}{{worker="0",...}} sample in /metrics:\n{text}'
    return out


def wait_metrics(srv, cond, what, timeout=10.0):
    """Polls /metrics until cond(grammar_metrics) (the workers push their counters)."""
    deadline = time.monotonic() + timeout
    while True:
        m = grammar_metrics(srv)
        if cond(m):
            return m
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last {m}", pytrace=False)
        time.sleep(0.1)


def test_metrics_grammar_counters_and_compile_cache(kolm_server, openai_client, model_id):
    srv = kolm_server
    m0 = grammar_metrics(srv)
    # a schema no earlier request used: its first use compiles and computes masks
    schema = obj({"word": {"enum": [f"alpha-{uuid.uuid4().hex[:8]}", "beta"]}})
    rf = rf_schema(schema, "fresh", True)
    r = chat(openai_client, model_id, "Pick a word as JSON.", rf, max_tokens=40)
    check_doc("fresh schema", schema, r.choices[0].message.content, r.choices[0].finish_reason)
    m1 = wait_metrics(srv, lambda m: m[MASKS] > m0[MASKS] and m[COMPILES] > m0[COMPILES],
                      f"{MASKS} and {COMPILES} to increase after a new schema")
    assert m1[MASK_SECONDS] > m0[MASK_SECONDS], (m0, m1)
    # the identical schema again: a compile-cache hit (keyed by the schema's hash)
    r = chat(openai_client, model_id, "Pick another word as JSON.", rf, max_tokens=40)
    check_doc("repeated schema", schema, r.choices[0].message.content, r.choices[0].finish_reason)
    m2 = wait_metrics(srv, lambda m: m[CACHE_HITS] > m1[CACHE_HITS],
                      f"{CACHE_HITS} to increase after a repeated schema")
    assert m2[COMPILES] == m1[COMPILES], (
        f"a repeated identical schema was compiled again: {m1} -> {m2}")
    for name in GRAMMAR_COUNTERS:
        assert m2[name] >= m1[name] >= m0[name], f"{name} decreased: {m0} {m1} {m2}"
