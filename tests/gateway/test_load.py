"""Load and slow clients: one admission limit with Retry-After, and clients that stop reading.

The fake worker here refuses (OVERLOADED) past max_batch + max_queue sequences, as the real
scheduler does, so a request the gateway admitted and the worker then refused shows up as an
error after the 200.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import time

import grpc
import pytest

from npuflow.gateway.admission import Admission
from npuflow.gateway.grpc_errors import CODE_KEY, RETRY_AFTER_KEY
from npuflow.gateway.state import STATE
from npuflow.v1 import generation_service_pb2 as gs

from grpc_front import GrpcFront
from gw_fakes import KEY, MODEL

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]
MAX_QUEUE, MAX_BATCH = 3, 2          # the fake worker's Hello says max_batch 2


def _loaded(make_stack, **kw):
    stack = make_stack(max_queue=MAX_QUEUE, **kw)
    stack.worker.capacity = MAX_QUEUE + MAX_BATCH
    stack.worker.delay = 0.02           # 8 pieces: ~0.2 s a request
    return stack


def _held(stack) -> int:
    return stack.app[STATE].admission.held(MODEL)


def _in_flight(stack) -> int:
    return stack.app[STATE].models.in_flight(MODEL)


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _stream(stack, body: dict) -> tuple[int, dict, list[str]]:
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    c.request("POST", CHAT, body=json.dumps(body).encode(),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = c.getresponse()
    headers = {k.lower(): v for k, v in r.getheaders()}
    if r.status != 200:
        data = [r.read().decode()]
    else:
        data = [line[5:].strip().decode() for line in r if line.startswith(b"data:")]
    c.close()
    return r.status, headers, data


def test_80_streams_are_429_or_complete(make_stack):
    stack = _loaded(make_stack)
    bodies = [{"model": MODEL, "messages": MSGS, "stream": True, "n": 1 + (k % 3 == 0)} for k in range(80)]
    with cf.ThreadPoolExecutor(80) as pool:
        results = list(pool.map(lambda b: _stream(stack, b), bodies))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 2, statuses    # room for 5 sequences; every third request is n=2
    for status, headers, data in results:
        if status == 429:
            assert json.loads(data[0])["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(headers["retry-after"]) <= 60, headers
        else:
            assert data[-1] == "[DONE]" and not any('"error"' in d for d in data), data
    assert stack.worker.overloaded == []          # the worker never refused an admitted request
    assert _wait(lambda: _held(stack) == 0 and _in_flight(stack) == 0)


def test_n_counts_as_sequences(make_stack):
    stack = _loaded(make_stack)
    stack.worker.delay = 0.1
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_stream, stack, {"model": MODEL, "messages": MSGS, "stream": True, "n": 4})
        assert _wait(lambda: _held(stack) == 4)
        st, headers, _ = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS, "n": 2})
        assert st == 429 and int(headers["Retry-After"]) >= 1
        st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
        assert st == 200, body
        assert first.result()[0] == 200
    # a request that alone needs more than the room runs when nothing else is in flight
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS, "n": 8})
    assert st == 200 and len(body["choices"]) == 8
    # ... but several prompts go to the worker one request each: more than the room is a 400
    st, _, body = stack.request("POST", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "n": 3})
    assert st == 400 and body["error"]["param"] == "prompt", body
    st, _, body = stack.request("POST", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "n": 2})
    assert st == 200 and len(body["choices"]) == 4
    assert stack.worker.overloaded == []


def test_retry_after_follows_the_measured_time():
    adm = Admission()
    assert adm.retry_after(MODEL, 1, 2) == 1              # nothing measured: the default, bounded
    for _ in range(30):
        adm.record(MODEL, 4.0)
    assert adm.retry_after(MODEL, 4, 2) == 8              # 4 sequences to end, 2 at a time, 4 s each
    assert adm.retry_after(MODEL, 1000, 2) == 60
    t = adm.take(MODEL, 3, 2, 1)
    with pytest.raises(Exception) as e:
        adm.take(MODEL, 1, 2, 1)
    assert e.value.status == 429 and e.value.retry_after == 2
    t.release()
    t.release()
    assert adm.held(MODEL) == 0


def test_grpc_streams_are_refused_before_they_start(make_stack):
    stack = _loaded(make_stack)
    front = GrpcFront(stack)
    try:
        def call(_):
            try:
                return "ok", list(front.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go"),
                                                      metadata=front.md, timeout=30))
            except grpc.RpcError as e:
                return e.code(), dict(e.trailing_metadata() or ())

        with cf.ThreadPoolExecutor(30) as pool:
            results = list(pool.map(call, range(30)))
        codes = [r[0] for r in results]
        assert set(codes) <= {"ok", grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count("ok") >= MAX_QUEUE + MAX_BATCH - 1
        for code, got in results:
            if code == "ok":
                assert got[-1].HasField("usage")
            else:
                assert got[CODE_KEY] == "rate_limit_exceeded" and 1 <= int(got[RETRY_AFTER_KEY]) <= 60
        assert stack.worker.overloaded == []
    finally:
        front.close()


def _stalled_stream(stack, body: dict) -> socket.socket:
    """A streamed request from a client that never reads its answer (a small receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", stack.port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


BIG = ["x" * 20000] * 5000      # 100 MB of answer at up to 40 MB/s: far more than any socket buffers


@pytest.mark.parametrize("why", ["write_timeout", "deadline"])
def test_a_client_that_stops_reading_is_let_go(make_stack, why):
    kw = {"stream_write_timeout_s": 1.0} if why == "write_timeout" else {"request_timeout_s": 2.0}
    stack = make_stack(max_queue=MAX_QUEUE, context_length=100000, **kw)
    stack.worker.reply, stack.worker.delay = list(BIG), 0.0005
    body = {"model": MODEL, "messages": MSGS, "stream": True}
    stalled = [_stalled_stream(stack, body) for _ in range(MAX_QUEUE + MAX_BATCH)]
    try:
        assert _wait(lambda: len(stack.worker.requests) == len(stalled))
        t0 = time.monotonic()
        assert _wait(lambda: _held(stack) == 0 and _in_flight(stack) == 0, 10.0), (_held(stack), _in_flight(stack))
        assert time.monotonic() - t0 < 5.0
        ids = {g.request_id for g in stack.worker.requests}
        assert _wait(lambda: ids <= set(stack.worker.aborts)), (ids, stack.worker.aborts)
        stack.worker.reply = ["Hello", " world"]
        st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
        assert st == 200 and body["choices"][0]["message"]["content"] == "Hello world"
    finally:
        for s in stalled:
            s.close()


def test_grpc_caller_that_stops_reading_is_let_go(make_stack):
    stack = make_stack(max_queue=MAX_QUEUE, context_length=100000, stream_write_timeout_s=1.0)
    stack.worker.reply, stack.worker.delay = list(BIG), 0.0005
    front = GrpcFront(stack)
    try:
        calls = [front.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go"), metadata=front.md,
                                     timeout=60) for _ in range(MAX_QUEUE + MAX_BATCH)]   # never read
        assert _wait(lambda: len(stack.worker.requests) == len(calls))
        assert _wait(lambda: _held(stack) == 0 and _in_flight(stack) == 0, 15.0), (_held(stack), _in_flight(stack))
        ids = {g.request_id for g in stack.worker.requests}
        assert _wait(lambda: ids <= set(stack.worker.aborts))
        stack.worker.reply = ["Hello"]
        msgs = list(front.stub.Generate(gs.GenerateTextRequest(model=MODEL, prompt="go"), metadata=front.md,
                                        timeout=10))
        assert "".join(c.text for m in msgs for c in m.choices) == "Hello"
        for c in calls:
            c.cancel()
    finally:
        front.close()
