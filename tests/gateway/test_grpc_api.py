"""The gRPC front door against fake worker and tokenizer peers, with a real grpc client:
Generate, Chat, Tokenize, ListModels, field checks, API keys."""
import grpc
import pytest

from gw_fakes import KEY, MODEL
from gw_fakes import REPLY, FakeTokenizer
from grpc_front import GrpcFront, finishes, texts
from npuflow.gateway.grpc_errors import CODE_KEY, PARAM_KEY
from npuflow.v1 import common_pb2, generation_service_pb2 as gs

FR = common_pb2.FinishReason
RF = gs.ResponseFormat
HI = [gs.ChatTurn(role="user", content="hi")]


@pytest.fixture(scope="module")
def front(stack):
    f = GrpcFront(stack)
    yield f
    f.close()


def test_list_models(front):
    r = front.stub.ListModels(gs.ListModelsRequest(), metadata=front.md, timeout=5)
    assert [(m.id, m.ready, m.context_length, m.max_batch, m.created) for m in r.models] == \
        [(MODEL, True, 64, 2, 1700000000)]


def test_generate_text_prompt_streams_deltas_then_usage(front):
    msgs = front.generate(model=MODEL, prompt="say hello please")
    assert texts(msgs) == ["".join(REPLY)]
    assert [t for m in msgs for c in m.choices for t in c.token_ids] == [100 + i for i in range(len(REPLY))]
    assert finishes(msgs) == {0: FR.FINISH_REASON_STOP}
    assert len({m.id for m in msgs}) == 1 and msgs[0].id.startswith("gen-")
    assert all(m.model == MODEL for m in msgs)
    last = msgs[-1]
    assert not last.choices and last.HasField("usage")
    assert not any(m.HasField("usage") for m in msgs[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == \
        (3, len(REPLY), 3 + len(REPLY))
    assert list(front.stack.worker.requests[-1].prompt_token_ids) == FakeTokenizer.ids("say hello please")


def test_generate_token_ids_and_sampling_reach_the_worker(front):
    sp = common_pb2.SamplingParams(temperature=0.3, top_p=0.9, seed=7, max_tokens=3, stop=["zzz"],
                                   stop_token_ids=[5], logit_bias={11: -2.5})
    msgs = front.generate(model=MODEL, prompt_token_ids=[1, 2, 3], sampling=sp)
    assert texts(msgs) == ["".join(REPLY[:3])] and finishes(msgs) == {0: FR.FINISH_REASON_LENGTH}
    g = front.stack.worker.requests[-1]
    assert list(g.prompt_token_ids) == [1, 2, 3] and g.n == 1
    s = g.sampling
    assert (round(s.temperature, 5), round(s.top_p, 5), s.seed, s.max_tokens) == (0.3, 0.9, 7, 3)
    assert list(s.stop) == ["zzz"] and list(s.stop_token_ids) == [5] and dict(s.logit_bias) == {11: -2.5}
    assert not s.HasField("top_k") and not s.HasField("min_p")   # unset stays unset: model defaults
    assert msgs[-1].usage.prompt_tokens == 3 and msgs[-1].usage.completion_tokens == 3
    assert 0 < g.deadline_unix_ms


def test_stop_string_is_reported(front):
    msgs = front.generate(model=MODEL, prompt="x", sampling=common_pb2.SamplingParams(stop=[" is"]))
    assert texts(msgs) == ["Hello world, this"]
    assert [c.stop_reason for m in msgs for c in m.choices if c.finish_reason] == [" is"]


def test_n_choices_and_logprobs(front):
    sp = common_pb2.SamplingParams(logprobs=True, top_logprobs=2, max_tokens=4)
    msgs = front.generate(model=MODEL, prompt="x", n=2, sampling=sp)
    assert texts(msgs, 2) == ["".join(REPLY[:4])] * 2
    assert finishes(msgs) == {0: FR.FINISH_REASON_LENGTH, 1: FR.FINISH_REASON_LENGTH}
    for i in range(2):
        lps = [lp for m in msgs for c in m.choices if c.index == i for lp in c.logprobs]
        assert [lp.token_bytes.decode() for lp in lps] == REPLY[:4]
        assert all(len(lp.top) == 2 and lp.logprob == -0.5 for lp in lps)
    assert msgs[-1].usage.completion_tokens == 8
    assert front.stack.worker.requests[-1].n == 2


def test_chat_uses_the_template_through_the_tokenizer(front):
    turns = [gs.ChatTurn(role="system", content="be brief"), gs.ChatTurn(role="user", content="hi"),
             gs.ChatTurn(role="assistant", tool_calls=[gs.ChatTurn.ToolCall(id="c1", type="function",
                                                                           function_name="f", arguments="{}")]),
             gs.ChatTurn(role="tool", content="42", tool_call_id="c1")]
    tools = '[{"type": "function", "function": {"name": "f"}}]'
    msgs = front.chat(model=MODEL, messages=turns, tools_json=tools)
    assert texts(msgs) == ["".join(REPLY)] and msgs[0].id.startswith("chat-")
    chat = front.stack.tokenizer.chats[-1]
    assert [(m.role, m.content) for m in chat.messages] == [("system", "be brief"), ("user", "hi"),
                                                            ("assistant", ""), ("tool", "42")]
    assert chat.messages[2].tool_calls[0].function_name == "f" and chat.messages[3].tool_call_id == "c1"
    assert chat.add_generation_prompt and '"name": "f"' in chat.tools_json
    assert msgs[-1].usage.prompt_tokens == len(front.stack.worker.requests[-1].prompt_token_ids)


def test_chat_reasoning_text_and_template_kwargs(front):
    """A thinking model's block comes in reasoning_text, the answer in text; usage counts it."""
    front.stack.worker.reply = ["<th", "ink>", "Let me", " think.", "</think>", "\n\n", "Hi", "!"]
    try:
        msgs = front.chat(model=MODEL, messages=HI, chat_template_kwargs_json='{"enable_thinking": true}')
        assert "".join(c.reasoning_text for m in msgs for c in m.choices) == "Let me think."
        assert texts(msgs) == ["Hi!"] and msgs[-1].usage.reasoning_tokens == 6
        assert msgs[-1].usage.completion_tokens == 8
        assert front.stack.tokenizer.chats[-1].template_kwargs_json == '{"enable_thinking": true}'
    finally:
        front.stack.worker.reply = list(REPLY)
    msgs = front.chat(model=MODEL, messages=HI)
    assert not any(c.reasoning_text for m in msgs for c in m.choices) and msgs[-1].usage.reasoning_tokens == 0


WEATHER = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", ' \
          '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}]'
CALL = ['<tool_call>', '\n{"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}', '\n</tool_call>']


def test_chat_tool_calls_stream_as_written(front):
    front.stack.worker.reply = ["Let me check. "] + CALL
    delay, front.stack.worker.delay = front.stack.worker.delay, 0.01   # paced: piled-up deltas are merged
    try:
        msgs = front.chat(model=MODEL, messages=HI, tools_json=WEATHER)
        none = front.chat(model=MODEL, messages=HI, tools_json=WEATHER, tool_choice="none")
    finally:
        front.stack.worker.reply = list(REPLY)
        front.stack.worker.delay = delay
    assert texts(msgs) == ["Let me check. "] and finishes(msgs) == {0: FR.FINISH_REASON_TOOL_CALLS}
    pieces = [t for m in msgs for c in m.choices for t in c.tool_calls]
    assert len(pieces) >= 2 and {t.index for t in pieces} == {0}
    assert pieces[0].id.startswith("call_") and pieces[0].type == "function" and pieces[0].function_name == "get_weather"
    assert all(not t.id and not t.function_name for t in pieces[1:])
    assert "".join(t.arguments for t in pieces) == '{"city": "Paris"}'
    assert "<tool_call>" in texts(none)[0] and finishes(none) == {0: FR.FINISH_REASON_STOP}
    assert not [t for m in none for c in m.choices for t in c.tool_calls]


def test_chat_tool_choice_forces_a_call_through_the_grammar(front):
    front.chat(model=MODEL, messages=HI, tools_json=WEATHER, tool_choice="get_weather")
    forced = front.stack.worker.requests[-1]
    assert forced.grammar_param == "tool_choice" and "get_weather" in forced.grammar
    front.chat(model=MODEL, messages=HI, tools_json=WEATHER, tool_choice="required")
    assert front.stack.worker.requests[-1].grammar == forced.grammar
    front.chat(model=MODEL, messages=HI, tools_json=WEATHER)
    assert not front.stack.worker.requests[-1].grammar


@pytest.mark.parametrize("rf", [dict(type=RF.TYPE_JSON_OBJECT),
                                dict(type=RF.TYPE_JSON_SCHEMA, json_schema=dict(
                                    name="city", schema='{"type": "object", "properties": {"city": {"type": "string"}}}'))])
def test_response_format_becomes_the_worker_grammar(front, rf):
    front.generate(model=MODEL, prompt="x", response_format=rf)
    g = front.stack.worker.requests[-1]
    assert g.grammar and g.grammar_param == "response_format"
    front.chat(model=MODEL, messages=HI, response_format=rf)
    assert front.stack.worker.requests[-1].grammar == g.grammar
    front.generate(model=MODEL, prompt="x", response_format=dict(type=RF.TYPE_TEXT))
    assert not front.stack.worker.requests[-1].grammar


def test_tokenize_text_and_messages(front):
    r = front.stub.Tokenize(gs.TokenizeRequest(model=MODEL, text="a bb ccc"), metadata=front.md, timeout=5)
    assert list(r.token_ids) == FakeTokenizer.ids("a bb ccc") and r.context_length == 64
    r = front.stub.Tokenize(gs.TokenizeRequest(model=MODEL, messages=HI), metadata=front.md, timeout=5)
    assert list(r.token_ids) == FakeTokenizer.ids("<user> hi <assistant>")


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def _trailers(e: grpc.RpcError) -> dict:
    return dict(e.trailing_metadata() or ())


@pytest.mark.parametrize("fields,param,needle", [
    (dict(prompt="x"), "model", "Missing required parameter: 'model'"),
    (dict(model=MODEL), "prompt", "'prompt' (or 'prompt_token_ids')"),
    (dict(model=MODEL, prompt="x", prompt_token_ids=[1]), "prompt", "not both"),
    (dict(model=MODEL, prompt="x", n=17), "n", "'n'"),
    (dict(model=MODEL, prompt="x", sampling=dict(temperature=2.5)), "sampling.temperature", "maximum"),
    (dict(model=MODEL, prompt="x", sampling=dict(top_p=0)), "sampling.top_p", "minimum"),
    (dict(model=MODEL, prompt="x", sampling=dict(stop=list("abcde"))), "sampling.stop", "too long"),
    (dict(model=MODEL, prompt="x", sampling=dict(top_logprobs=2)), "sampling.top_logprobs", "sampling.logprobs"),
    (dict(model=MODEL, prompt="x", sampling=dict(logprobs=True, top_logprobs=21)), "sampling.top_logprobs",
     "maximum"),
    (dict(model=MODEL, prompt="x", sampling=dict(logit_bias={1: 101})), "sampling.logit_bias.1", "maximum"),
    (dict(model=MODEL, prompt="x", response_format=dict(type=RF.TYPE_JSON_SCHEMA,
                                                        json_schema=dict(name="s", schema="{oops"))),
     "response_format.json_schema.schema", "not JSON"),
    (dict(model=MODEL, prompt="x", response_format=dict(type=RF.TYPE_JSON_SCHEMA,
                                                        json_schema=dict(name="s", schema='{"type": 5}'))),
     "response_format", "Invalid schema"),
    (dict(model=MODEL, prompt="   "), "prompt", "empty"),
])
def test_generate_bad_arguments(front, fields, param, needle):
    e = _error(lambda: front.generate(**fields))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert needle in e.details() and param in e.details()
    assert _trailers(e)[PARAM_KEY] == param


@pytest.mark.parametrize("fields,param,needle", [
    (dict(model=MODEL), "messages", "empty array"),
    (dict(model=MODEL, messages=[gs.ChatTurn(role="robot", content="x")]), "messages[0].role", "robot"),
    (dict(model=MODEL, messages=[gs.ChatTurn(content="x")]), "messages[0].role", "Missing"),
    (dict(model=MODEL, messages=HI, tools_json="{}"), "tools_json", "JSON array"),
    (dict(model=MODEL, messages=HI, tools_json=WEATHER, tool_choice="nope"), "tool_choice", "must name one"),
    (dict(model=MODEL, messages=HI, tool_choice="required"), "tool_choice", "needs 'tools'"),
    (dict(model=MODEL, messages=HI, chat_template_kwargs_json="[1]"), "chat_template_kwargs_json", "JSON object"),
    (dict(model=MODEL, messages=HI, response_format=dict(type=RF.TYPE_JSON_SCHEMA)), "response_format.json_schema",
     "Missing"),
])
def test_chat_bad_arguments(front, fields, param, needle):
    e = _error(lambda: front.chat(**fields))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert needle in e.details() and param in e.details()


def test_unknown_model_is_not_found(front):
    for call in (lambda: front.generate(model="nope", prompt="x"), lambda: front.chat(model="nope", messages=HI),
                 lambda: front.stub.Tokenize(gs.TokenizeRequest(model="nope", text="x"), metadata=front.md)):
        e = _error(call)
        assert e.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.details()
        assert _trailers(e)[CODE_KEY] == "model_not_found"


def test_context_too_long_is_invalid_argument(front):
    e = _error(lambda: front.generate(model=MODEL, prompt_token_ids=list(range(60)),
                                      sampling=dict(max_tokens=10)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "maximum context length is 64" in e.details()
    assert _trailers(e) == {CODE_KEY: "context_length_exceeded", PARAM_KEY: "prompt"}
    e = _error(lambda: front.chat(model=MODEL, messages=[gs.ChatTurn(role="user", content="w " * 70)]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and _trailers(e)[PARAM_KEY] == "messages"


@pytest.mark.parametrize("md", [(), (("authorization", "Bearer wrong"),), (("authorization", KEY),)])
def test_api_key_required(front, md):
    for call in (lambda: list(front.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="x"), metadata=md)),
                 lambda: front.stub.ListModels(gs.ListModelsRequest(), metadata=md),
                 lambda: front.stub.Tokenize(gs.TokenizeRequest(model=MODEL, text="x"), metadata=md)):
        e = _error(call)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in e.details()


def test_no_keys_configured_means_no_auth(make_stack):
    f = GrpcFront(make_stack(api_keys=()))
    try:
        assert [m.id for m in f.stub.ListModels(gs.ListModelsRequest(), timeout=5).models] == [MODEL]
        assert texts(list(f.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="x"), timeout=5))) == \
            ["".join(REPLY)]
    finally:
        f.close()
