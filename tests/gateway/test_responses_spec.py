"""The Responses API against OpenAI's specification itself (tests/openapi_spec.py): the request
bodies the gateway accepts are CreateResponse bodies, and what it returns - whole responses,
every stream event, the delete answer's fields, errors - matches Response, ResponseStreamEvent
and ErrorResponse. Needs the specification file (CI provides it; a clone without ../shared
reports these as skipped, and test_responses.py checks the same bodies against the SDK's types)."""
import os

import pytest

import openapi_spec
from gw_fakes import MODEL, REPLY
from test_responses import WEATHER, _events

if openapi_spec.spec_path() is None:
    pytest.skip("OpenAI's openapi.yaml is not on this machine (../shared/openai/openapi.yaml or "
                "NPUFLOW_OPENAPI_SPEC)", allow_module_level=True)
if os.environ.get(openapi_spec.ENV) and not openapi_spec.spec_path().is_file():
    raise FileNotFoundError(f"{openapi_spec.ENV}={os.environ[openapi_spec.ENV]} does not exist")

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
BODIES = [
    {"model": MODEL, "input": "hi"},
    {"model": MODEL, "input": "hi", "instructions": "Be brief.", "max_output_tokens": 16, "temperature": 0.2,
     "top_p": 0.9, "metadata": {"k": "v"}, "store": False, "include": ["message.output_text.logprobs"],
     "top_logprobs": 2, "reasoning": {"effort": "low"}},
    {"model": MODEL, "input": [
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather?"},   # (content parts make the spec's oneOf ambiguous)
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
     "tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": True},
    {"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}},
    {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA,
                                                        "strict": True}}},
    {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_object"}}},
    {"model": MODEL, "input": "hi", "background": True},     # answered queued; streamed from its event log
]


@pytest.mark.parametrize("body", BODIES)
def test_accepted_bodies_are_spec_requests_and_answers_are_spec_responses(stack, body):
    assert not openapi_spec.errors("CreateResponse", body), openapi_spec.errors("CreateResponse", body)
    st, _, out = stack.request("POST", "/v1/responses", body)
    assert st == 200, out
    assert not openapi_spec.errors("Response", out), openapi_spec.errors("Response", out)
    for _, ev in _events(stack, body):
        assert not openapi_spec.errors("ResponseStreamEvent", ev), (ev["type"], openapi_spec.errors(
            "ResponseStreamEvent", ev))


@pytest.mark.parametrize("reply", [["<think>", "Hmm.", "</think>", "\n\n", "Hi"], ["w "] * 30,
                                   ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>']])
def test_reasoning_incomplete_and_call_shapes(stack, reply):
    stack.worker.reply = reply
    try:
        body = {"model": MODEL, "input": "hi", "max_output_tokens": 16, "tools": [WEATHER]}
        st, _, out = stack.request("POST", "/v1/responses", body)
        assert st == 200 and not openapi_spec.errors("Response", out), openapi_spec.errors("Response", out)
        for _, ev in _events(stack, body):
            assert not openapi_spec.errors("ResponseStreamEvent", ev), (ev["type"], openapi_spec.errors(
                "ResponseStreamEvent", ev))
    finally:
        stack.worker.reply = list(REPLY)


def test_errors_are_spec_errors(stack):
    for body in ({"model": MODEL}, {"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}):
        st, _, out = stack.request("POST", "/v1/responses", body)
        assert st == 400 and not openapi_spec.errors("ErrorResponse", out), openapi_spec.errors("ErrorResponse", out)
    st, _, out = stack.request("GET", "/v1/responses/resp_nope")
    assert st == 404 and not openapi_spec.errors("ErrorResponse", out)


def test_input_items_list_is_a_spec_list(stack):
    body = BODIES[2]
    st, _, out = stack.request("POST", "/v1/responses", body)
    st, _, listed = stack.request("GET", f"/v1/responses/{out['id']}/input_items")
    assert st == 200 and len(listed["data"]) == 4
    assert not openapi_spec.errors("ResponseItemList", listed), openapi_spec.errors("ResponseItemList", listed)


def test_conversations_api_answers_are_spec_objects(stack):
    """The Conversations API's bodies and answers, and a response made in a conversation."""
    create = {"metadata": {"topic": "demo"}, "items": [
        {"type": "message", "role": "user", "content": "Hello!"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    assert not openapi_spec.errors("CreateConversationBody", create), openapi_spec.errors("CreateConversationBody", create)
    st, _, conv = stack.request("POST", "/v1/conversations", create)
    assert st == 200 and not openapi_spec.errors("ConversationResource", conv), openapi_spec.errors(
        "ConversationResource", conv)
    body = {"model": MODEL, "input": "hi", "conversation": conv["id"]}
    assert not openapi_spec.errors("CreateResponse", body)
    st, _, out = stack.request("POST", "/v1/responses", body)
    assert st == 200 and not openapi_spec.errors("Response", out), openapi_spec.errors("Response", out)
    st, _, items = stack.request("GET", f"/v1/conversations/{conv['id']}/items")
    assert st == 200 and len(items["data"]) == 5
    assert not openapi_spec.errors("ConversationItemList", items), openapi_spec.errors("ConversationItemList", items)
    for it in items["data"]:
        st, _, one = stack.request("GET", f"/v1/conversations/{conv['id']}/items/{it['id']}")
        assert st == 200 and one == it and not openapi_spec.errors("ConversationItem", one), (
            it["type"], openapi_spec.errors("ConversationItem", one))
    update = {"metadata": {"topic": "other"}}
    assert not openapi_spec.errors("UpdateConversationBody", update)
    st, _, conv2 = stack.request("POST", f"/v1/conversations/{conv['id']}", update)
    assert st == 200 and not openapi_spec.errors("ConversationResource", conv2)
    st, _, gone = stack.request("DELETE", f"/v1/conversations/{conv['id']}")
    assert st == 200 and not openapi_spec.errors("DeletedConversationResource", gone)
    st, _, err = stack.request("GET", f"/v1/conversations/{conv['id']}")
    assert st == 404 and not openapi_spec.errors("ErrorResponse", err)
