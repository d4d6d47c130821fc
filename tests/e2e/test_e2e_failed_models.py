"""`npuflow serve` with models that cannot start: each is reported once and marked failed (in
/health, /v1/models, gRPC ListModels and health), its requests get 503 model_not_available at
once, nothing is restarted in a loop, and the other model is served."""
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e_stack import DEFAULT_ID, SERVER_AND_DEFAULT_MODEL, Stack
from npuflow.v1 import common_pb2
from npuflow.v1 import generation_service_pb2 as gs
from npuflow.v1 import generation_service_pb2_grpc as gs_grpc

CONFIG = SERVER_AND_DEFAULT_MODEL + """
[[models]]
id = "broken"
source = "{run_dir}/no-such-model.gguf"

[[models]]
id = "ax-on-cpu"
engine = "ax"

[[models]]
id = "qwen-ax"
engine = "ax"
source = "{run_dir}-ax-model"
"""

FAILED = ("broken", "ax-on-cpu", "qwen-ax")


def _fake_pulsar2_dir(root):
    """A pulsar2 layout whose graphs are .axmodel files: only pyaxengine could run it (and it
    is not installed here), so the worker stops at `import axengine`. No chat template: a request
    must be refused before it is tokenized."""
    from tokenizers import Tokenizer, models
    root.mkdir()
    for name in ("qwen2_p128_l0_together.axmodel", "qwen2_p128_l1_together.axmodel", "qwen2_post.axmodel"):
        (root / name).write_bytes(bytes(4096))
    (root / "model.embed_tokens.weight.bfloat16.bin").write_bytes(bytes(8192))
    Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2}, unk_token="a")).save(str(root / "tokenizer.json"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "vocab_size": 3, "hidden_size": 8, "num_attention_heads": 1, "num_key_value_heads": 1,
        "intermediate_size": 8, "eos_token_id": 2, "max_position_embeddings": 256}))


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    pytest.importorskip("tokenizers")
    try:
        import axengine  # noqa: F401
        pytest.skip("pyaxengine is installed: the AX model would start")
    except ImportError:
        pass
    tmp = tmp_path_factory.mktemp("failing")
    _fake_pulsar2_dir(tmp / "run-ax-model")
    s = Stack(tmp, CONFIG).start()
    yield s
    s.stop()


def _post(stack, path: str, body: dict) -> tuple[int, dict, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{stack.port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), time.monotonic() - t
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), time.monotonic() - t


def test_health_is_degraded_and_names_the_failed_models(failing):
    status, body = failing.health()
    assert status == 200 and body["status"] == "degraded", body
    assert body["models"] == {DEFAULT_ID: True, "broken": False, "ax-on-cpu": False, "qwen-ax": False}
    assert set(body["failed"]) == set(FAILED)
    assert "no-such-model.gguf" in body["failed"]["broken"]
    assert "pulsar2 or StackFlow model directory" in body["failed"]["ax-on-cpu"]
    assert "import axengine" in body["failed"]["qwen-ax"]
    assert body["states"][DEFAULT_ID] == {"state": "loaded"}
    assert body["states"]["broken"]["state"] == "failed"


def test_models_list_carries_each_models_state(failing):
    with urllib.request.urlopen(f"{failing.base_url}/models", timeout=5) as r:
        data = {m["id"]: m for m in json.loads(r.read())["data"]}
    assert data[DEFAULT_ID]["status"] == {"state": "loaded"}
    assert data["broken"]["status"]["state"] == "failed" and "no-such-model.gguf" in data["broken"]["status"]["reason"]
    with urllib.request.urlopen(f"{failing.base_url}/models/ax-on-cpu", timeout=5) as r:
        assert json.loads(r.read())["status"]["state"] == "failed"


@pytest.mark.parametrize("model", FAILED)
def test_a_failed_models_request_is_503_at_once(failing, model):
    status, body, took = _post(failing, "/v1/chat/completions",
                               {"model": model, "messages": [{"role": "user", "content": "Hi"}]})
    print(f"{model}: {status} after {took * 1000:.0f} ms")
    assert status == 503 and body["error"]["code"] == "model_not_available", body
    assert took < 1.0
    assert model in body["error"]["message"] and "not available" in body["error"]["message"]


def test_the_other_model_is_served(failing):
    status, body, _ = _post(failing, "/v1/completions", {"model": DEFAULT_ID, "prompt": "One, two,",
                                                         "max_tokens": 4, "temperature": 0})
    assert status == 200 and body["choices"][0]["text"], body


def test_grpc_failed_precondition_with_the_code_and_health(failing):
    with grpc.insecure_channel(failing.grpc_target) as ch:
        stub = gs_grpc.GenerationServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Chat(gs.ChatRequest(model="ax-on-cpu", messages=[gs.ChatTurn(role="user", content="Hi")]),
                           timeout=10))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(e.value.trailing_metadata())["npuflow-error-code"] == "model_not_available"
        models = {m.id: m for m in stub.ListModels(gs.ListModelsRequest(), timeout=5).models}
        assert models[DEFAULT_ID].state == common_pb2.MODEL_STATE_LOADED
        assert models["broken"].state == common_pb2.MODEL_STATE_FAILED and models["broken"].state_reason
        health = health_pb2_grpc.HealthStub(ch)
        check = lambda name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert check("") == health_pb2.HealthCheckResponse.SERVING
        assert check(DEFAULT_ID) == health_pb2.HealthCheckResponse.SERVING
        assert check("broken") == health_pb2.HealthCheckResponse.NOT_SERVING


def _workers(stack, models) -> dict:
    out = {}
    for m in models:
        try:
            out[m] = stack.worker(m).pid
        except LookupError:
            pass
    return out


def test_nothing_is_restarted_and_each_failure_is_logged_once(failing):
    """The worker of a failed model is stopped once it has said why (its memory is free again),
    and nothing starts it again on its own."""
    end = time.monotonic() + 10
    while _workers(failing, FAILED) and time.monotonic() < end:
        time.sleep(0.1)
    assert _workers(failing, FAILED) == {}
    time.sleep(2.0)
    assert _workers(failing, FAILED) == {}
    log = failing.log_path.read_text(errors="replace")
    assert "child exited" not in log and "child started" in log
    assert len(re.findall(r"level=error service=worker .*model=broken", log)) == 1, log
    assert len(re.findall(r"level=error service=supervisor .*model=broken", log)) == 1, log
    assert len(re.findall(r"restarts=[1-9]", log)) == 0


def test_serve_with_no_model_that_can_start_exits_1(tmp_path):
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\n[[models]]\nid = "x"\nsource = "{tmp_path}/none.gguf"\n')
    proc = subprocess.run([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no model can be served" in proc.stderr
