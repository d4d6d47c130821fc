"""The OpenAI routes driven by the official `openai` client; every body checked against the spec."""
import json

import openai
import pytest

from gw_fakes import MODEL
from gw_fakes import REPLY

MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=10)


def test_models(stack, client, schema):
    st, _, body = stack.request("GET", "/v1/models")
    assert st == 200 and not schema("ListModelsResponse", body)
    assert [m.id for m in client.models.list().data] == [MODEL]
    m = client.models.retrieve(MODEL)
    assert m.owned_by == "npuflow" and m.created == 1700000000
    st, _, body = stack.request("GET", f"/v1/models/{MODEL}")
    assert st == 200 and not schema("Model", body)


def test_chat(stack, client, schema):
    r = client.chat.completions.create(model=MODEL, messages=MSGS)
    assert r.choices[0].message.content == "Hello world, this is a test."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens == len(stack.worker.requests[-1].prompt_token_ids)
    st, _, body = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": MSGS})
    assert st == 200 and not schema("CreateChatCompletionResponse", body)


def test_chat_max_tokens_gives_length(stack, client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content == "Hello world,"
    assert stack.worker.requests[-1].sampling.max_tokens == 3
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=2)
    assert r.choices[0].message.content == "Hello world"


def test_chat_without_max_tokens_runs_to_context(stack, client):
    stack.worker.reply = ["x"] * 100
    try:
        r = client.chat.completions.create(model=MODEL, messages=MSGS)
    finally:
        stack.worker.reply = list(REPLY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == stack.context_length


def _stream_checks(events, schema, include_usage, n=1):
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        assert not schema("CreateChatCompletionStreamResponse", c), c
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    first = chunks[0]["choices"]
    assert sorted(ch["index"] for ch in first) == list(range(n))
    assert all(ch["delta"] == {"role": "assistant", "content": ""} for ch in first)
    finishes = [(ch["index"], ch["finish_reason"]) for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(i for i, _ in finishes) == list(range(n))   # exactly once per choice
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)
    return chunks


def test_chat_stream(stack, schema):
    st, ctype, events = stack.sse("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stream": True})
    assert st == 200 and ctype.startswith("text/event-stream")
    chunks = _stream_checks(events, schema, include_usage=False)
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == "Hello world, this is a test."


def test_chat_stream_include_usage(stack, schema):
    st, _, events = stack.sse("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stream": True,
                                                       "stream_options": {"include_usage": True}})
    chunks = _stream_checks(events, schema, include_usage=True)
    u = chunks[-1]["usage"]
    assert u["completion_tokens"] == 8 and u["total_tokens"] == u["prompt_tokens"] + 8


def test_chat_stream_n2(stack, schema):
    st, _, events = stack.sse("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stream": True, "n": 2,
                                                       "stream_options": {"include_usage": True}})
    chunks = _stream_checks(events, schema, include_usage=True, n=2)
    assert chunks[-1]["usage"]["completion_tokens"] == 16


def test_chat_stream_sdk(stack, client):
    parts, finish = [], []
    for chunk in client.chat.completions.create(model=MODEL, messages=MSGS, stream=True, stop=[" is", "zzz"]):
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert "".join(parts) == "Hello world, this" and finish == ["stop"]
    assert list(stack.worker.requests[-1].sampling.stop) == [" is", "zzz"]


def test_every_role_reaches_tokenizer(stack, client):
    msgs = [{"role": "system", "content": "sys"}, {"role": "developer", "content": "dev"},
            {"role": "user", "content": [{"type": "text", "text": "part1"}, {"type": "text", "text": "part2"}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(model=MODEL, messages=msgs, tools=tools)
    chat = stack.tokenizer.chats[-1]
    assert [m.role for m in chat.messages] == ["system", "developer", "user", "assistant", "tool"]
    assert chat.messages[2].content == "part1\npart2"
    assert chat.messages[3].tool_calls[0].function_name == "f" and chat.messages[4].tool_call_id == "c1"
    assert chat.add_generation_prompt and json.loads(chat.tools_json) == tools


def test_sampling_params_reach_worker(stack, client):
    client.chat.completions.create(model=MODEL, messages=MSGS)
    sp = stack.worker.requests[-1].sampling
    for f in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
              "repetition_penalty", "seed"):
        assert not sp.HasField(f), f   # unset -> the model's defaults apply
    client.chat.completions.create(
        model=MODEL, messages=MSGS, temperature=0.3, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=-1,
        logit_bias={"17": -100}, max_tokens=5, n=2, stop="zz",
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "some_unknown_field": 1})
    g = stack.worker.requests[-1]
    sp = g.sampling
    assert g.n == 2 and sp.max_tokens == 5 and list(sp.stop) == ["zz"] and dict(sp.logit_bias) == {17: -100}
    assert sp.temperature == pytest.approx(0.3) and sp.top_p == pytest.approx(0.9) and sp.seed == 7
    assert sp.top_k == 40 and sp.min_p == pytest.approx(0.05) and sp.repetition_penalty == pytest.approx(1.1)
    assert sp.presence_penalty == 0.5 and sp.frequency_penalty == -1
    assert g.deadline_unix_ms > 0


def test_chat_logprobs(stack, client, schema):
    st, _, body = stack.request("POST", "/v1/chat/completions",
                                {"model": MODEL, "messages": MSGS, "logprobs": True, "top_logprobs": 2})
    assert st == 200 and not schema("CreateChatCompletionResponse", body)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and content[0]["token"] == "Hello" and len(content[0]["top_logprobs"]) == 2
    st, _, events = stack.sse("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "stream": True,
                                                       "logprobs": True, "top_logprobs": 1})
    _stream_checks(events, schema, include_usage=False)


def test_completions(stack, client, schema):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert r.choices[0].text == "Hello world, this" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 4
    for prompt in ("Once upon", ["a b", "c"], [1, 2, 3], [[1, 2], [3]]):
        st, _, body = stack.request("POST", "/v1/completions", {"model": MODEL, "prompt": prompt, "n": 2})
        assert st == 200 and not schema("CreateCompletionResponse", body), body
        k = 1 if isinstance(prompt, str) or isinstance(prompt[0], int) else len(prompt)
        assert [c["index"] for c in body["choices"]] == list(range(2 * k))


def test_completions_echo_and_logprobs(stack, schema):
    st, _, body = stack.request("POST", "/v1/completions",
                                {"model": MODEL, "prompt": "Hi", "echo": True, "max_tokens": 2, "logprobs": 2})
    assert st == 200 and not schema("CreateCompletionResponse", body)
    assert body["choices"][0]["text"] == "HiHello world"
    assert body["choices"][0]["logprobs"]["tokens"] == ["Hello", " world"]
    st, _, body = stack.request("POST", "/v1/completions", {"model": MODEL, "prompt": [5, 6], "echo": True,
                                                            "max_tokens": 1})
    assert body["choices"][0]["text"] == "t5 t6Hello"


def test_completions_stream(stack, client, schema):
    st, ctype, events = stack.sse("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "stream": True,
                                                      "max_tokens": 3, "stream_options": {"include_usage": True}})
    assert st == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks[:-1]:
        # OpenAI streams finish_reason null until the end, which the (shared) response schema
        # does not allow; everything else must match
        c2 = json.loads(json.dumps(c).replace('"finish_reason": null', '"finish_reason": "stop"'))
        assert not schema("CreateCompletionResponse", c2), c
        assert "usage" not in c
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] += ch["text"]
    assert texts == {0: "Hello world,", 1: "Hello world,"}
    got = "".join(c.choices[0].text for c in client.completions.create(model=MODEL, prompt="x", stream=True,
                                                                       max_tokens=2))
    assert got == "Hello world"


def test_health_and_metrics_open(stack):
    st, _, body = stack.request("GET", "/health", auth=False)
    assert st == 200 and body["status"] == "ok" and body["models"] == {MODEL: True}
    st, headers, text = stack.request("GET", "/metrics", auth=False)
    assert st == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("npuflow_http_requests_total", "npuflow_time_to_first_token_seconds_bucket",
                 "npuflow_inter_token_seconds_bucket", "npuflow_generated_tokens_total",
                 "npuflow_requests_in_flight", "npuflow_requests_queued", "npuflow_worker_restarts_total"):
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text
