"""The gateway's model lifecycle (lifecycle.py) against a fake supervisor and fake workers over
real sockets: load on demand, one load for concurrent first requests, LRU eviction that never
takes a busy model, budget errors, keep_alive, explicit load/unload, failed loads and crashes."""
from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest

from life_stack import MODELS, LifeStack

A, B, C = MODELS


@pytest.fixture
def life(tmp_path_factory):
    made = []

    def make(**kw) -> LifeStack:
        made.append(LifeStack(tmp_path_factory.mktemp("life"), **kw))
        made[-1].wait_health(200)
        return made[-1]

    yield make
    for s in made:
        s.close()


def wait_for(pred, timeout: float = 5.0, what: str = ""):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def client(s: LifeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key=s.key, max_retries=0, timeout=15)


def test_every_model_listed_with_its_state_and_memory(life):
    s = life()
    _, _, body = s.request("GET", "/v1/models")
    by_id = {m["id"]: m for m in body["data"]}
    assert {k: v["status"]["state"] for k, v in by_id.items()} == {A: "loaded", B: "unloaded", C: "unloaded"}
    assert by_id[B]["memory"]["bytes"] == s.footprint.bytes and by_id[B]["memory"]["pool"] == s.footprint.pool
    assert by_id[B]["keep_alive"] is None    # "forever"
    status, _, health = s.request("GET", "/health")
    assert status == 200, health      # unloaded on-demand models do not make the stack unhealthy


def test_preload_model_left_out_by_the_supervisor_loads_on_demand(life):
    s = life(started=False)            # A did not fit the budget at start
    assert s.states()[A] == "unloaded"
    assert s.request("GET", "/health")[0] == 200
    assert s.chat(A)[0] == 200
    assert s.sup.starts == [A]


def test_concurrent_first_requests_load_once(life):
    s = life(start_delay=0.5)
    c = client(s)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(lambda _: c.chat.completions.create(
            model=B, messages=[{"role": "user", "content": "hi"}]), range(4)))
    assert all(a.choices[0].message.content for a in answers)
    assert s.sup.starts.count(B) == 1
    assert s.states()[B] == "loaded"
    _, _, m = s.request("GET", f"/v1/models/{B}")
    assert m["last_load"]["seconds"] >= 0.5      # the fake worker's start delay


def test_queue_limit_applies_while_a_model_loads(life):
    s = life(start_delay=1.0)          # max_batch 2 + max_queue 4: six sequences at a time
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        t = time.monotonic()
        futures = [ex.submit(s.chat, B) for _ in range(8)]
        codes = sorted(f.result()[0] for f in futures)
    assert codes == [200] * 6 + [429] * 2
    assert s.sup.starts == [B] and time.monotonic() - t >= 1.0


def test_streamed_request_waits_for_the_load(life):
    s = life(start_delay=0.3)
    chunks = list(client(s).chat.completions.create(model=C, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert s.sup.starts == [C]


def test_lru_idle_model_is_evicted_for_room(life):
    s = life(fits=2.5)         # A (preloaded) and one more
    assert s.chat(B)[0] == 200
    time.sleep(0.05)
    assert s.chat(A)[0] == 200       # A is now the most recently used
    assert s.chat(C)[0] == 200       # needs room: B is the least recently used idle model
    assert s.states() == {A: "loaded", B: "unloaded", C: "loaded"}
    assert s.sup.stops == [B]
    metrics = s.request("GET", "/metrics")[2]
    assert 'npuflow_model_unloads_total{model="model-b",reason="evicted"} 1.0' in metrics
    assert "npuflow_memory_budget_bytes" in metrics and "npuflow_models_loaded 2.0" in metrics


def test_busy_model_is_never_evicted(life):
    s = life(fits=2.5)
    s.sup.worker_delay = 0.2           # B's answer takes ~2 s (8 pieces)
    assert s.chat(B)[0] == 200
    s.call(_slow(s, B, 0.2))
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        running = ex.submit(s.chat, B)              # B busy
        wait_for(lambda: s.app_manager().pool.in_flight(B) == 1, what="B's request to run")
        assert s.chat(C)[0] == 200                  # evicts idle A, not busy B
        assert running.result()[0] == 200
    assert s.sup.stops == [A]
    assert s.states()[B] == "loaded"


def test_waits_for_room_while_every_model_is_busy(life):
    s = life(fits=1.5, preload_a=False)   # one model at a time
    assert s.chat(A)[0] == 200
    s.call(_slow(s, A, 0.1))               # A's answer takes ~0.8 s
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        running = ex.submit(s.chat, A)
        wait_for(lambda: s.app_manager().pool.in_flight(A) == 1, what="A's request to run")
        t = time.monotonic()
        status, _, body = s.chat(B)         # waits for A to finish, then evicts it
        assert status == 200, body
        assert running.result()[0] == 200
        assert time.monotonic() - t > 0.3
    assert s.states() == {A: "unloaded", B: "loaded", C: "unloaded"}


def test_model_larger_than_the_budget_is_refused_at_once(life):
    s = life(fits=0.5, preload_a=False)
    t = time.monotonic()
    status, _, body = s.chat(B)
    assert status == 503 and body["error"]["code"] == "model_too_large_for_budget", body
    assert "GiB" in body["error"]["message"] or "MiB" in body["error"]["message"]
    assert time.monotonic() - t < 2
    assert s.sup.starts == []
    with pytest.raises(openai.APIStatusError) as e:
        client(s).chat.completions.create(model=C, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503


def test_keep_alive_unloads_an_idle_model(life):
    s = life(keep_alive="1")
    assert s.chat(B)[0] == 200
    assert s.states()[B] == "loaded"
    wait_for(lambda: s.states()[B] == "unloaded", timeout=4, what="B's keep_alive")
    assert s.states()[A] == "loaded"       # preloaded: kept (its keep_alive is "forever" by default)
    metrics = s.request("GET", "/metrics")[2]
    assert 'npuflow_model_unloads_total{model="model-b",reason="keep_alive"} 1.0' in metrics


def test_explicit_load_and_unload(life):
    s = life()
    status, _, body = s.request("POST", "/models/load", {"model": C})
    assert status == 200 and body["status"]["state"] == "loaded", body
    status, _, body = s.request("POST", "/models/unload", {"model": C})
    assert status == 200 and body["status"]["state"] == "unloaded", body
    assert s.request("POST", "/models/load", {"model": "nope"})[0] == 404
    status, _, body = s.request("POST", "/models/load", {})
    assert status == 400 and body["error"]["param"] == "model"
    assert s.request("POST", "/models/load", {"model": C}, auth=False)[0] == 401


def test_unload_of_a_busy_model_drains_it_first(life):
    s = life()
    s.call(_slow(s, A, 0.1))
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        running = ex.submit(s.chat, A)
        wait_for(lambda: s.app_manager().pool.in_flight(A) == 1, what="A's request to run")
        unload = ex.submit(s.request, "POST", "/models/unload", {"model": A})
        time.sleep(0.1)
        later = ex.submit(s.chat, A)          # arrives while A drains: waits for the reload
        assert running.result()[0] == 200     # not cut
        assert unload.result()[0] == 200
        assert later.result()[0] == 200
    assert s.sup.stops == [A] and s.sup.starts == [A]


def test_failed_load_reports_its_reason_and_is_not_retried_at_once(life):
    s = life()
    s.sup.fail[B] = "NPU memory: needs 900 MB, 100 MB free"
    status, _, body = s.chat(B)
    assert status == 503 and body["error"]["code"] == "model_not_available", body
    assert "NPU memory" in body["error"]["message"]
    assert s.states()[B] == "failed"
    assert s.chat(B)[0] == 503
    assert s.sup.starts.count(B) == 1          # no tight retry loop
    _, _, m = s.request("GET", f"/v1/models/{B}")
    assert m["status"] == {"state": "failed", "reason": "NPU memory: needs 900 MB, 100 MB free"}
    del s.sup.fail[B]
    assert s.request("POST", "/models/load", {"model": B})[0] == 200   # an explicit load retries


def test_crash_ends_running_requests_and_reloads_on_next_request(life):
    s = life()
    assert s.chat(B)[0] == 200
    s.call(_slow(s, B, 0.2))
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        running = ex.submit(s.chat, B)
        wait_for(lambda: s.app_manager().pool.in_flight(B) == 1, what="B's request to run")
        s.call(s.sup.crash(B))
        status, _, body = running.result()
    assert status == 503 and body["error"]["code"] == "worker_lost", body
    wait_for(lambda: s.states()[B] == "unloaded", what="B unloaded after its crash")
    assert s.chat(B)[0] == 200
    assert s.sup.starts.count(B) == 2


def test_crashed_preloaded_model_is_reloaded_at_once(life):
    s = life()
    s.call(s.sup.crash(A))
    wait_for(lambda: s.sup.starts.count(A) == 1 and s.states()[A] == "loaded", what="A reloaded")


async def _slow(s: LifeStack, model: str, delay: float) -> None:
    s.sup.workers[model].delay = delay


def test_grpc_load_unload_and_list_states(life):
    import grpc

    from grpc_front import GrpcFront
    from npuflow.v1 import common_pb2
    from npuflow.v1 import generation_service_pb2 as gs
    s = life(fits=0)           # no budget
    front = GrpcFront(s)
    try:
        states = {m.id: m.state for m in front.stub.ListModels(gs.ListModelsRequest(), metadata=front.md).models}
        assert states == {A: common_pb2.MODEL_STATE_LOADED, B: common_pb2.MODEL_STATE_UNLOADED,
                          C: common_pb2.MODEL_STATE_UNLOADED}
        card = front.stub.LoadModel(gs.LoadModelRequest(model=B), metadata=front.md, timeout=10)
        assert card.id == B and card.state == common_pb2.MODEL_STATE_LOADED and card.footprint_bytes > 0
        card = front.stub.UnloadModel(gs.UnloadModelRequest(model=B), metadata=front.md, timeout=10)
        assert card.state == common_pb2.MODEL_STATE_UNLOADED
        with pytest.raises(grpc.RpcError) as e:
            front.stub.LoadModel(gs.LoadModelRequest(model="nope"), metadata=front.md, timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            front.stub.LoadModel(gs.LoadModelRequest(), metadata=front.md, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        front.close()


def test_without_a_supervisor_load_and_unload_are_refused(stack):
    status, _, body = stack.request("POST", "/models/load", {"model": "fake-model"})
    assert status == 400 and body["error"]["code"] == "lifecycle_not_managed", body
    status, _, body = stack.request("POST", "/models/unload", {"model": "fake-model"})
    assert status == 400 and body["error"]["code"] == "lifecycle_not_managed", body


def test_crash_while_an_unload_drains_still_answers_the_unload(life):
    s = life()
    s.call(_slow(s, A, 0.2))
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        running = ex.submit(s.chat, A)
        wait_for(lambda: s.app_manager().pool.in_flight(A) == 1, what="A's request to run")
        unload = ex.submit(s.request, "POST", "/models/unload", {"model": A})
        wait_for(lambda: s.app_manager().slots[A].state == "unloading", what="A draining")
        s.call(s.sup.crash(A))
        assert running.result()[0] == 503
        status, _, body = unload.result()
    assert status == 200 and body["status"]["state"] == "unloaded", body
