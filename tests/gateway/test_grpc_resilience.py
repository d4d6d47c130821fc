"""gRPC calls that end early: cancelled by the caller, past a deadline, refused (queue full,
model not ready, tokenizer down), or cut by a lost worker. The worker must hear the abort."""
import threading
import time

import grpc
import pytest

from gw_fakes import MODEL
from grpc_front import GrpcFront
from npuflow.gateway.grpc_errors import CODE_KEY
from npuflow.gateway.state import STATE
from npuflow.v1 import generation_service_pb2 as gs

SLOW = ["x"] * 40


@pytest.fixture
def make_front(make_stack):
    made = []

    def make(delay: float = 0.05, **kw) -> GrpcFront:
        stack = make_stack(context_length=256, **kw)
        stack.worker.delay, stack.worker.reply = delay, list(SLOW)
        made.append(GrpcFront(stack))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _wait(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def _open(f: GrpcFront, timeout=10.0, **fields):
    """A started stream and its first message."""
    call = f.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go", **fields), metadata=f.md,
                           timeout=timeout)
    return call, next(call)


def test_cancel_aborts_the_worker_request(make_front):
    f = make_front()
    call, first = _open(f)
    rid = first.id
    assert rid and first.choices[0].text == "x"
    t0 = time.monotonic()
    call.cancel()
    _wait(lambda: rid in f.stack.worker.aborts, 1.0)
    assert time.monotonic() - t0 < 0.5          # well within one decode step of the real worker
    assert f.stack.app[STATE].models.in_flight(MODEL) == 0
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.CANCELLED


def test_chat_cancel_aborts_too(make_front):
    f = make_front()
    call = f.stub.Chat(gs.ChatRequest(model=MODEL, messages=[gs.ChatTurn(role="user", content="hi")]),
                       metadata=f.md, timeout=10)
    rid = next(call).id
    call.cancel()
    _wait(lambda: rid in f.stack.worker.aborts, 1.0)


def test_caller_deadline_reaches_the_worker_and_aborts(make_front):
    f = make_front(delay=0.1)
    before = time.time()
    with pytest.raises(grpc.RpcError) as e:
        list(f.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go"), metadata=f.md, timeout=0.6))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    g = f.stack.worker.requests[-1]
    assert before + 0.3 < g.deadline_unix_ms / 1000 < before + 1.0   # the caller's, not request_timeout_s
    _wait(lambda: g.request_id in f.stack.worker.aborts, 1.0)


def test_server_request_timeout_is_deadline_exceeded(make_front):
    f = make_front(delay=0.1, request_timeout_s=0.5)
    with pytest.raises(grpc.RpcError) as e:
        list(f.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go"), metadata=f.md, timeout=10))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in e.value.details()
    _wait(lambda: f.stack.worker.requests[-1].request_id in f.stack.worker.aborts, 1.0)


def test_queue_full_is_resource_exhausted(make_front):
    f = make_front(max_queue=1)                # room for max_queue 1 + max_batch 2
    calls = [_open(f)[0] for _ in range(3)]
    with pytest.raises(grpc.RpcError) as e:
        _open(f)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(e.value.trailing_metadata())[CODE_KEY] == "rate_limit_exceeded"
    for c in calls:
        c.cancel()
    _wait(lambda: f.stack.app[STATE].models.in_flight(MODEL) == 0)
    assert _open(f)[1].choices


def test_worker_lost_mid_stream_is_unavailable(make_front):
    f = make_front()
    call, _ = _open(f)
    f.stack.worker.silent = True
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "worker" in e.value.details()


def test_model_not_ready_and_tokenizer_down_are_unavailable(make_front):
    f = make_front(request_timeout_s=0.5)
    f.stack.worker.silent = True
    f.stack.wait_health(503)
    with pytest.raises(grpc.RpcError) as e:
        _open(f)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in e.value.details()
    f.stack.worker.silent = False
    f.stack.wait_health(200)
    f.stack.tokenizer.silent = True
    f.stack.wait_health(503)
    with pytest.raises(grpc.RpcError) as e:
        _open(f)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "tokenizer" in e.value.details()


def test_concurrent_streams_all_complete(make_front):
    f = make_front(delay=0.005)
    results, errors = [], []

    def one(k):
        try:
            msgs = list(f.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt=f"p{k}"), metadata=f.md,
                                        timeout=10))
            results.append("".join(c.text for m in msgs for c in m.choices))
        except grpc.RpcError as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == ["x" * 40] * 3
