"""Bad input never gets a 500: values past the protobuf fields' range, deep nesting, lone
surrogates, schemas no value satisfies and headers that are not UTF-8 are each a 400 (401 for
the key) naming the param, in OpenAI's error shape."""
import json

import numpy as np
import pytest

from gw_fakes import MODEL
from npuflow.gateway.errors import ApiError
from npuflow.v1 import common_pb2

MSGS = [{"role": "user", "content": "hi"}]
CHAT, COMPL = "/v1/chat/completions", "/v1/completions"
BIG = 2 ** 32


def _err(stack, status, path, body=None, raw=None, **kw):
    st, headers, b = stack.request("POST", path, body, raw=raw, **kw)
    assert st == status, b
    assert headers["Content-Type"].startswith("application/json")
    assert set(b) == {"error"} and set(b["error"]) == {"message", "type", "param", "code"}, b
    return b["error"]


def _chat(**kw):
    return {"model": MODEL, "messages": MSGS, **kw}


def _compl(**kw):
    return {"model": MODEL, "prompt": "hi", **kw}


@pytest.mark.parametrize("path, body, param", [
    (CHAT, _chat(max_tokens=BIG), "max_tokens"),
    (CHAT, _chat(max_tokens=2 ** 64), "max_tokens"),
    (CHAT, _chat(max_tokens=1e308), "max_tokens"),
    (CHAT, _chat(max_completion_tokens=BIG), "max_completion_tokens"),
    (CHAT, _chat(max_completion_tokens=1e308), "max_completion_tokens"),
    (COMPL, _compl(max_tokens=BIG), "max_tokens"),
    (CHAT, _chat(top_k=BIG), "top_k"),
    (CHAT, _chat(top_k=1e308), "top_k"),
    (CHAT, _chat(top_k=-2), "top_k"),
    (CHAT, _chat(seed=2 ** 63), "seed"),
    (CHAT, _chat(seed=-(2 ** 63) - 1), "seed"),
    (CHAT, _chat(seed=1e308), "seed"),
    (CHAT, _chat(seed=-1e308), "seed"),
    (CHAT, _chat(n=BIG), "n"),
    (CHAT, _chat(n=1e308), "n"),
    (CHAT, _chat(logit_bias={str(BIG): 1}), f"logit_bias.{BIG}"),
    (CHAT, _chat(logit_bias={"1" * 40: 1}), "logit_bias"),
    (CHAT, _chat(logit_bias={"1": None}), "logit_bias.1"),
    (CHAT, _chat(logit_bias={"1": 1e308}), "logit_bias.1"),
    (CHAT, _chat(logit_bias={"+1": 1}), "logit_bias"),
    (CHAT, _chat(stop_token_ids=[1, BIG]), "stop_token_ids[1]"),
    (CHAT, _chat(stop_token_ids=[-1]), "stop_token_ids[0]"),
    (CHAT, _chat(stop_token_ids=[1e308]), "stop_token_ids"),
    (COMPL, _compl(prompt=[1, BIG]), "prompt[1]"),
    (COMPL, _compl(prompt=[[1], [2, BIG]]), "prompt[1][1]"),
    (COMPL, _compl(prompt=[-1]), "prompt[0]"),
    ("/detokenize", {"model": MODEL, "tokens": [BIG]}, "tokens[0]"),
    ("/detokenize", {"model": MODEL, "tokens": [2 ** 70]}, "tokens[0]"),
    (CHAT, _chat(repetition_penalty=1e300), "repetition_penalty"),
    (CHAT, _chat(temperature=10 ** 400), "temperature"),
    (COMPL, _compl(logprobs=BIG), "logprobs"),
    (CHAT, _chat(logprobs=True, top_logprobs=BIG), "top_logprobs"),
])
def test_integers_past_the_proto_range(stack, path, body, param):
    e = _err(stack, 400, path, body)
    assert e["param"] == param, e
    assert len(e["message"]) < 300, e


def test_nan_and_infinity_are_not_json(stack):
    for raw in (b'{"model": "m", "messages": [], "temperature": NaN}', b'{"max_tokens": Infinity}',
                b'{"seed": -Infinity}'):
        _err(stack, 400, CHAT, raw=raw)


def test_deep_nesting(stack):
    _err(stack, 400, CHAT, raw=b"[" * 1000 + b"]" * 1000)
    _err(stack, 400, CHAT, raw=b'{"a": ' + b"[" * 30000 + b"]" * 30000 + b"}")
    deep = json.loads('{"type": "array", "items": ' * 500 + "{}" + "}" * 500)
    e = _err(stack, 400, CHAT, _chat(response_format={"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": deep}}))
    assert e["param"] == "response_format" and e["code"] == "too_deep", e
    e = _err(stack, 400, CHAT, _chat(messages=[{"role": "user", "content": "hi", "x": json.loads("[" * 80 + "]" * 80)}]))
    assert e["param"] == "messages", e


def test_schema_depth_and_size_are_bounded(stack):
    """A schema within the body's nesting but over the schema's own bound, and one too large."""
    deep = json.loads('{"type": "array", "items": ' * 55 + "{}" + "}" * 55)
    e = _err(stack, 400, CHAT, _chat(response_format={"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": deep}}))
    assert e["param"] == "response_format" and e["code"] == "too_deep", e
    wide = {"enum": [0] * 25000}
    raw = json.dumps(_chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": wide}}),
                     separators=(",", ":")).encode()
    e = _err(stack, 400, CHAT, raw=raw)
    assert e["param"] == "response_format" and e["code"] == "too_large", e
    e = _err(stack, 400, CHAT, _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": deep}}],
                                     tool_choice="required"))
    assert e["param"] == "tool_choice", e


# the raw JSON text, since json.dumps would write the surrogate as the same escape anyway
S = '"\\ud800"'


@pytest.mark.parametrize("path, body, param", [
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": %s}]}' % (MODEL, S), "messages[0].content"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": '
           '[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": %s}]}]}'
     % (MODEL, S), "messages[1].content[2].text"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a", "name": %s}]}' % (MODEL, S),
     "messages[0].name"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "stop": [%s]}' % (MODEL, S), "stop[0]"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "stop": %s}' % (MODEL, S), "stop"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", '
           '"function": {"name": %s}}]}' % (MODEL, S), "tools[0].function.name"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", '
           '"function": {"name": "f", "description": "x\\udfff"}}]}' % MODEL, "tools[0].function.description"),
    (CHAT, '{"model": "%s", "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", '
           '"function": {"name": "f", "arguments": %s}}]}]}' % (MODEL, S), "messages[0].tool_calls[0].function.arguments"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "response_format": {"type": '
           '"json_schema", "json_schema": {"name": "x", "schema": {"enum": [%s]}}}}' % (MODEL, S),
     "response_format.json_schema.schema.enum[0]"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a"}], "logit_bias": {%s: 1}}' % (MODEL, S),
     "logit_bias.\ufffd"),
    (COMPL, '{"model": "%s", "prompt": %s}' % (MODEL, S), "prompt"),
    (COMPL, '{"model": "%s", "prompt": ["ok", %s]}' % (MODEL, S), "prompt[1]"),
    ("/tokenize", '{"model": "%s", "prompt": %s}' % (MODEL, S), "prompt"),
    ("/tokenize", '{"model": "%s", "messages": [{"role": "user", "content": %s}]}' % (MODEL, S),
     "messages[0].content"),
    (CHAT, '{"model": %s, "messages": []}' % S, "model"),
])
def test_lone_surrogates(stack, path, body, param):
    e = _err(stack, 400, path, raw=body.encode())
    assert e["param"] == param and e["code"] == "invalid_string", e


def test_surrogate_pairs_are_characters(stack):
    """A surrogate pair escape is one character (here an emoji), and fine."""
    st, _, b = stack.request("POST", "/tokenize", raw=b'{"model": "%s", "prompt": "\\ud83d\\ude00 x"}' % MODEL.encode())
    assert st == 200, b


@pytest.mark.parametrize("schema", [
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
    {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
    {"type": "string", "minLength": 5, "maxLength": 2},
    {"enum": []},
    # the cycle is behind a required property: the first token is fine, a later one is not
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"],
     "$defs": {"a": {"$ref": "#/$defs/a"}}},
    {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/a"},
     "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/a"}}, "required": ["b"]}}},
    {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},
])
def test_schemas_no_value_satisfies(stack, schema):
    e = _err(stack, 400, CHAT, _chat(response_format={"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": schema}}))
    assert e["param"] == "response_format", e
    assert "\n" not in e["message"] and "<state>" not in e["message"] and len(e["message"]) < 300, e


@pytest.mark.parametrize("schema", [
    {"$defs": {"n": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
     "$ref": "#/$defs/n"},
    {"$defs": {"n": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}},
                     "required": ["next"]}}, "$ref": "#/$defs/n"},
    {"type": "object", "properties": {"x": {"$ref": "#"}}},
    {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["kids"]},
])
def test_recursive_schemas_with_a_way_out_are_accepted(stack, schema):
    st, _, b = stack.request("POST", CHAT, _chat(response_format={"type": "json_schema",
                                                                   "json_schema": {"name": "x", "schema": schema}}))
    assert st == 200, b


def test_worker_grammar_errors_are_one_line():
    """A matcher that fails later (here the first step of a schema no value satisfies) reports
    one line, never llguidance's parser state and grammar."""
    llg = pytest.importorskip("llguidance")
    from npuflow.gateway.structured import _byte_tokenizer
    from npuflow.llm_worker.grammar import GrammarMatcher
    g = llg.LLMatcher.grammar_from_json_schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    m = GrammarMatcher(llg.LLMatcher(_byte_tokenizer(), g, log_level=0), 257, 9)
    row = np.zeros(257, dtype=np.float32)
    m.apply(row)
    assert m.error and "\n" not in m.error and "<state>" not in m.error, m.error


def test_worker_error_text_is_cut_to_one_line():
    e = ApiError.from_code(common_pb2.ERROR_CODE_INTERNAL, "grammar rejected a token: X\n<state>\nTokens: ...")
    assert e.status == 500 and e.message == "grammar rejected a token: X"


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"Bearer \xc3\x28", b"\xe2\x82", b"Bearer sk-test\x80"])
def test_authorization_header_not_utf8(stack, value):
    e = _err(stack, 401, CHAT, raw=json.dumps(_chat()).encode(), auth=False,
             headers={"Authorization": value.decode("latin-1")})
    assert e["code"] == "invalid_api_key", e


def test_completions_max_tokens_null_means_16(stack):
    for body in (_compl(), _compl(max_tokens=None)):
        st, _, b = stack.request("POST", COMPL, body)
        assert st == 200, b
        assert stack.worker.requests[-1].sampling.max_tokens == 16
    st, _, b = stack.request("POST", CHAT, _chat(max_tokens=None))
    assert st == 200, b
    assert stack.worker.requests[-1].sampling.max_tokens == 0     # chat: up to the context


def test_in_range_extremes_pass(stack):
    """The largest values the fields hold are accepted (the worker decides about token ids)."""
    st, _, b = stack.request("POST", CHAT, _chat(seed=2 ** 63 - 1, top_k=2 ** 32 - 1, max_tokens=2 ** 32 - 1,
                                                 logit_bias={"4294967295": 5}))
    assert st in (200, 400), b
    assert b.get("error", {}).get("param") not in ("seed", "top_k", "logit_bias.4294967295"), b
    st, _, b = stack.request("POST", CHAT, _chat(seed=-(2 ** 63)))
    assert st == 200, b


@pytest.mark.parametrize("schema_text, code", [
    ("[" * 5000 + "]" * 5000, "invalid_value"),                                     # past json's recursion
    ('{"type": "array", "items": ' * 60 + "{}" + "}" * 60, "too_deep"),
    ('{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}', "invalid_value"),
])
def test_grpc_schema_text_is_checked_the_same(schema_text, code):
    """The gRPC front door's schema (JSON text) goes through the same bounds and checks."""
    from npuflow.gateway.grpc_convert import chat_request
    from npuflow.v1 import generation_service_pb2 as gs
    msg = gs.ChatRequest(model=MODEL, messages=[gs.ChatTurn(role="user", content="hi")])
    msg.response_format.type = gs.ResponseFormat.TYPE_JSON_SCHEMA
    msg.response_format.json_schema.name = "x"
    msg.response_format.json_schema.schema = schema_text
    with pytest.raises(ApiError) as e:
        chat_request(msg)
    assert e.value.status == 400 and e.value.code == code and e.value.param.startswith("response_format"), e.value.body()
