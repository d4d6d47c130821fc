"""A thinking model's answer through the gateway (fake worker, official client): the <think>
block goes to reasoning_content, whole and streamed, however the tags are cut between tokens; the
content, its logprobs and tool calls are the answer's only; usage counts the reasoning tokens."""
import json

from gw_fakes import MODEL, REPLY

HI = [{"role": "user", "content": "hi"}]
THINKING = ["<th", "ink>", "The user", " greets me.", "</th", "ink>", "\n\n", "Hello", "!"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _client(stack):
    from openai import OpenAI
    return OpenAI(api_key=stack.key, base_url=stack.base_url, max_retries=0)


def test_reasoning_whole_and_streamed(stack):
    stack.worker.reply = list(THINKING)
    try:
        st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI,
                                                                     "logprobs": True})
        assert st == 200, body
        msg = body["choices"][0]["message"]
        assert msg["content"] == "Hello!" and msg["reasoning_content"] == "The user greets me."
        assert "".join(e["token"] for e in body["choices"][0]["logprobs"]["content"]) == "Hello!"
        assert body["usage"]["completion_tokens"] == 9     # the blank lines after </think> count as reasoning
        assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}

        chunks = list(_client(stack).chat.completions.create(
            model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        assert thought == "The user greets me." and "".join(d.content or "" for d in deltas) == "Hello!"
        assert not any((d.content or "").strip() and getattr(d, "reasoning_content", None) for d in deltas)
        assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 7
    finally:
        stack.worker.reply = list(REPLY)


def test_a_tool_call_after_thinking(stack):
    stack.worker.reply = ["<think>", "I should call", " the tool.", "</think>", "\n", '<tool_call>\n{"name": ',
                          '"get_weather", "arguments": {"city": "Paris"}}\n</tool_call>']
    try:
        st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "tools": TOOLS})
        assert st == 200, body
        ch = body["choices"][0]
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning_content"] == "I should call the tool."
        assert json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    finally:
        stack.worker.reply = list(REPLY)


def test_a_model_that_does_not_think_has_no_reasoning_fields(stack):
    st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI})
    assert st == 200 and "reasoning_content" not in body["choices"][0]["message"]
    assert "completion_tokens_details" not in body["usage"]


def test_template_kwargs_and_reasoning_effort():
    """chat_template_kwargs goes to the template as JSON; reasoning_effort none / minimal turns
    thinking off unless the kwargs say otherwise; a non-object is a 400 naming it."""
    import pytest

    from npuflow.gateway.errors import ApiError
    from npuflow.gateway.validation import template_kwargs
    assert template_kwargs({}) == ""
    assert json.loads(template_kwargs({"chat_template_kwargs": {"x": 1}})) == {"x": 1}
    for effort in ("none", "minimal"):
        assert json.loads(template_kwargs({"reasoning_effort": effort})) == {"enable_thinking": False}
    assert template_kwargs({"reasoning_effort": "high"}) == ""
    assert json.loads(template_kwargs({"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}})) \
        == {"enable_thinking": True}
    for body, param in (({"chat_template_kwargs": [1]}, "chat_template_kwargs"), ({"reasoning_effort": 3}, "reasoning_effort")):
        with pytest.raises(ApiError) as e:
            template_kwargs(body)
        assert e.value.status == 400 and e.value.param == param


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}


def test_a_json_schema_applies_to_the_answer_after_thinking(stack):
    """For a model that thinks, the worker's grammar lets the block through first (the rest of a
    block the prompt opened, or one the model opens), and the answer is the JSON."""
    rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    for thinks, reply in (("open", ["Paris is", " a city.", "</think>", "\n\n", '{"city":', '"Paris"}']),
                          ("may", ["<think>", "Paris.", "</think>", "\n", '{"city":"Paris"}'])):
        stack.tokenizer.thinks, stack.worker.reply = thinks, reply
        try:
            st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI,
                                                                         "response_format": rf})
            assert st == 200, body
            msg = body["choices"][0]["message"]
            assert json.loads(msg["content"]) == {"city": "Paris"} and msg["reasoning_content"] in ("Paris is a city.",
                                                                                                   "Paris.")
            grammar = json.loads(stack.worker.requests[-1].grammar)
            assert grammar["grammars"][0]["name"] == "after_thinking"
            assert grammar["grammars"][1]["json_schema"]["required"] == ["city"]
        finally:
            stack.tokenizer.thinks, stack.worker.reply = "", list(REPLY)
    st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "response_format": rf})
    assert "after_thinking" not in stack.worker.requests[-1].grammar   # a model that does not think: as it was
