"""Lost and restarted workers, a tokenizer that stops answering, clients that hang up."""
import http.client
import json
import socket
import time

from gw_fakes import MODEL

MSGS = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def _open_stream(stack, body):
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    c.request("POST", CHAT, body=json.dumps(body), headers={"Authorization": f"Bearer {stack.key}",
                                                              "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    return c, r


def _events(r, count=None):
    out = []
    for line in r:
        if line.startswith(b"data:"):
            out.append(line[5:].strip().decode())
            if count is not None and len(out) >= count:
                break
    return out


def _wait(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_worker_lost_mid_stream_then_new_worker(make_stack, schema):
    stack = make_stack()
    stack.worker.delay, stack.worker.reply = 0.02, ["x"] * 50
    c, r = _open_stream(stack, {"model": MODEL, "messages": MSGS, "stream": True})
    head = _events(r, 3)
    t0 = time.monotonic()
    stack.worker.silent = True
    rest = _events(r)
    assert time.monotonic() - t0 < 2.0
    assert rest[-1] == "[DONE]"
    err = json.loads(rest[-2])
    assert not schema("ErrorResponse", err) and err["error"]["code"] == "worker_lost"
    assert all("error" not in json.loads(e) for e in head + rest[:-2])
    body = stack.wait_health(503)
    assert body["models"] == {MODEL: False} and "worker:" + MODEL in body["missing"]

    stack.call(stack.new_worker())
    stack.wait_health(200)
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 200 and body["choices"][0]["message"]["content"] == "Hello world, this is a test."


def test_worker_lost_non_stream(make_stack, schema):
    stack = make_stack()
    stack.worker.delay = 0.3
    stack.loop.call_later(0.2, setattr, stack.worker, "silent", True)
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 503 and not schema("ErrorResponse", body) and body["error"]["code"] == "worker_lost"


def test_worker_restart_fails_in_flight(make_stack):
    stack = make_stack()
    stack.worker.delay = 0.1
    stack.loop.call_later(0.25, lambda: stack.loop.create_task(stack.new_worker()))
    t0 = time.monotonic()
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 503 and body["error"]["code"] == "worker_lost"
    assert time.monotonic() - t0 < 1.0   # the dropped connection or the new Hello, not 1 s of silence
    assert "went away" in body["error"]["message"] or "restarted" in body["error"]["message"]
    _wait(lambda: f'npuflow_worker_restarts_total{{model="{MODEL}"}} 1.0' in stack.request("GET", "/metrics")[2])
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 200


def test_client_disconnect_aborts_stream(stack):
    stack.worker.delay, stack.worker.reply = 0.02, ["x"] * 200
    try:
        c, r = _open_stream(stack, {"model": MODEL, "messages": MSGS, "stream": True})
        first = json.loads(_events(r, 2)[0])
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        _wait(lambda: first["id"] in stack.worker.aborts)
    finally:
        stack.worker.delay, stack.worker.reply = 0.001, ["Hello", " world", ",", " this", " is", " a", " test", "."]


def test_client_disconnect_aborts_non_stream(stack):
    stack.worker.delay = 0.1
    try:
        n = len(stack.worker.requests)
        s = socket.create_connection(("127.0.0.1", stack.port))
        body = json.dumps({"model": MODEL, "messages": MSGS}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + stack.key.encode() + b"\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body)
        _wait(lambda: len(stack.worker.requests) > n)
        s.close()
        rid = stack.worker.requests[-1].request_id
        _wait(lambda: rid in stack.worker.aborts)
    finally:
        stack.worker.delay = 0.001


def test_tokenizer_down(make_stack, schema):
    stack = make_stack(request_timeout_s=2.0)
    stack.tokenizer.silent = True
    t0 = time.monotonic()   # in flight when it stops answering: fails once it is declared down
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 503 and not schema("ErrorResponse", body)
    assert body["error"]["code"] == "tokenizer_unavailable" and "tokenizer" in body["error"]["message"]
    assert time.monotonic() - t0 < 2.5
    health = stack.wait_health(503)
    assert health["tokenizer"] is False and "tokenizer" in health["missing"]
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})   # waits, bounded
    assert st == 503 and body["error"]["code"] == "tokenizer_unavailable"
    stack.tokenizer.silent = False
    stack.wait_health(200)
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 200


def test_waits_for_worker_then_503(make_stack, schema):
    stack = make_stack(request_timeout_s=1.5)
    stack.worker.silent = True
    stack.wait_health(503)
    t0 = time.monotonic()
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 503 and body["error"]["code"] == "model_not_ready" and not schema("ErrorResponse", body)
    assert 1.0 < time.monotonic() - t0 < 3.0
    # a request that arrives while the worker is away succeeds once it is back
    stack.loop.call_later(0.3, setattr, stack.worker, "silent", False)
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 200


def test_deadline(make_stack, schema):
    stack = make_stack(request_timeout_s=0.5)
    stack.worker.delay = 0.2
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": MSGS})
    assert st == 504 and body["error"]["code"] == "timeout" and not schema("ErrorResponse", body)
    _wait(lambda: stack.worker.requests[-1].request_id in stack.worker.aborts)


def test_events_of_unknown_request_are_aborted(stack):
    stack.call(stack.worker.emit_stray("ghost-1"))
    _wait(lambda: "ghost-1" in stack.worker.aborts)
