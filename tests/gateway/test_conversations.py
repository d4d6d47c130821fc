"""The Conversations API through the gateway (fake worker and tokenizer, the official client):
conversations made, read, changed and deleted; their items added, listed a page at a time, read
and deleted; responses made with `conversation` start from its items and add their own; the
errors and the store's bounds."""
import pytest

from gw_fakes import MODEL, REPLY
from test_responses import WEATHER, _client

from npuflow.gateway.conversations import ConversationStore

TEXT = "".join(REPLY)


def _conv_shapes():
    try:
        from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItemList
    except ImportError:      # openai before the Conversations API (the lowest version the tests run with has it)
        pytest.fail("this openai package has no Conversations API types")
    return Conversation, ConversationItemList, ConversationDeletedResource


def test_create_retrieve_update_delete(stack):
    Conversation, _, Deleted = _conv_shapes()
    c = _client(stack)
    conv = c.conversations.create(metadata={"topic": "demo"},
                                  items=[{"type": "message", "role": "user", "content": "Hello!"}])
    assert conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    assert c.conversations.retrieve(conv.id).created_at == conv.created_at
    st, _, raw = stack.request("GET", f"/v1/conversations/{conv.id}")
    assert st == 200 and Conversation.model_validate(raw, strict=True).id == conv.id
    assert c.conversations.update(conv.id, metadata={"topic": "other"}).metadata == {"topic": "other"}
    assert c.conversations.retrieve(conv.id).metadata == {"topic": "other"}
    empty = c.conversations.create()
    assert empty.metadata == {} and c.conversations.items.list(empty.id).data == []
    st, _, raw = stack.request("DELETE", f"/v1/conversations/{conv.id}")
    assert st == 200 and raw == {"id": conv.id, "object": "conversation.deleted", "deleted": True}
    Deleted.model_validate(raw, strict=True)
    st, _, body = stack.request("GET", f"/v1/conversations/{conv.id}")
    assert st == 404 and body["error"]["param"] == "conversation_id" and conv.id in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "not_found"
    assert stack.request("DELETE", f"/v1/conversations/{conv.id}")[0] == 404
    assert stack.request("POST", f"/v1/conversations/{conv.id}", {"metadata": {}})[0] == 404
    assert stack.request("GET", f"/v1/conversations/{conv.id}/items")[0] == 404


def test_items_added_listed_read_and_deleted(stack):
    _, ItemList, _ = _conv_shapes()
    c = _client(stack)
    conv = c.conversations.create(items=[{"type": "message", "role": "user", "content": "one"},
                                         {"type": "message", "role": "assistant", "content": "two"}])
    added = c.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "three"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    assert [i.type for i in added.data] == ["message", "function_call", "function_call_output"]
    assert added.first_id == added.data[0].id and added.last_id == added.data[-1].id and not added.has_more
    st, _, raw = stack.request("GET", f"/v1/conversations/{conv.id}/items?order=asc")
    assert st == 200 and not ItemList.model_validate(raw, strict=True).has_more
    texts = [i["content"][0]["text"] for i in raw["data"] if i["type"] == "message"]
    assert texts == ["one", "two", "three"] and raw["data"][1]["content"][0]["type"] == "output_text"
    assert all(i["status"] == "completed" and i["id"] for i in raw["data"])
    ids = [i["id"] for i in raw["data"]]
    page = c.conversations.items.list(conv.id, limit=2)     # newest first by default
    assert [i.id for i in page.data] == ids[::-1][:2] and page.has_more
    rest = c.conversations.items.list(conv.id, limit=10, after=page.last_id)
    assert [i.id for i in rest.data] == ids[::-1][2:] and not rest.has_more
    assert [i.id for i in c.conversations.items.list(conv.id, order="asc")] == ids     # the SDK's pager
    assert c.conversations.items.retrieve(ids[3], conversation_id=conv.id).type == "function_call"
    after = c.conversations.items.delete(ids[0], conversation_id=conv.id)
    assert after.id == conv.id and after.object == "conversation"
    assert [i.id for i in c.conversations.items.list(conv.id, order="asc").data] == ids[1:]
    st, _, body = stack.request("GET", f"/v1/conversations/{conv.id}/items/{ids[0]}")
    assert st == 404 and body["error"]["param"] == "item_id"
    st, _, body = stack.request("GET", f"/v1/conversations/{conv.id}/items?after=nope")
    assert st == 400 and body["error"]["param"] == "after"
    st, _, body = stack.request("GET", f"/v1/conversations/{conv.id}/items?limit=0")
    assert st == 400 and body["error"]["param"] == "limit"


def test_response_starts_from_the_conversation_and_adds_to_it(stack):
    c = _client(stack)
    conv = c.conversations.create(items=[{"type": "message", "role": "user", "content": "My name is Ada."}])
    first = c.responses.create(model=MODEL, conversation=conv.id, input="And my name?", instructions="Be kind.")
    assert first.conversation.id == conv.id and first.output_text == TEXT
    turns = [(m.role, m.content) for m in stack.tokenizer.chats[-1].messages]
    assert turns == [("system", "Be kind."), ("user", "My name is Ada."), ("user", "And my name?")]
    items = c.conversations.items.list(conv.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"), ("message", "user"), ("message", "assistant")]
    assert items[-1].id == first.output[0].id and items[-1].content[0].text == TEXT
    prompt = list(stack.worker.requests[-1].prompt_token_ids)
    # the object form; streamed; no input of its own is needed
    events = list(c.responses.create(model=MODEL, conversation={"id": conv.id}, input="Thanks.", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.conversation.id == conv.id
    turns = [(m.role, m.content) for m in stack.tokenizer.chats[-1].messages]
    assert turns == [("user", "My name is Ada."), ("user", "And my name?"), ("assistant", TEXT), ("user", "Thanks.")]
    again = c.responses.create(model=MODEL, conversation=conv.id, instructions="Be kind.")
    assert again.status == "completed"
    # with the same instructions the prompt starts as the first one did (the worker's prefix cache reuses it)
    assert list(stack.worker.requests[-1].prompt_token_ids)[:len(prompt)] == prompt
    assert len(c.conversations.items.list(conv.id).data) == 6     # 3, then Thanks. and its reply, then a reply
    st, _, raw = stack.request("GET", f"/v1/responses/{first.id}")
    assert st == 200 and raw["conversation"] == {"id": conv.id}


def test_conversation_with_tool_calls_renders_them(stack):
    stack.worker.reply = ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>']
    try:
        c = _client(stack)
        conv = c.conversations.create()
        r = c.responses.create(model=MODEL, conversation=conv.id, input="Weather in Paris?", tools=[WEATHER])
        call = next(o for o in r.output if o.type == "function_call")
    finally:
        stack.worker.reply = REPLY
    c.responses.create(model=MODEL, conversation=conv.id, tools=[WEATHER],
                       input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    msgs = stack.tokenizer.chats[-1].messages
    assert [m.role for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1].tool_calls[0].function_name == "get_weather" and msgs[2].content == "sunny"
    kinds = [i.type for i in c.conversations.items.list(conv.id, order="asc").data]
    assert kinds == ["message", "function_call", "function_call_output", "message"]


def test_failed_or_cancelled_responses_add_nothing(stack):
    c = _client(stack)
    conv = c.conversations.create()
    stack.worker.fail_with = "engine exploded"
    try:
        st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "conversation": conv.id})
    finally:
        stack.worker.fail_with = None
    assert st >= 500, body
    assert c.conversations.items.list(conv.id).data == []


@pytest.mark.parametrize("body,param,code", [
    ({"input": "x", "conversation": "conv_nope"}, "conversation", "not_found"),
    ({"input": "x", "conversation": {"nope": 1}}, "conversation.id", "missing_required_parameter"),
    ({"input": "x", "conversation": 5}, "conversation", None),
    ({"input": "x", "conversation": "conv_x", "previous_response_id": "resp_x"}, "conversation",
     "mutually_exclusive_parameters"),
])
def test_response_conversation_errors(stack, body, param, code):
    st, _, out = stack.request("POST", "/v1/responses", {"model": MODEL, **body})
    assert st in (400, 404) and out["error"]["param"] == param, out
    if code:
        assert out["error"]["code"] == code
    assert (st == 404) == (code == "not_found")


@pytest.mark.parametrize("path,body,param", [
    ("/v1/conversations", {"items": [{"type": "web_search_call"}]}, "items[0].type"),
    ("/v1/conversations", {"items": [{"role": "user"}]}, "items[0].content"),
    ("/v1/conversations", {"items": [{"role": "user", "content": "x"}] * 21}, "items"),
    ("/v1/conversations", {"items": "hello"}, "items"),
    ("/v1/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("/v1/conversations", {"metadata": {"k": "v" * 513}}, "metadata.k"),
    ("/v1/conversations", {"metadata": {"k" * 65: "v"}}, "metadata"),
    ("/v1/conversations", {"name": "x"}, "name"),
])
def test_bad_bodies_are_400s_naming_the_field(stack, path, body, param):
    st, _, out = stack.request("POST", path, body)
    assert st == 400 and out["error"]["param"] == param, out
    assert set(out["error"]) == {"message", "type", "param", "code"}


def test_bad_item_and_update_bodies(stack):
    conv = _client(stack).conversations.create()
    for body, param in (({}, "items"), ({"items": [{"type": "message"}]}, "items[0].role"),
                        ({"items": [], "extra": 1}, "extra")):
        st, _, out = stack.request("POST", f"/v1/conversations/{conv.id}/items", body)
        assert st == 400 and out["error"]["param"] == param, out
    st, _, out = stack.request("POST", f"/v1/conversations/{conv.id}", {})
    assert st == 400 and out["error"]["code"] == "missing_required_parameter"
    st, _, out = stack.request("GET", f"/v1/conversations/{conv.id}/items?include=nope")
    assert st == 400 and out["error"]["param"] == "include"


def test_bounds(make_stack):
    s = make_stack(conversations_max=2, conversations_max_bytes=4000)
    c = _client(s)
    a, b = c.conversations.create(), c.conversations.create()
    c.conversations.retrieve(a.id)                 # used: b is now the least recently used
    third = c.conversations.create()
    assert s.request("GET", f"/v1/conversations/{b.id}")[0] == 404
    assert s.request("GET", f"/v1/conversations/{a.id}")[0] == 200
    st, _, out = s.request("POST", "/v1/conversations", {"items": [{"role": "user", "content": "x" * 5000}]})
    assert st == 400 and out["error"]["code"] == "conversation_full"
    st, _, out = s.request("POST", f"/v1/conversations/{third.id}/items",
                           {"items": [{"role": "user", "content": "x" * 5000}]})
    assert st == 400 and out["error"]["code"] == "conversation_full"
    assert c.conversations.items.list(third.id).data == []       # kept as it was
    st, _, out = s.request("POST", "/v1/responses", {"model": MODEL, "input": "x" * 5000,
                                                     "conversation": third.id})
    assert st == 400 and out["error"]["param"] == "conversation" and out["error"]["code"] == "conversation_full"
    off = make_stack(conversations_max=0)
    st, _, out = off.request("POST", "/v1/conversations", {})
    assert st == 400 and out["error"]["code"] == "conversation_full"


def test_store_ttl_counts_from_last_use():
    now = [0.0]
    store = ConversationStore(10, 60.0, 1 << 20, clock=lambda: now[0])
    a, b = store.new({}, []), store.new({}, [])
    store.save(a)
    store.save(b)
    now[0] = 50.0
    assert store.get(a.id) is a        # read: a's hour starts again
    now[0] = 70.0
    assert store.get(a.id) is a and store.get(b.id) is None and len(store) == 1
    assert store.add(a.id, [{"id": "msg_1", "type": "message"}]) and a.item("msg_1") is not None
    assert not store.add(b.id, [])


def test_input_tokens_counts_the_conversation(stack):
    c = _client(stack)
    conv = c.conversations.create(items=[{"type": "message", "role": "user", "content": "one two three"}])
    count = {"model": MODEL, "input": "four"}      # (raw: openai 1.108 has no input_tokens resource)
    alone = stack.request("POST", "/v1/responses/input_tokens", count)[2]["input_tokens"]
    within = stack.request("POST", "/v1/responses/input_tokens", dict(count, conversation=conv.id))[2]
    assert within["input_tokens"] == alone + 4      # "<user> one two three" in the fake tokenizer
    st, _, out = stack.request("POST", "/v1/responses/input_tokens", {"model": MODEL, "input": "x",
                                                                      "conversation": "conv_gone"})
    assert st == 404 and out["error"]["param"] == "conversation"


def test_needs_the_api_key(stack):
    for method, path in (("POST", "/v1/conversations"), ("GET", "/v1/conversations/conv_x"),
                         ("GET", "/v1/conversations/conv_x/items")):
        st, _, out = stack.request(method, path, {} if method == "POST" else None, auth=False)
        assert st == 401 and out["error"]["type"] == "invalid_request_error", out
