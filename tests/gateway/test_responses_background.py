"""Background responses through the gateway (fake worker and tokenizer, the official client):
queued at once and polled to their end, streamed while they run and resumed after a dropped
connection (`GET ?stream=true&starting_after=N`), cancelled (the worker's sequence aborted),
failed, and the event log's bounds."""
import json
import time

import pytest

from gw_fakes import MODEL, REPLY
from test_responses import _client

from npuflow.gateway.responses_background import KEEP_ENDED, STREAMABLE_S, BackgroundRuns


def _raw_stream(stack, path, body=None):
    """(status, events) of a streamed request read raw to its end, or (status, error body)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    c.request("POST" if body is not None else "GET", path, body=json.dumps(body).encode() if body else None,
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.key}"})
    r = c.getresponse()
    if r.status != 200:
        out = json.loads(r.read())
        c.close()
        return r.status, out
    events = [json.loads(line[6:]) for line in (raw.decode().rstrip("\n") for raw in r) if line.startswith("data: ")]
    c.close()
    return 200, events


def _poll(c, rid, until=("completed", "incomplete", "failed", "cancelled"), timeout=10):
    import time
    end = time.monotonic() + timeout
    while True:
        r = c.responses.retrieve(rid)
        if r.status in until or time.monotonic() > end:
            return r
        time.sleep(0.02)


def test_background_response_is_polled_to_its_end(stack, schema):
    """background: the reply is the response queued, at once; GET shows it run and complete, with
    its output and usage, and it continues a conversation once done (not before)."""
    c = _client(stack)
    stack.worker.reply, stack.worker.delay = ["slow "] * 40, 0.02
    try:
        st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "background": True})
        assert st == 200 and body["status"] == "queued" and body["background"] is True, body
        assert body["output"] == [] and not schema("Response", body), schema("Response", body)
        st, _, early = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "more",
                                                               "previous_response_id": body["id"]})
        assert st == 400 and early["error"]["code"] == "previous_response_in_progress", early
        assert _poll(c, body["id"], ("in_progress",)).status == "in_progress"
        done = _poll(c, body["id"])
        assert done.status == "completed" and done.background is True and done.output_text == "slow " * 40
        assert done.usage.output_tokens == 40
        st, _, raw = stack.request("GET", f"/v1/responses/{body['id']}")
        assert not schema("Response", raw), schema("Response", raw)
    finally:
        stack.worker.reply, stack.worker.delay = list(REPLY), 0.001
    nxt = c.responses.create(model=MODEL, input="and then?", previous_response_id=done.id)
    assert nxt.status == "completed"
    assert [m.role for m in stack.tokenizer.chats[-1].messages] == ["user", "assistant", "user"]


def test_background_response_cancelled_aborts_the_worker(stack, schema):
    import openai
    c = _client(stack)
    stack.worker.reply, stack.worker.delay = ["slow "] * 500, 0.02
    try:
        r = c.responses.create(model=MODEL, input="hi", background=True)
        assert r.status == "queued"
        _poll(c, r.id, ("in_progress",))
        out = c.responses.cancel(r.id)
        assert out.status == "cancelled" and out.id == r.id
        import time
        end = time.monotonic() + 5
        while r.id not in stack.worker.aborts and time.monotonic() < end:
            time.sleep(0.02)
        assert r.id in stack.worker.aborts
        assert c.responses.retrieve(r.id).status == "cancelled"
        assert c.responses.cancel(r.id).status == "cancelled"     # again: as it is
        # DELETE of one still running cancels it too, and it stays gone
        r2 = c.responses.create(model=MODEL, input="hi", background=True)
        _poll(c, r2.id, ("in_progress",))
        c.responses.delete(r2.id)
        time.sleep(0.1)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r2.id)
        assert r2.id in stack.worker.aborts
    finally:
        stack.worker.reply, stack.worker.delay = list(REPLY), 0.001
    done = c.responses.create(model=MODEL, input="hi", background=True)
    assert _poll(c, done.id).status == "completed"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.cancel(done.id)
    assert e.value.body["code"] == "response_not_cancellable" and "already ended" in e.value.body["message"]


def test_background_response_that_fails_is_stored_failed(stack, schema):
    """A worker error during a background run: its stored state is failed, with the error."""
    stack.worker.fail_with = "boom"
    try:
        st, _, body = stack.request("POST", "/v1/responses", {"model": MODEL, "input": "hi", "background": True})
        assert st == 200
        r = _poll(_client(stack), body["id"], ("failed", "completed"))
    finally:
        stack.worker.fail_with = None
    assert r.status == "failed" and r.error.code == "server_error" and r.error.message, r


def test_background_stream_survives_a_dropped_connection_and_resumes(stack, schema):
    """stream + background: the events as a foreground stream has them (response.queued after
    response.created); the client leaves after event 5, the run goes on, and GET with
    stream=true&starting_after=5 streams the rest, live, to response.completed."""
    c = _client(stack)
    stack.worker.reply, stack.worker.delay = ["slow "] * 40, 0.02
    try:
        seen = []
        with c.responses.create(model=MODEL, input="hi", background=True, stream=True) as s:
            for ev in s:
                seen.append(ev)
                if ev.sequence_number == 5:
                    break           # the connection drops
        rid = seen[0].response.id
        assert [e.type for e in seen[:3]] == ["response.created", "response.queued", "response.in_progress"]
        assert seen[0].response.status == "queued" and seen[2].response.status == "in_progress"
        assert c.responses.retrieve(rid).status == "in_progress"        # still running without a reader
        st, rest = _raw_stream(stack, f"/v1/responses/{rid}?stream=true&starting_after=5")
        assert st == 200, rest
        assert [e["sequence_number"] for e in rest] == list(range(6, 6 + len(rest)))
        assert rest[-1]["type"] == "response.completed" and rest[-1]["response"]["status"] == "completed"
        for ev in rest:
            assert not schema("ResponseStreamEvent", ev), (ev["type"], schema("ResponseStreamEvent", ev))
        deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
        deltas += [e["delta"] for e in rest if e["type"] == "response.output_text.delta"]
        assert "".join(deltas) == "slow " * 40 == c.responses.retrieve(rid).output_text
        # once ended, the whole stream is still there, and the SDK's retrieve(stream=True) reads it
        again = list(c.responses.retrieve(rid, stream=True))
        assert [e.sequence_number for e in again] == list(range(len(again))) and again[-1].type == "response.completed"
        st, whole = _raw_stream(stack, f"/v1/responses/{rid}?stream=true")
        assert whole[6:] == rest
    finally:
        stack.worker.reply, stack.worker.delay = list(REPLY), 0.001


def test_a_cancelled_background_stream_ends_after_its_deltas(stack):
    c = _client(stack)
    stack.worker.reply, stack.worker.delay = ["slow "] * 500, 0.02
    try:
        r = c.responses.create(model=MODEL, input="hi", background=True)
        _poll(c, r.id, ("in_progress",))
        import threading
        got = {}
        t = threading.Thread(target=lambda: got.update(out=_raw_stream(stack, f"/v1/responses/{r.id}?stream=true")))
        t.start()
        time.sleep(0.2)
        assert c.responses.cancel(r.id).status == "cancelled"
        t.join(10)
        st, events = got["out"]
        assert st == 200 and events[-1]["type"] == "response.output_item.done", [e["type"] for e in events[-3:]]
        assert events[-1]["item"]["status"] == "incomplete"
        assert not any(e["type"] in ("response.completed", "response.failed") for e in events)
    finally:
        stack.worker.reply, stack.worker.delay = list(REPLY), 0.001


def test_a_failed_background_stream_ends_with_response_failed(stack):
    stack.worker.fail_with = "boom"
    try:
        st, events = _raw_stream(stack, "/v1/responses", {"model": MODEL, "input": "hi", "background": True,
                                                          "stream": True})
    finally:
        stack.worker.fail_with = None
    assert st == 200 and events[-1]["type"] == "response.failed", events
    assert events[-1]["response"]["error"]["code"] == "server_error"


def test_stream_of_a_foreground_response_or_a_bad_cursor_is_a_400(stack):
    c = _client(stack)
    r = c.responses.create(model=MODEL, input="hi")
    st, out = _raw_stream(stack, f"/v1/responses/{r.id}?stream=true")
    assert st == 400 and out["error"]["param"] == "stream", out
    b = c.responses.create(model=MODEL, input="hi", background=True)
    st, out = _raw_stream(stack, f"/v1/responses/{b.id}?stream=true&starting_after=x")
    assert st == 400 and out["error"]["param"] == "starting_after", out
    st, out = _raw_stream(stack, "/v1/responses/resp_none?stream=true")
    assert st == 404, out
    c.responses.delete(b.id)
    st, out = _raw_stream(stack, f"/v1/responses/{b.id}?stream=true")
    assert st == 404, out


async def test_event_logs_are_held_five_minutes_and_at_most_keep_ended_of_ended_runs():
    now = [0.0]
    runs = BackgroundRuns(clock=lambda: now[0])

    async def run(log):
        log.add([{"type": "response.in_progress"}])

    for i in range(KEEP_ENDED + 3):
        runs.start(f"r{i}", run, [{"type": "response.created"}], 0)
    import asyncio
    await asyncio.sleep(0.01)
    assert runs.events("r0") is None and runs.events("r2") is None     # the oldest ended ones went first
    log = runs.events("r3")
    assert log is not None and log.ended and [e["sequence_number"] for e in log.events] == [0, 1]
    assert [b async for b in log.follow(0)] == [[{"type": "response.in_progress", "sequence_number": 1}]]
    now[0] = STREAMABLE_S + 1
    assert runs.events("r3") is None
