"""The Responses API on the real stack with the official client: create, the stream helper,
previous_response_id chains and Conversations API conversations (which reuse the worker's KV),
stored responses, function calls and text.format."""
import json

import pytest

from e2e_stack import DEFAULT_ID

pytestmark = pytest.mark.e2e


def test_create_equals_chat_and_streams_the_same(client):
    r = client.responses.create(model=DEFAULT_ID, input="Name a colour.", instructions="Answer in one word.",
                                temperature=0, max_output_tokens=16)
    c = client.chat.completions.create(model=DEFAULT_ID, temperature=0, max_tokens=16, messages=[
        {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}])
    assert r.status in ("completed", "incomplete") and r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens and r.usage.output_tokens == c.usage.completion_tokens

    with client.responses.stream(model=DEFAULT_ID, input="Name a colour.", instructions="Answer in one word.",
                                 temperature=0, max_output_tokens=16) as s:
        kinds, deltas = [], []
        for e in s:
            kinds.append(e.type)
            if e.type == "response.output_text.delta":
                deltas.append(e.delta)
        final = s.get_final_response()
    assert "".join(deltas) == r.output_text == final.output_text
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")


def test_previous_response_id_chain_reuses_the_kv(client):
    first = client.responses.create(model=DEFAULT_ID, input="My name is Ada. Please remember it.",
                                    instructions="You are a helpful assistant.", temperature=0,
                                    max_output_tokens=24)
    second = client.responses.create(model=DEFAULT_ID, input="What is my name?", previous_response_id=first.id,
                                     instructions="You are a helpful assistant.", temperature=0,
                                     max_output_tokens=24)
    assert second.previous_response_id == first.id and second.output_text
    # the second prompt starts with the first's: the worker computed only the new turn
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2
    third = client.responses.create(model=DEFAULT_ID, input="Thanks!", previous_response_id=second.id,
                                    temperature=0, max_output_tokens=16)
    assert third.usage.input_tokens > second.usage.input_tokens
    assert client.responses.retrieve(second.id).output_text == second.output_text
    client.responses.delete(first.id)
    from openai import BadRequestError, NotFoundError
    with pytest.raises(NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(BadRequestError) as e:
        client.responses.create(model=DEFAULT_ID, input="again", previous_response_id=first.id)
    assert e.value.body["param"] == "previous_response_id"
    # the chain after the deleted one still continues (a response holds its whole conversation)
    assert client.responses.create(model=DEFAULT_ID, input="Bye.", previous_response_id=third.id,
                                   max_output_tokens=16).status in ("completed", "incomplete")


def test_conversation_continues_and_reuses_the_kv(client):
    """A Conversations API conversation: each response starts from its items and adds its own,
    and the same chain through previous_response_id gives the same answers."""
    system = "You are a helpful assistant."
    conv = client.conversations.create(items=[{"type": "message", "role": "user",
                                               "content": "My name is Ada. Please remember it."}])
    first = client.responses.create(model=DEFAULT_ID, conversation=conv.id, instructions=system, temperature=0,
                                    max_output_tokens=24)
    second = client.responses.create(model=DEFAULT_ID, conversation=conv.id, input="What is my name?",
                                     instructions=system, temperature=0, max_output_tokens=24)
    assert first.conversation.id == second.conversation.id == conv.id
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2
    items = client.conversations.items.list(conv.id, order="asc").data
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant"]
    assert items[1].content[0].text == first.output_text and items[3].content[0].text == second.output_text
    a = client.responses.create(model=DEFAULT_ID, input="My name is Ada. Please remember it.", instructions=system,
                                temperature=0, max_output_tokens=24)
    b = client.responses.create(model=DEFAULT_ID, input="What is my name?", previous_response_id=a.id,
                                instructions=system, temperature=0, max_output_tokens=24)
    assert (a.output_text, b.output_text) == (first.output_text, second.output_text)
    client.conversations.delete(conv.id)
    from openai import NotFoundError
    with pytest.raises(NotFoundError) as e:
        client.responses.create(model=DEFAULT_ID, conversation=conv.id, input="again")
    assert e.value.body["param"] == "conversation"


WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


def test_forced_function_call_and_its_output(client):
    r = client.responses.create(model=DEFAULT_ID, input="What is the weather in Paris?", tools=[WEATHER],
                                tool_choice="required", temperature=0, max_output_tokens=64)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", r.output
    assert set(json.loads(calls[0].arguments)) == {"city"}
    nxt = client.responses.create(model=DEFAULT_ID, previous_response_id=r.id, tools=[WEATHER], temperature=0,
                                  max_output_tokens=24, input=[{"type": "function_call_output",
                                                                "call_id": calls[0].call_id, "output": "Sunny, 21 C"}])
    assert nxt.status in ("completed", "incomplete") and nxt.usage.input_tokens > r.usage.input_tokens


def test_text_format_json_schema(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["colour", "count"], "additionalProperties": False}
    r = client.responses.create(model=DEFAULT_ID, input="Give a colour and a number as JSON.", temperature=0,
                                max_output_tokens=64,
                                text={"format": {"type": "json_schema", "name": "pick", "schema": schema,
                                                 "strict": True}})
    assert r.status == "completed", r
    got = json.loads(r.output_text)
    assert set(got) == {"colour", "count"} and isinstance(got["count"], int)


def test_truncation_auto_and_input_tokens(client):
    """A conversation over the model's 2,048-token context: input_tokens counts it whole, "disabled"
    refuses it, "auto" answers from its newest turns within the context."""
    import openai
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": f"Part {i}: " + "the quick brown fox jumps over the lazy dog. " * 25} for i in range(12)]
    turns.append({"role": "user", "content": "Say hello."})
    args = dict(model=DEFAULT_ID, input=turns, instructions="Be brief.")
    whole = client.responses.input_tokens.count(**args).input_tokens
    fitted = client.responses.input_tokens.count(**args, truncation="auto").input_tokens
    assert whole > 2048 and 0 < fitted <= 2048
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**args, temperature=0, max_output_tokens=16)
    assert e.value.body["code"] == "context_length_exceeded"
    r = client.responses.create(**args, temperature=0, max_output_tokens=16, truncation="auto")
    assert r.status in ("completed", "incomplete") and r.output_text and r.truncation == "auto"
    assert 0 < r.usage.input_tokens <= min(fitted, 2048 - 16)


def test_background_response_polled_and_cancelled(client):
    """background=True on the real stack: queued at once, polled (or streamed, and streamed again)
    to the same greedy answer as a foreground response, and a long one cancelled while it runs."""
    import time
    kw = dict(model=DEFAULT_ID, input="Name a colour.", instructions="Answer in one word.", temperature=0,
              max_output_tokens=16)
    fg = client.responses.create(**kw)
    bg = client.responses.create(background=True, **kw)
    assert bg.status in ("queued", "in_progress") and bg.background is True
    end = time.monotonic() + 60
    while bg.status in ("queued", "in_progress") and time.monotonic() < end:
        time.sleep(0.1)
        bg = client.responses.retrieve(bg.id)
    assert bg.status == fg.status and bg.output_text == fg.output_text
    assert bg.usage.output_tokens == fg.usage.output_tokens
    with client.responses.create(background=True, stream=True, **kw) as s:      # streamed from its event log
        events = list(s)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == fg.output_text
    resumed = list(client.responses.retrieve(events[0].response.id, stream=True, starting_after=2))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events[3:]]

    long = client.responses.create(model=DEFAULT_ID, input="Tell a very long story about a ship.", background=True,
                                   max_output_tokens=1500, extra_body={"ignore_eos": True})
    while client.responses.retrieve(long.id).status == "queued" and time.monotonic() < end:
        time.sleep(0.05)
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    assert cancelled.usage.output_tokens < 1500


def test_compacted_conversation_continues(client):
    """client.responses.compact on the real model: the user turns kept, the rest one compaction
    item holding the model's summary, and that output, passed back as the docs show, continues."""
    from npuflow.gateway.responses_compaction import summary_of
    first = client.responses.create(model=DEFAULT_ID, input="My name is Ada and I keep bees.", temperature=0,
                                    max_output_tokens=32)
    got = client.responses.with_raw_response.compact(model=DEFAULT_ID, input="What do I keep?",
                                                     previous_response_id=first.id)
    raw, out = got.http_response.json()["output"], got.parse()
    assert out.object == "response.compaction" and [i["type"] for i in raw] == ["message", "message", "compaction"]
    assert [i["content"][0]["text"] for i in raw[:2]] == ["My name is Ada and I keep bees.", "What do I keep?"]
    assert summary_of(raw[2], "output[2]") and out.usage.output_tokens > 0
    assert out.usage.input_tokens > first.usage.input_tokens
    nxt = client.responses.create(model=DEFAULT_ID, input=raw + [{"role": "user", "content": "Thanks."}],
                                  temperature=0, max_output_tokens=16)
    assert nxt.status in ("completed", "incomplete") and nxt.output_text


def test_context_management_compacts_a_long_conversation(client):
    """context_management on the real model: a conversation over the threshold is summarized
    first, the answer follows the compaction item, and the continuation starts from the summary."""
    from npuflow.gateway.responses_compaction import summary_of
    notes = " ".join(f"Note {i}: the hive in row {i} was checked and found healthy." for i in range(90))
    long = [{"role": "user", "content": f"My name is Ada and I keep bees. {notes}"},
            {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "What do I keep?"}]
    cm = [{"type": "compaction", "compact_threshold": 1000}]
    plain = client.responses.input_tokens.count(model=DEFAULT_ID, input=long)
    assert plain.input_tokens > 1000
    r = client.responses.create(model=DEFAULT_ID, input=long, context_management=cm, temperature=0,
                                max_output_tokens=24)
    assert [o.type for o in r.output] == ["compaction", "message"] and r.output_text
    assert summary_of(r.output[0].model_dump(), "output[0]")
    assert r.usage.input_tokens > plain.input_tokens      # the summary's prompt and the answer's
    nxt = client.responses.create(model=DEFAULT_ID, input="Thanks.", previous_response_id=r.id,
                                  context_management=cm, temperature=0, max_output_tokens=16)
    assert [o.type for o in nxt.output] == ["message"]
    assert nxt.usage.input_tokens < plain.input_tokens // 2
