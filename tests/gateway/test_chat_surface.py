"""The rest of the chat surface against fake peers: structured output and tools reach the worker
as a grammar, tool calls come back as tool_calls (whole and streamed, through the official
client's stream helper), unsupported inputs and outputs are clear 400s, /tokenize, /detokenize."""
import json

import pytest

from gw_fakes import MODEL

HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = ['<tool_call>', '\n{"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}', '\n</tool_call>']


def chat(stack, **kw):
    return stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, **kw})


@pytest.mark.parametrize("patch,param", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),      # an image URL without a scheme
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
])
def test_unsupported_and_invalid_are_400_naming_the_field(stack, patch, param):
    st, _, body = chat(stack, **patch)
    assert st == 400, body
    assert body["error"]["param"] == param
    if "content[0]" in param:
        assert body["error"]["code"] in ("unsupported_value", "unsupported_image_url"), body


def test_text_parts_and_unknown_fields(stack):
    st, _, body = chat(stack, messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                     {"type": "text", "text": "b"}]}],
                       some_future_field={"x": 1}, parallel_tool_calls=True)
    assert st == 200, body


def test_response_format_sends_a_grammar(stack):
    stack.worker.requests.clear()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert chat(stack, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})[0] == 200
    assert chat(stack, response_format={"type": "json_object"})[0] == 200
    assert chat(stack)[0] == 200
    g1, g2, g3 = stack.worker.requests[-3:]
    assert g1.grammar_param == "response_format" and '"a"' in g1.grammar
    assert g2.grammar and g3.grammar == "" and g3.grammar_param == ""


def test_forced_tool_choice_sends_the_call_schema(stack):
    stack.worker.requests.clear()
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat(stack, tools=TOOLS, tool_choice=named)[0] == 200
    assert chat(stack, tools=TOOLS, tool_choice="auto")[0] == 200
    forced, auto = stack.worker.requests[-2:]
    assert forced.grammar_param == "tool_choice" and "get_weather" in forced.grammar
    assert auto.grammar == ""
    assert "get_weather" in stack.tokenizer.chats[-1].tools_json


def test_tool_calls_whole_and_streamed(stack):
    stack.worker.reply = ["Let me check. "] + CALL
    delay = stack.worker.delay
    try:
        st, _, body = chat(stack, tools=TOOLS)
        assert st == 200, body
        ch = body["choices"][0]
        assert ch["finish_reason"] == "tool_calls"
        (call,) = ch["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert ch["message"]["content"] == "Let me check."
        none = chat(stack, tools=TOOLS, tool_choice="none")[2]["choices"][0]
        assert "tool_calls" not in none["message"] and "<tool_call>" in none["message"]["content"]

        from openai import OpenAI
        client = OpenAI(api_key=stack.key, base_url=stack.base_url, max_retries=0)
        with client.chat.completions.stream(model=MODEL, messages=HI, tools=TOOLS) as s:
            events = list(s)
            final = s.get_final_completion()
        content = "".join(e.delta for e in events if e.type == "content.delta")
        assert content == "Let me check. " and "<tool" not in content
        fc = final.choices[0]
        assert fc.finish_reason == "tool_calls"
        assert fc.message.tool_calls[0].function.name == "get_weather"
        assert json.loads(fc.message.tool_calls[0].function.arguments) == {"city": "Paris"}

        # the call streams as it is written: id, type and name first, then the arguments in pieces
        # (tokens paced, as a model writes them: deltas that pile up behind a slow reader are merged,
        # and on a loaded machine the whole call could otherwise arrive as one piece)
        stack.worker.delay = 0.01
        chunks = list(client.chat.completions.create(model=MODEL, messages=HI, tools=TOOLS, stream=True))
        parts = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
        assert len(parts) >= 2 and {p.index for p in parts} == {0}
        assert parts[0].id.startswith("call_") and parts[0].type == "function" and parts[0].function.name == "get_weather"
        assert all(p.id is None and p.function.name is None for p in parts[1:])
        assert "".join(p.function.arguments or "" for p in parts) == '{"city": "Paris"}'
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    finally:
        from gw_fakes import REPLY
        stack.worker.reply = list(REPLY)
        stack.worker.delay = delay


def test_tokenize_and_detokenize(stack):
    st, _, body = stack.request("POST", "/tokenize", {"model": MODEL, "prompt": "a b c"})
    assert st == 200 and body["count"] == 3 == len(body["tokens"]) and body["max_model_len"] == 64
    st, _, chat_body = stack.request("POST", "/tokenize", {"model": MODEL, "messages": HI})
    assert st == 200 and chat_body["count"] >= 1
    st, _, body = stack.request("POST", "/detokenize", {"model": MODEL, "tokens": [1, 2]})
    assert st == 200 and body == {"prompt": "t1 t2"}
    assert stack.request("POST", "/detokenize", {"model": MODEL, "tokens": "x"})[0] == 400
    assert stack.request("POST", "/tokenize", {"model": "nope", "prompt": "x"})[0] == 404


def test_health_shows_worker_batch(stack):
    body = stack.wait_health(200)
    w = body["workers"][MODEL]
    assert set(w) == {"running", "waiting"} and all(isinstance(v, int) for v in w.values())
