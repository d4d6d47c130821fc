"""The Responses API through the gateway (fake worker and tokenizer, the official client): whole
and streamed answers against the SDK's types, the typed event sequence, store / GET / DELETE,
previous_response_id chains, tools, text.format, reasoning items and the errors."""
import json

import pytest

from gw_fakes import MODEL, REPLY

TEXT = "".join(REPLY)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": False}


def _client(stack):
    from openai import OpenAI
    return OpenAI(api_key=stack.key, base_url=stack.base_url, max_retries=0)


def _events(stack, body):
    """The (event name, data) pairs of a streamed response, read raw."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    c.request("POST", "/v1/responses", body=json.dumps(dict(body, stream=True)).encode(),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.key}"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    out, name = [], None
    for line in r:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    c.close()
    return out


def test_whole_response_matches_the_sdk_types(stack, schema):
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "instructions": "Be brief.",
                                                          "metadata": {"k": "v"}, "temperature": 0.5})
    assert st == 200, body
    assert not schema("Response", body), schema("Response", body)
    assert body["object"] == "response" and body["status"] == "completed" and body["id"].startswith("resp_")
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"} and body["temperature"] == 0.5
    [msg] = body["output"]
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["status"] == "completed"
    assert msg["content"] == [{"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}]
    u = body["usage"]
    assert u["output_tokens"] == len(REPLY) and u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert u["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": u["input_tokens"]} and u["output_tokens_details"] == {"reasoning_tokens": 0}
    # the instructions are a system turn before the input
    roles = [(m.role, m.content) for m in stack.tokenizer.chats[-1].messages]
    assert roles == [("system", "Be brief."), ("user", "hi")]

    r = _client(stack).responses.create(model=MODEL, input="hi")
    assert r.output_text == TEXT and r.status == "completed"


def test_streamed_events_in_order(stack, schema):
    events = _events(stack, {"model": MODEL, "input": "hi"})
    for name, data in events:
        assert name == data["type"]
        assert not schema("ResponseStreamEvent", data), (name, schema("ResponseStreamEvent", data))
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    kinds = [n for n, _ in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == TEXT
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    added = events[2][1]["item"]
    assert added["status"] == "in_progress" and added["content"] == []
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == TEXT and final["usage"]["output_tokens"] == len(REPLY)


def test_sdk_stream_helper_and_create_stream(stack):
    client = _client(stack)
    with client.responses.stream(model=MODEL, input="hi") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == TEXT and final.output_text == TEXT
    kinds = [e.type for e in client.responses.create(model=MODEL, input="hi", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_store_get_delete_and_previous_response_id(stack):
    client = _client(stack)
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be kind.")
    assert client.responses.retrieve(first.id).output_text == TEXT
    second = client.responses.create(model=MODEL, input=[{"role": "user", "content": "And my name?"}],
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    turns = [(m.role, m.content) for m in stack.tokenizer.chats[-1].messages]
    # the previous instructions are not carried over; its input and its answer are
    assert turns == [("user", "My name is Ada."), ("assistant", TEXT), ("user", "And my name?")]
    third = client.responses.create(model=MODEL, input="Thanks.", previous_response_id=second.id,
                                    instructions="Be short.")
    turns = [(m.role, m.content) for m in stack.tokenizer.chats[-1].messages]
    assert turns[0] == ("system", "Be short.") and turns[1:] == [
        ("user", "My name is Ada."), ("assistant", TEXT), ("user", "And my name?"), ("assistant", TEXT),
        ("user", "Thanks.")]
    assert third.status == "completed"

    st, _, body = stack.request("DELETE", f"/v1/responses/{first.id}")
    assert st == 200 and body == {"id": first.id, "object": "response", "deleted": True}
    st, _, body = stack.request("GET", f"/v1/responses/{first.id}")
    assert st == 404 and body["error"]["param"] == "response_id" and first.id in body["error"]["message"]
    st, _, body = stack.request("DELETE", f"/v1/responses/{first.id}")
    assert st == 404
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "x",
                                                          "previous_response_id": first.id})
    assert st == 400 and body["error"]["param"] == "previous_response_id"
    assert body["error"]["code"] == "previous_response_not_found"
    # the others stay
    assert client.responses.retrieve(second.id).id == second.id


def test_store_false_keeps_nothing(stack):
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "store": False})
    assert st == 200 and body["store"] is False
    st, _, _ = stack.request("GET", f"/v1/responses/{body['id']}")
    assert st == 404


def test_store_bounds(make_stack):
    s = make_stack(responses_store_max=2)
    ids = [s.request("POST", "/v1/responses", {"model": MODEL, "input": f"q{i}"})[2]["id"] for i in range(3)]
    assert [s.request("GET", f"/v1/responses/{i}")[0] for i in ids] == [404, 200, 200]
    s = make_stack(responses_store_max_bytes=1500)
    st, _, body = s.request("POST", "/v1/responses", {"model": MODEL, "input": "x" * 1600})
    assert st == 200 and s.request("GET", f"/v1/responses/{body['id']}")[0] == 404   # alone larger than the bound


def test_store_ttl():
    from npuflow.gateway.responses_store import ResponseStore
    now = [0.0]
    store = ResponseStore(10, 60.0, 1 << 20, clock=lambda: now[0])
    store.put({"id": "resp_a"}, ())
    now[0] = 30.0
    store.put({"id": "resp_b"}, ())
    now[0] = 61.0
    assert store.get("resp_a") is None and store.get("resp_b") is not None and len(store) == 1


def test_input_items_become_turns(stack):
    items = [{"type": "message", "role": "developer", "content": "Use tools."},
             {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
             {"type": "reasoning", "id": "rs_1", "summary": []},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": items, "tools": [WEATHER]})
    assert st == 200, body
    msgs = stack.tokenizer.chats[-1].messages
    assert [m.role for m in msgs] == ["developer", "user", "assistant", "tool"]
    assert msgs[2].content == "Checking." and msgs[2].tool_calls[0].function_name == "get_weather"
    assert msgs[3].tool_call_id == "call_1" and msgs[3].content == "sunny"
    tools = json.loads(stack.tokenizer.chats[-1].tools_json)
    assert tools[0]["function"]["name"] == "get_weather"
    assert body["tools"][0]["name"] == "get_weather" and body["tool_choice"] == "auto"


CALL = ['<tool_call>\n{"name": ', '"get_weather", "arguments": ', '{"city": ', '"Paris"}}\n</tool_call>']


def test_function_call_output_items(stack, schema):
    stack.worker.reply = ["Let me check. "] + CALL
    try:
        r = _client(stack).responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
        kinds = [o.type for o in r.output]
        assert kinds == ["message", "function_call"], r.output
        call = r.output[1]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        assert call.call_id.startswith("call_") and call.status == "completed"

        events = _events(stack, {"model": MODEL, "input": "Weather?", "tools": [WEATHER]})
        for _, d in events:
            assert not schema("ResponseStreamEvent", d), schema("ResponseStreamEvent", d)
        args = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
        assert json.loads(args) == {"city": "Paris"}
        [done] = [d for n, d in events if n == "response.function_call_arguments.done"]
        assert done["arguments"] == args and done["name"] == "get_weather"
        # the call continues as a conversation: its output comes back as a function_call_output item
        nxt = _client(stack).responses.create(model=MODEL, previous_response_id=r.id, tools=[WEATHER], input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        msgs = stack.tokenizer.chats[-1].messages
        assert [m.role for m in msgs] == ["user", "assistant", "tool"]
        assert msgs[1].tool_calls[0].id == call.call_id and nxt.status == "completed"
    finally:
        stack.worker.reply = list(REPLY)


def test_incomplete_at_max_output_tokens(stack, schema):
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 16})
    assert st == 200 and body["status"] == "completed"   # the reply is 8 tokens
    stack.worker.reply = ["w "] * 40
    try:
        st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 16})
        assert st == 200 and body["status"] == "incomplete", body
        assert body["incomplete_details"] == {"reason": "max_output_tokens"} and body["usage"]["output_tokens"] == 16
        assert body["output"][0]["status"] == "incomplete" and not schema("Response", body)
        events = _events(stack, {"model": MODEL, "input": "hi", "max_output_tokens": 16})
        assert events[-1][0] == "response.incomplete"
        assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    finally:
        stack.worker.reply = list(REPLY)


def test_reasoning_item(stack, schema):
    stack.worker.reply = ["<think>", "The user", " greets.", "</think>", "\n\n", "Hello", "!"]
    try:
        st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi"})
        assert st == 200 and not schema("Response", body), schema("Response", body)
        rs, msg = body["output"]
        assert rs["type"] == "reasoning" and rs["content"] == [{"type": "reasoning_text", "text": "The user greets."}]
        assert msg["content"][0]["text"] == "Hello!" and body["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
        events = _events(stack, {"model": MODEL, "input": "hi"})
        for _, d in events:
            assert not schema("ResponseStreamEvent", d), schema("ResponseStreamEvent", d)
        assert "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta") == "The user greets."
        kinds = [n for n, _ in events]
        assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
        # the continuation carries the answer, not the thinking
        client = _client(stack)
        client.responses.create(model=MODEL, input="again", previous_response_id=body["id"])
        assert [m.content for m in stack.tokenizer.chats[-1].messages] == ["hi", "Hello!", "again"]
    finally:
        stack.worker.reply = list(REPLY)


def test_reasoning_effort_and_logprobs(stack):
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi",
                                                          "reasoning": {"effort": "minimal"},
                                                          "include": ["message.output_text.logprobs"],
                                                          "top_logprobs": 2})
    assert st == 200, body
    assert json.loads(stack.tokenizer.chats[-1].template_kwargs_json) == {"enable_thinking": False}
    lps = body["output"][0]["content"][0]["logprobs"]
    assert "".join(e["token"] for e in lps) == TEXT and all(len(e["top_logprobs"]) == 2 for e in lps)


def test_text_format_json_schema_reaches_the_worker(stack):
    schema_ = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "text": {
        "format": {"type": "json_schema", "name": "thing", "schema": schema_, "strict": True}}})
    assert st == 200, body
    g = stack.worker.requests[-1]
    assert g.grammar and g.grammar_param == "text.format"
    assert body["text"]["format"]["name"] == "thing"


@pytest.mark.parametrize("body, param, status", [
    ({"input": "hi"}, "model", 400),
    ({"model": MODEL}, "input", 400),
    ({"model": MODEL, "input": 5}, "input", 400),
    ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, "input[0].role", 400),
    ({"model": MODEL, "input": [{"type": "file_search_call"}]}, "input[0].type", 400),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", 400),
    ({"model": MODEL, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", 400),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", 400),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", 400),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice", 400),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": 3}}},
     "text.format.json_schema.schema", 400),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type", 400),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 8}, "max_output_tokens", 400),
    ({"model": MODEL, "input": "hi", "temperature": 3}, "temperature", 400),
    ({"model": MODEL, "input": "hi", "background": True, "store": False}, "background", 400),
    ({"model": MODEL, "input": "hi", "background": "yes"}, "background", 400),
    ({"model": MODEL, "input": "hi", "conversation": "conv_1"}, "conversation", 404),
    ({"model": MODEL, "input": "hi", "truncation": "sometimes"}, "truncation", 400),
    ({"model": MODEL, "input": "word " * 80, "truncation": "auto"}, "input", 400),
    ({"model": MODEL, "input": "hi", "include": ["everything"]}, "include[0]", 400),
    ({"model": MODEL, "input": "hi", "stream_options": {}}, "stream_options", 400),
    ({"model": "no-such-model", "input": "hi"}, "model", 404),
    ({"model": MODEL, "input": "word " * 80}, "input", 400),
])
def test_bad_requests(stack, schema, body, param, status):
    st, _, out = stack.request("POST", "/v1/responses", body)
    assert st == status and out["error"]["param"] == param, out
    assert not schema("ErrorResponse", out)


def test_auth_and_a_failure_while_streaming(stack, schema):
    st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi"}, auth=False)
    assert st == 401
    stack.worker.capacity = 1
    stack.worker.reply = ["slow "] * 50
    stack.worker.delay = 0.02
    import threading
    first = threading.Thread(target=stack.request, args=("POST", "/v1/responses", {"model": MODEL, "input": "a"}))
    first.start()
    try:
        import time
        while not stack.worker._gens:
            time.sleep(0.01)
        events = _events(stack, {"model": MODEL, "input": "b"})
        name, data = events[-1]
        assert name == "response.failed" and data["response"]["status"] == "failed", events[-3:]
        assert data["response"]["error"]["code"] in ("server_error", "rate_limit_exceeded")
        assert not schema("ResponseStreamEvent", data), schema("ResponseStreamEvent", data)
    finally:
        first.join(10)
        stack.worker.capacity = 0
        stack.worker.reply = list(REPLY)
        stack.worker.delay = 0.001


def test_input_image_reaches_a_vision_model(make_stack):
    from test_image_input import data_url
    s = make_stack(vision=True)
    st, _, body = s.request("POST", "/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": data_url(), "detail": "low"}]}]})
    assert st == 200, body
    [m] = s.tokenizer.chats[-1].messages
    assert [p.WhichOneof("part") for p in m.parts] == ["text", "image"] and m.parts[1].image.detail == "low"
    assert len(s.worker.requests[-1].images) == 1
    st, _, body = s.request("POST", "/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-1"}]}]})
    assert st == 400 and body["error"]["param"] == "input[0].content[0].file_id"


def test_a_client_that_leaves_aborts_the_generation(stack):
    import http.client
    import time
    stack.worker.reply, stack.worker.delay = ["slow "] * 200, 0.02
    try:
        c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        c.request("POST", "/v1/responses", body=json.dumps({"model": MODEL, "input": "hi", "stream": True}).encode(),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.key}"})
        r = c.getresponse()
        while b"response.output_text.delta" not in r.readline():
            pass
        rid = stack.worker.requests[-1].request_id
        c.close()
        end = time.monotonic() + 5
        while rid not in stack.worker.aborts and time.monotonic() < end:
            time.sleep(0.02)
        assert rid in stack.worker.aborts and rid.startswith("resp_")
    finally:
        stack.worker.reply, stack.worker.delay = list(REPLY), 0.001


def test_input_items_of_a_stored_response(stack, schema):
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}]
    client = _client(stack)
    r = client.responses.create(model=MODEL, input=items, tools=[WEATHER])
    listed = client.responses.input_items.list(r.id, order="asc")
    assert [i.type for i in listed.data] == ["message", "message", "function_call", "function_call_output"]
    assert listed.data[0].content[0].text == "Be brief." and listed.data[2].call_id == "call_9"
    assert not listed.has_more and listed.first_id == listed.data[0].id
    desc = client.responses.input_items.list(r.id, limit=2)
    assert [i.id for i in desc.data] == [i.id for i in listed.data[::-1][:2]] and desc.has_more
    rest = client.responses.input_items.list(r.id, limit=2, after=desc.last_id)
    assert [i.id for i in rest.data] == [i.id for i in listed.data[::-1][2:]] and not rest.has_more
    st, _, body = stack.request("GET", f"/v1/responses/{r.id}/input_items?limit=0")
    assert st == 400 and body["error"]["param"] == "limit"
    st, _, body = stack.request("GET", "/v1/responses/resp_nope/input_items")
    assert st == 404


def _turns(n: int, words: int = 12) -> list[dict]:
    """n alternating user / assistant messages of `words` words each (the fake tokenizer: a token a word)."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(f"w{i}" for _ in range(words))}
            for i in range(n)]


def test_truncation_auto_drops_the_oldest_turns(stack, schema):
    """Over the context (64 tokens here) "disabled" is a 400; "auto" drops the fewest leading turns
    that make it fit, keeps the instructions and the developer turns, and the echo says "auto"."""
    turns = [{"role": "developer", "content": "Be brief."}] + _turns(7)
    st, _, out = stack.request("POST", "/v1/responses", {"model": MODEL, "input": turns, "max_output_tokens": 16})
    assert st == 400 and out["error"]["code"] == "context_length_exceeded" and out["error"]["param"] == "input"
    r = _client(stack).responses.create(model=MODEL, input=turns, instructions="Answer.", truncation="auto",
                                        max_output_tokens=16)
    assert r.status == "completed" and r.truncation == "auto" and r.output_text == TEXT
    assert not schema("Response", r.model_dump(mode="json"))
    sent = [(m.role, m.content.split()[0]) for m in stack.tokenizer.chats[-1].messages]
    # a token a word, roles included: instructions (2) + developer (3) + the last three turns (3 x 13)
    # + <assistant> = 45; a fourth turn (58) would leave fewer than the 16 tokens asked for the answer
    assert sent == [("system", "Answer."), ("developer", "Be"), ("user", "w4"), ("assistant", "w5"), ("user", "w6")]
    assert r.usage.input_tokens == 45
    # the stored conversation stays whole: a continuation is truncated again from all of it
    r2 = _client(stack).responses.create(model=MODEL, input="and?", previous_response_id=r.id, truncation="auto",
                                         max_output_tokens=16)
    assert r2.status == "completed"
    assert [m.content.split()[0] for m in stack.tokenizer.chats[-1].messages][-2:] == TEXT.split()[:1] + ["and?"]


def test_truncation_auto_drops_a_tool_result_with_its_call(stack):
    """A tool result too long to keep goes with the call it answers, never alone."""
    turns = [{"role": "user", "content": "weather in Oslo?"},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny " * 50},
             {"role": "user", "content": "thanks, and tomorrow?"}]
    r = _client(stack).responses.create(model=MODEL, input=turns, tools=[WEATHER], truncation="auto",
                                        max_output_tokens=16)
    assert r.status == "completed"
    assert [m.role for m in stack.tokenizer.chats[-1].messages] == ["user"]


def test_input_tokens_count(stack, schema):
    """POST /v1/responses/input_tokens counts what a response would start from: instructions, the
    previous response's conversation and the input, as usage.input_tokens reports it."""
    c = _client(stack)

    def count(**body) -> int:
        st, _, out = stack.request("POST", "/v1/responses/input_tokens", body)
        assert st == 200 and not schema("TokenCountsResource", out), out
        return out["input_tokens"]

    body = dict(model=MODEL, input="what is the weather in Oslo", instructions="Be brief.")
    assert count(**body) == c.responses.create(**body).usage.input_tokens
    if hasattr(c.responses, "input_tokens"):       # the SDK's own call (openai >= 2)
        assert c.responses.input_tokens.count(**body).input_tokens == count(**body)
    assert count(input="hi") == 3                   # `model` left out: this server has one language model
    first = c.responses.create(model=MODEL, input="hi")
    more = count(model=MODEL, input="and?", previous_response_id=first.id)
    assert more == c.responses.create(model=MODEL, input="and?", previous_response_id=first.id).usage.input_tokens
    assert count(model=MODEL, input=_turns(7)) > 64 >= count(model=MODEL, input=_turns(7), truncation="auto")
    for bad, param, status in [({"model": MODEL, "input": "hi", "previous_response_id": "resp_none"},
                                "previous_response_id", 400),
                               ({"model": "no-such-model", "input": "hi"}, "model", 404),
                               ({"model": MODEL, "input": 3}, "input", 400)]:
        st, _, out = stack.request("POST", "/v1/responses/input_tokens", bad)
        assert st == status and out["error"]["param"] == param, out
        assert not schema("ErrorResponse", out)


def test_cancel_is_for_background_responses_only(stack, schema):
    import openai
    c = _client(stack)
    r = c.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.cancel(r.id)
    assert e.value.body["code"] == "response_not_cancellable" and e.value.body["param"] == "response_id"
    assert c.responses.retrieve(r.id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        c.responses.cancel("resp_none")
