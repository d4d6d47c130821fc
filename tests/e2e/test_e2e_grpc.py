"""The gRPC front door of the real stack: both models at once, the same answers as the HTTP API,
a cancelled stream and a deadline that stop the worker, bad arguments, health and reflection."""
import json
import re
import threading
import time
import urllib.request

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from e2e_stack import DEFAULT_ID
from npuflow.v1 import common_pb2, generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc

pytestmark = pytest.mark.e2e
SECOND = "smollm2-second"
SERVICE = "npuflow.v1.GenerationService"
HI = [gs.ChatTurn(role="user", content="What is the capital of France?")]
LONG = common_pb2.SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module")
def channel(stack):
    ch = grpc.insecure_channel(stack.grpc_target)
    grpc.channel_ready_future(ch).result(timeout=30)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return gs_grpc.GenerationServiceStub(channel)


def _text(msgs) -> str:
    return "".join(c.text for m in msgs for c in m.choices)


def _cpu_seconds(proc, over: float) -> float:
    t0 = sum(proc.cpu_times()[:2])
    time.sleep(over)
    return sum(proc.cpu_times()[:2]) - t0


def _in_flight(stack, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'npuflow_requests_in_flight{{model="{re.escape(model)}"}} (\S+)', text)
    return float(m.group(1))


def test_health_per_model_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE, DEFAULT_ID, SECOND):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE, "grpc.health.v1.Health"} <= set(db.get_services())
    methods = DescriptorPool(db).FindServiceByName(SERVICE).methods_by_name
    assert set(methods) == {"Generate", "Chat", "Embed", "Tokenize", "ListModels", "LoadModel", "UnloadModel"}


def test_list_models_and_tokenize(stub):
    models = stub.ListModels(gs.ListModelsRequest(), timeout=10).models
    assert [(m.id, m.ready, m.context_length) for m in models] == [(DEFAULT_ID, True, 2048), (SECOND, True, 1024)]
    text = stub.Tokenize(gs.TokenizeRequest(model=DEFAULT_ID, text="Hello world"), timeout=10)
    chat = stub.Tokenize(gs.TokenizeRequest(model=DEFAULT_ID, messages=HI), timeout=10)
    assert 1 <= len(text.token_ids) <= 4 and len(chat.token_ids) > 8 and chat.context_length == 2048


def test_chat_matches_the_http_api(stub, client):
    msgs = list(stub.Chat(gs.ChatRequest(model=DEFAULT_ID, messages=HI,
                                         sampling=common_pb2.SamplingParams(temperature=0, max_tokens=12)),
                          timeout=60))
    http = client.chat.completions.create(model=DEFAULT_ID, temperature=0, max_tokens=12,
                                          messages=[{"role": "user", "content": HI[0].content}])
    assert _text(msgs) == http.choices[0].message.content
    usage = msgs[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (http.usage.prompt_tokens, http.usage.completion_tokens)


def test_generate_from_token_ids_with_logprobs(stub):
    ids = list(stub.Tokenize(gs.TokenizeRequest(model=SECOND, text="The sky is"), timeout=10).token_ids)
    sp = common_pb2.SamplingParams(temperature=0, max_tokens=5, logprobs=True, top_logprobs=2)
    msgs = list(stub.Generate(gs.GenerateTextRequest(model=SECOND, prompt_token_ids=ids, sampling=sp), timeout=60))
    choices = [c for m in msgs for c in m.choices]
    tokens = [t for c in choices for t in c.token_ids]
    lps = [lp for c in choices for lp in c.logprobs]
    assert len(tokens) == msgs[-1].usage.completion_tokens == 5 and msgs[-1].usage.prompt_tokens == len(ids)
    assert [lp.token_id for lp in lps] == tokens and all(len(lp.top) == 2 and lp.logprob <= 0 for lp in lps)
    assert choices[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


def test_concurrent_streams_on_two_models(stub):
    """Two streams on the second model and one with two choices on the default one, at once."""
    out, spans = [], {}

    def run(k, model, n):
        t0 = time.monotonic()
        msgs = list(stub.Chat(gs.ChatRequest(model=model, messages=HI, n=n,
                                             sampling=common_pb2.SamplingParams(max_tokens=24, seed=k)),
                              timeout=120))
        spans.setdefault(model, []).append((t0, time.monotonic()))
        out.append((model, n, msgs))

    jobs = [(0, DEFAULT_ID, 2), (1, SECOND, 1), (2, SECOND, 1)]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((m, n) for m, n, _ in out) == sorted((m, n) for _, m, n in jobs)
    for model, n, msgs in out:
        assert all(m.model == model for m in msgs) and msgs[-1].usage.completion_tokens >= n
        assert {c.index for m in msgs for c in m.choices if c.finish_reason} == set(range(n))
        assert sum(len(c.token_ids) for m in msgs for c in m.choices) == msgs[-1].usage.completion_tokens
    (a0, a1), (b0, b1) = spans[DEFAULT_ID][0], min(spans[SECOND])
    assert a0 < b1 and b0 < a1, "the two models' streams did not overlap"


def test_json_schema_output_parses_and_matches(stub):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    rf = gs.ResponseFormat(type=gs.ResponseFormat.TYPE_JSON_SCHEMA,
                           json_schema=gs.ResponseFormat.JsonSchema(name="answer", schema=json.dumps(schema)))
    msgs = list(stub.Chat(gs.ChatRequest(model=DEFAULT_ID, messages=HI, response_format=rf,
                                         sampling=common_pb2.SamplingParams(temperature=0, max_tokens=60)),
                          timeout=60))
    assert [c.finish_reason for m in msgs for c in m.choices if c.finish_reason] == [common_pb2.FINISH_REASON_STOP]
    assert isinstance(json.loads(_text(msgs))["city"], str)


def test_cancelled_stream_stops_the_worker(stack, stub):
    worker = stack.worker(DEFAULT_ID)
    call = stub.Chat(gs.ChatRequest(model=DEFAULT_ID, messages=HI, sampling=LONG), timeout=120)
    got = 0
    for m in call:
        got += sum(len(c.token_ids) for c in m.choices)
        if got >= 5:
            break
    assert _cpu_seconds(worker, 0.5) > 0.2            # decoding keeps the worker busy
    call.cancel()
    time.sleep(0.3)
    assert _cpu_seconds(worker, 1.0) < 0.25, "the worker kept generating after the cancel"
    assert _in_flight(stack, DEFAULT_ID) == 0
    t0 = time.monotonic()
    msgs = list(stub.Chat(gs.ChatRequest(model=DEFAULT_ID, messages=HI,
                                         sampling=common_pb2.SamplingParams(max_tokens=4)), timeout=30))
    assert msgs[-1].usage.completion_tokens >= 1 and time.monotonic() - t0 < 5


def test_deadline_is_deadline_exceeded_and_stops_the_worker(stack, stub):
    worker = stack.worker(SECOND)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Chat(gs.ChatRequest(model=SECOND, messages=HI, sampling=LONG), timeout=1.5))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)
    assert _cpu_seconds(worker, 1.0) < 0.25, "the worker kept generating after the deadline"
    assert _in_flight(stack, SECOND) == 0


@pytest.mark.parametrize("model,fields,code,needle", [
    ("nope", dict(prompt="x"), grpc.StatusCode.NOT_FOUND, "nope"),
    (DEFAULT_ID, dict(prompt="x", sampling=dict(temperature=5)), grpc.StatusCode.INVALID_ARGUMENT,
     "sampling.temperature"),
    (DEFAULT_ID, dict(prompt="x", response_format=dict(type=gs.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=dict(
        name="s", schema='{"type": 5}'))), grpc.StatusCode.INVALID_ARGUMENT, "response_format"),
    (SECOND, dict(prompt_token_ids=[42] * 1100), grpc.StatusCode.INVALID_ARGUMENT, "maximum context length"),
])
def test_bad_arguments(stub, model, fields, code, needle):
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(gs.GenerateTextRequest(model=model, **fields), timeout=30))
    assert e.value.code() == code and needle in e.value.details()


def test_chat_forced_tool_call_streams_its_arguments(stub):
    """The same forced call as over HTTP: a tool_calls piece with the name, then the arguments
    in more than one piece, ending with FINISH_REASON_TOOL_CALLS and no text."""
    tools = json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    msgs = list(stub.Chat(gs.ChatRequest(
        model=DEFAULT_ID, messages=[gs.ChatTurn(role="user", content="What is the weather in Paris?")],
        tools_json=tools, tool_choice="get_weather",
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=60)), timeout=60))
    pieces = [t for m in msgs for c in m.choices for t in c.tool_calls]
    assert pieces[0].function_name == "get_weather" and pieces[0].id.startswith("call_")
    assert len(pieces) > 2 and "city" in json.loads("".join(t.arguments for t in pieces))
    assert _text(msgs) == ""
    assert [c.finish_reason for m in msgs for c in m.choices if c.finish_reason] == \
        [common_pb2.FINISH_REASON_TOOL_CALLS]
