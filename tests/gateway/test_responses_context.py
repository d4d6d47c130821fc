"""context_management compaction inside a response (fake worker and tokenizer: one token per
word; the field goes in extra_body, as the oldest openai package the tests run with has no
such argument): under the threshold nothing changes; over it the turns before the last user turn are
summarized first, the response is made from the summary and that turn, its first output item is
the compaction item, and the item (sent back, stored, or in a conversation) rebuilds the same
prompt; the errors."""
import pytest

import openapi_spec
from gw_fakes import MODEL, REPLY
from gw_stack import Stack
from test_responses import _client

from npuflow.gateway.responses_compaction import INTRO, replaces_all
from npuflow.gateway.responses_summary import PROMPT

SUMMARY = "".join(REPLY).strip()
CM = [{"type": "compaction", "compact_threshold": 1000}]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("gw"), context_length=4096)
    yield s
    s.close()


def _long_history(n=700):
    words = " ".join(f"w{i}" for i in range(n))
    return [{"role": "user", "content": words}, {"role": "assistant", "content": "noted"},
            {"role": "user", "content": words}, {"role": "assistant", "content": "noted again"}]


def test_under_the_threshold_nothing_is_compacted(big):
    r = _client(big).responses.create(model=MODEL, input="short question", extra_body={"context_management": CM})
    assert [o.type for o in r.output] == ["message"] and r.output_text == "".join(REPLY)


def test_over_the_threshold_the_earlier_turns_are_summarized(big):
    c = _client(big)
    n = len(big.tokenizer.chats)
    r = c.responses.create(model=MODEL, instructions="Be kind.", extra_body={"context_management": CM},
                           input=_long_history() + [{"role": "user", "content": "So what now?"}])
    chats = big.tokenizer.chats[n:]
    summary_chat = next(ch for ch in chats if ch.messages[-1].content == PROMPT)
    answer_chat = chats[-1]
    # first the summary: the turns before the last user turn, then the summary request
    assert [m.role for m in summary_chat.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    # then the answer: instructions, the summary, the last user turn
    assert [(m.role, m.content) for m in answer_chat.messages] == [
        ("system", "Be kind."), ("assistant", INTRO + SUMMARY), ("user", "So what now?")]
    assert [o.type for o in r.output] == ["compaction", "message"] and r.output_text == "".join(REPLY)
    cmp = r.output[0].model_dump()
    assert cmp["id"].startswith("cmp_") and replaces_all(cmp)
    assert r.usage.output_tokens == 2 * len(REPLY)          # the summary's tokens count too
    assert r.usage.input_tokens > 1400
    st, _, raw = big.request("GET", f"/v1/responses/{r.id}")
    if openapi_spec.spec_path() is not None:
        assert not openapi_spec.errors("Response", raw), openapi_spec.errors("Response", raw)

    # previous_response_id continues from the compacted context, not the long one
    nxt = c.responses.create(model=MODEL, input="And then?", previous_response_id=r.id, extra_body={"context_management": CM},
                             instructions="Be kind.")
    assert [o.type for o in nxt.output] == ["message"]
    again = [(m.role, m.content) for m in big.tokenizer.chats[-1].messages]
    assert again == [("system", "Be kind."), ("assistant", INTRO + SUMMARY), ("user", "So what now?"),
                     ("assistant", "".join(REPLY)), ("user", "And then?")]
    # the same from the items sent back by the client (store false): the compaction item stands
    # for what came before it, and the prompt is rebuilt the same
    items = _long_history() + [{"role": "user", "content": "So what now?"}] + [o.model_dump(exclude_none=True)
                                                                             for o in r.output]
    c.responses.create(model=MODEL, input=items + [{"role": "user", "content": "And then?"}], store=False,
                       instructions="Be kind.")
    assert [(m.role, m.content) for m in big.tokenizer.chats[-1].messages] == again


def test_streamed_and_in_a_conversation(big):
    c = _client(big)
    conv = c.conversations.create(items=_long_history(1700))     # over 80 % of the context: 3,400 tokens
    events = list(c.responses.create(model=MODEL, conversation=conv.id, input="So what now?", stream=True,
                                     extra_body={"context_management": [{"type": "compaction"}]}))  # null: 80 %
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "compaction" and added[0].output_index == 0
    assert [o.type for o in events[-1].response.output] == ["compaction", "message"]
    kinds = [i.type for i in c.conversations.items.list(conv.id, order="asc").data]
    assert kinds == ["message"] * 4 + ["message", "compaction", "message"]
    c.responses.create(model=MODEL, conversation=conv.id, input="And then?")
    assert [(m.role, m.content) for m in big.tokenizer.chats[-1].messages] == [
        ("assistant", INTRO + SUMMARY), ("user", "So what now?"), ("assistant", "".join(REPLY)),
        ("user", "And then?")]


@pytest.mark.parametrize("cm,param", [
    ([], "context_management"),
    ("compaction", "context_management"),
    ([{"type": "truncation"}], "context_management[0].type"),
    ([{"compact_threshold": 2000}], "context_management[0].type"),
    ([{"type": "compaction", "compact_threshold": 999}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "compact_threshold": "big"}], "context_management[0].compact_threshold"),
])
def test_bad_context_management(big, cm, param):
    st, _, out = big.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "context_management": cm})
    assert st == 400 and out["error"]["param"] == param, out


def test_background_is_queued_before_the_summary_is_made(big):
    """background: the reply comes at once, `queued`; the summary is made in the run (the
    response is `in_progress` meanwhile), then the answer, under the same id; a run cancelled
    while it summarizes ends `cancelled` and adds nothing to its conversation."""
    from test_responses_background import _poll
    c = _client(big)
    big.worker.reply, big.worker.delay = ["slow "] * 40, 0.02
    try:
        n = len(big.worker.requests)
        r = c.responses.create(model=MODEL, input=_long_history() + [{"role": "user", "content": "So what now?"}],
                               background=True, extra_body={"context_management": CM})
        assert r.status == "queued" and r.output == []
        assert len(big.worker.requests) == n                  # no summary asked for before the reply
        assert _poll(c, r.id, ("in_progress",)).status == "in_progress"
        done = _poll(c, r.id)
        assert done.status == "completed" and done.id == r.id
        assert [o.type for o in done.output] == ["compaction", "message"]
        assert done.usage.output_tokens == 80                 # the summary's 40 and the answer's 40
        st, _, raw = big.request("GET", f"/v1/responses/{r.id}")
        if openapi_spec.spec_path() is not None:     # the oldest openai package has no compaction item
            assert not openapi_spec.errors("Response", raw), openapi_spec.errors("Response", raw)

        conv = c.conversations.create(items=_long_history())
        r = c.responses.create(model=MODEL, conversation=conv.id, input="So what now?", background=True,
                               extra_body={"context_management": CM})
        _poll(c, r.id, ("in_progress",))
        assert c.responses.cancel(r.id).status == "cancelled"
        assert len(c.conversations.items.list(conv.id).data) == 4
    finally:
        big.worker.reply, big.worker.delay = list(REPLY), 0.001
