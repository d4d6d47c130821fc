"""The chat-completions surface through the real stack: logprobs, multibyte streaming, seeds and
n, structured output, tools, tokenize/detokenize, and cancellation seen from the worker."""
import json
import time

import http.client
import socket
import jsonschema
import pytest

from e2e_stack import DEFAULT_ID

pytestmark = pytest.mark.e2e


def test_logprobs_cover_the_content_whole_and_streamed(client):
    kw = dict(model=DEFAULT_ID, temperature=0, max_tokens=40, logprobs=True, top_logprobs=3,
              messages=[{"role": "user", "content": "Say hello in one short sentence."}])
    r = client.chat.completions.create(**kw).choices[0]
    lps = r.logprobs.content
    assert lps and "".join(t.token for t in lps) == r.message.content
    assert b"".join(bytes(t.bytes) for t in lps) == r.message.content.encode()
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lps)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-4 for t in lps)   # greedy: the best
    chunks = [c for c in client.chat.completions.create(stream=True, **kw) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert text == r.message.content and [t.token for t in streamed] == [t.token for t in lps]
    c = client.completions.create(model=DEFAULT_ID, prompt="The capital of France is", max_tokens=6,
                                  temperature=0, logprobs=2).choices[0]
    assert "".join(c.logprobs.tokens) == c.text and all(len(t) == 2 for t in c.logprobs.top_logprobs)


def test_multibyte_stream_equals_whole(client):
    kw = dict(model=DEFAULT_ID, temperature=0, max_tokens=48,
              messages=[{"role": "user", "content": "Répète exactement: 日本語のテキスト 😀🚀 café"}])
    whole = client.chat.completions.create(**kw).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
              if c.choices]
    assert "".join(pieces) == whole and "\ufffd" not in whole
    assert any(ord(ch) > 0x2000 for ch in whole)   # the answer does hold multibyte characters


def test_seed_and_n(client):
    kw = dict(model=DEFAULT_ID, temperature=1.2, max_tokens=12, messages=[{"role": "user", "content": "A word?"}])
    a = client.chat.completions.create(seed=7, n=3, **kw)
    b = client.chat.completions.create(seed=7, n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1


def test_response_format_json_schema_and_object(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=DEFAULT_ID, temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Give a person's name and age as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    o = client.chat.completions.create(model=DEFAULT_ID, temperature=0.8, seed=1, max_tokens=80,
                                       messages=[{"role": "user", "content": "Describe a cat in JSON."}],
                                       response_format={"type": "json_object"}).choices[0]
    if o.finish_reason == "stop":
        assert isinstance(json.loads(o.message.content), dict)
    else:
        assert o.finish_reason == "length" and o.message.content.startswith("{")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "maxLength": 30}},
                                               "required": ["city"], "additionalProperties": False}}}]


def test_forced_tool_call_whole_streamed_and_history(client):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    kw = dict(model=DEFAULT_ID, temperature=0, max_tokens=60, tools=TOOLS)
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(messages=msgs, tool_choice=choice, **kw).choices[0]
        assert r.finish_reason == "tool_calls"
        call = r.message.tool_calls[0]
        assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    with client.chat.completions.stream(messages=msgs, tool_choice="required", **kw) as s:
        arg_events = sum(e.type == "tool_calls.function.arguments.delta" for e in s)
        final = s.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and final.message.tool_calls[0].function.name == "get_weather"
    assert arg_events > 1          # the arguments arrive as they are generated, not in one piece
    assert "city" in json.loads(final.message.tool_calls[0].function.arguments)
    history = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = client.chat.completions.create(messages=history, tool_choice="none", **kw)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content


PLACE = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
         "required": ["city"], "additionalProperties": False}


def _place_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "$defs": {"place": PLACE}, "type": "object", "properties": {"where": {"$ref": "#/$defs/place"}},
        "required": ["where"], "additionalProperties": False}}}


def test_forced_tool_call_with_local_refs(client):
    # the parameters' "#/$defs/..." refs still resolve once the call schema wraps them
    tools = [_place_tool("get_weather"), _place_tool("get_time")]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ({"type": "function", "function": {"name": "get_time"}}, "required"):
        r = client.chat.completions.create(model=DEFAULT_ID, temperature=0, max_tokens=60, messages=msgs,
                                           tools=tools, tool_choice=choice).choices[0]
        assert r.finish_reason == "tool_calls", r
        call = r.message.tool_calls[0].function
        assert call.name in ("get_weather", "get_time")
        if isinstance(choice, dict):
            assert call.name == "get_time"
        jsonschema.validate(json.loads(call.arguments), {**tools[0]["function"]["parameters"]})


def test_tokenize_detokenize_match_generation(stack, client):
    msgs = [{"role": "user", "content": "Hello there!"}]
    tok = stack.post("/tokenize", {"model": DEFAULT_ID, "messages": msgs})
    usage = client.chat.completions.create(model=DEFAULT_ID, messages=msgs, max_tokens=1).usage
    assert tok["count"] == usage.prompt_tokens == len(tok["tokens"]) and tok["max_model_len"] == 2048
    t = stack.post("/tokenize", {"model": DEFAULT_ID, "prompt": "Hello, world! 日本"})
    assert stack.post("/detokenize", {"model": DEFAULT_ID, "tokens": t["tokens"]})["prompt"] == "Hello, world! 日本"


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_frees_the_workers_slot(stack, stream):
    body = {"model": DEFAULT_ID, "max_tokens": 1500, "ignore_eos": True, "stream": stream,
            "messages": [{"role": "user", "content": "Write a very long story."}]}
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=1.5)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
              headers={"Content-Type": "application/json"})
    if stream:
        r = c.getresponse()
        for line in r:
            if line.startswith(b"data:") and b'"content": "' in line and b'"content": ""' not in line:
                break
        assert stack.wait_running(DEFAULT_ID, 1, 2.0)
    else:
        with pytest.raises(socket.timeout):
            c.getresponse()
        assert stack.running(DEFAULT_ID) == 1
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    t0 = time.monotonic()
    assert stack.wait_running(DEFAULT_ID, 0, 2.0), "the worker kept generating for a client that left"
    # the slot frees within a decode step; the heartbeat that reports it comes every 0.2 s
    assert time.monotonic() - t0 < 1.0


def _cached_counter(stack) -> float:
    import re
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'npuflow_cached_prompt_tokens_total{{model="{re.escape(DEFAULT_ID)}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_a_conversation_reuses_the_kv_of_its_earlier_turns(stack, client):
    """The next turn of a conversation starts with the previous prompt: the worker keeps that
    prompt's KV in the freed slot and computes only the new tokens (usage reports them as
    cached_tokens); the same prompt again reuses all but its last two tokens and answers the same."""
    system = {"role": "system", "content": "You are a concise assistant who answers in one short sentence. " * 6}
    first = [system, {"role": "user", "content": "Name a colour."}]
    r1 = client.chat.completions.create(model=DEFAULT_ID, messages=first, temperature=0, max_tokens=8)
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And another one?"}]
    before = _cached_counter(stack)
    r2 = client.chat.completions.create(model=DEFAULT_ID, messages=second, temperature=0, max_tokens=8)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 2
    r3 = client.chat.completions.create(model=DEFAULT_ID, messages=second, temperature=0, max_tokens=8)
    assert r3.usage.prompt_tokens_details.cached_tokens == r3.usage.prompt_tokens - 2
    assert r3.choices[0].message.content == r2.choices[0].message.content
    assert _cached_counter(stack) - before == r2.usage.prompt_tokens_details.cached_tokens + \
        r3.usage.prompt_tokens_details.cached_tokens
