"""POST /v1/responses/compact through the gateway (fake worker and tokenizer): the conversation's
user messages kept, one compaction item for the rest, the summary asked for greedily with
thinking off, compaction items continuing a conversation in /v1/responses, and the errors."""
import json

import pytest

import openapi_spec
from gw_fakes import EMBED_MODEL, MODEL, REPLY
from gw_stack import Stack

from npuflow.gateway.responses_summary import PROMPT
from npuflow.gateway.responses_compaction import INTRO

SUMMARY = "".join(REPLY).strip()
CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
    {"role": "assistant", "content": "It is sunny in Paris."},
    {"type": "message", "role": "user", "content": "And tomorrow?"},   # (parts: the spec's oneOf is ambiguous)
]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A stack whose model has room for the summary prompt (the default fake's context is 64)."""
    s = Stack(tmp_path_factory.mktemp("gw"), context_length=1024, embed=True, vision=True)
    yield s
    s.close()


def _spec_errors(name, inst):
    return openapi_spec.errors(name, inst) if openapi_spec.spec_path() is not None else []


def test_compact_keeps_user_messages_and_replaces_the_rest(big):
    body = {"model": MODEL, "input": CONVERSATION, "instructions": "Be brief.", "prompt_cache_key": "k"}
    assert not _spec_errors("CompactResponseMethodPublicBody", body)
    st, _, out = big.request("POST", "/v1/responses/compact", body)
    assert st == 200, out
    assert not _spec_errors("CompactResource", out), _spec_errors("CompactResource", out)
    # (the SDK's CompactedResponse types output as response output items, where no message is a
    # user's: the specification's ItemField, and its example, are what the body is checked with)
    assert out["object"] == "response.compaction" and out["id"].startswith("resp_") and out["created_at"] > 0
    users, (cmp,) = out["output"][:-1], out["output"][-1:]
    assert [u["content"] for u in users] == [[{"type": "input_text", "text": "What is the weather in Paris?"}],
                                             [{"type": "input_text", "text": "And tomorrow?"}]]
    assert all(u["role"] == "user" and u["type"] == "message" and u["id"].startswith("msg_") for u in users)
    assert cmp["type"] == "compaction" and cmp["id"].startswith("cmp_") and SUMMARY not in cmp["encrypted_content"]
    u = out["usage"]
    assert u["output_tokens"] == len(REPLY) and u["total_tokens"] == u["input_tokens"] + u["output_tokens"] > 0
    # what the model was asked: the whole conversation, then the summary request, greedily, no thinking
    chat = big.tokenizer.chats[-1]
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "assistant", "user", "user"]
    assert chat.messages[-1].content == PROMPT and chat.messages[0].content == "Be brief."
    assert json.loads(chat.template_kwargs_json) == {"enable_thinking": False}
    assert big.worker.requests[-1].sampling.temperature == 0

    # the compacted output, with the next turn, continues the conversation from the summary
    nxt = out["output"] + [{"role": "user", "content": "Thanks!"}]
    assert not _spec_errors("CreateResponse", {"model": MODEL, "input": [cmp]})
    st, _, r = big.request("POST", "/v1/responses", {"model": MODEL, "input": nxt})
    assert st == 200 and r["status"] == "completed", r
    msgs = big.tokenizer.chats[-1].messages
    assert [m.role for m in msgs] == ["user", "user", "assistant", "user"]
    assert msgs[2].content == INTRO + SUMMARY
    st, _, items = big.request("GET", f"/v1/responses/{r['id']}/input_items?order=asc")
    assert items["data"][2] == {"id": cmp["id"], "type": "compaction", "encrypted_content": cmp["encrypted_content"]}
    # compacting again folds the earlier summary into the new one
    st, _, again = big.request("POST", "/v1/responses/compact", {"model": MODEL, "input": nxt})
    assert st == 200 and [i["type"] for i in again["output"]] == ["message"] * 3 + ["compaction"]
    assert big.tokenizer.chats[-1].messages[2].content == INTRO + SUMMARY


def test_compact_continues_a_stored_conversation(big):
    st, _, first = big.request("POST", "/v1/responses", {"model": MODEL, "input": "Remember the number 7."})
    assert st == 200
    st, _, out = big.request("POST", "/v1/responses/compact", {"model": MODEL, "input": "And 8.",
                                                               "previous_response_id": first["id"]})
    assert st == 200, out
    assert [i["content"][0]["text"] for i in out["output"][:-1]] == ["Remember the number 7.", "And 8."]
    assert [m.role for m in big.tokenizer.chats[-1].messages] == ["user", "assistant", "user", "user"]
    st, _, none = big.request("POST", "/v1/responses/compact", {"model": MODEL, "previous_response_id": first["id"]})
    assert st == 200 and [i["type"] for i in none["output"]] == ["message", "compaction"]


def test_a_conversation_over_the_context_is_summarized_from_the_turns_that_fit(big):
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 150}
            for i in range(12)]      # about 1,850 tokens against a context of 1,024
    st, _, out = big.request("POST", "/v1/responses/compact", {"model": MODEL, "input": long})
    assert st == 200, out
    assert len(out["output"]) == 7 and out["usage"]["input_tokens"] <= 1024 - 16
    sent = big.tokenizer.chats[-1].messages
    assert sent[-1].content == PROMPT and sent[0].content.startswith("turn ") and sent[0].content != long[0]["content"]


def test_compaction_images_are_kept_as_sent(big, tmp_path):
    import base64
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    parts = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url, "detail": "low"}]
    st, _, out = big.request("POST", "/v1/responses/compact", {"model": MODEL, "input": [{"role": "user",
                                                                                          "content": parts}]})
    assert st == 200, out
    assert out["output"][0]["content"] == parts


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "hi"}, 400, "model", "missing_required_parameter"),
    ({"model": MODEL}, 400, "input", "missing_required_parameter"),
    ({"model": MODEL, "input": "hi", "temperature": 1}, 400, "temperature", "unknown_parameter"),
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_gone"}, 400, "previous_response_id",
     "previous_response_not_found"),
    ({"model": "nope", "input": "hi"}, 404, "model", "model_not_found"),
    ({"model": EMBED_MODEL, "input": "hi"}, 400, "model", "model_not_generative"),
    ({"model": MODEL, "input": [{"type": "compaction", "encrypted_content": "gAAAAB-forged"}]}, 400,
     "input[0].encrypted_content", "invalid_encrypted_content"),
    ({"model": MODEL, "input": [{"type": "compaction", "encrypted_content": 5}]}, 400,
     "input[0].encrypted_content", None),
    ({"model": MODEL, "input": [{"type": "compaction", "encrypted_content": "npuflow.compaction.v1:!!"}]}, 400,
     "input[0].encrypted_content", "invalid_encrypted_content"),
])
def test_compact_bad_requests(big, body, status, param, code):
    st, _, out = big.request("POST", "/v1/responses/compact", body)
    assert st == status and out["error"]["param"] == param, out
    assert code is None or out["error"]["code"] == code, out
    assert not _spec_errors("ErrorResponse", out)


def test_forged_compaction_items_are_refused_by_responses(big):
    st, _, out = big.request("POST", "/v1/responses", {"model": MODEL, "input": [
        {"role": "user", "content": "hi"}, {"type": "compaction", "encrypted_content": "x"}]})
    assert st == 400 and out["error"]["param"] == "input[1].encrypted_content", out
