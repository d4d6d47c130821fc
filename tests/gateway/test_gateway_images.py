"""Images through the real gateway process: a real tokenizer service (the converted tiny idefics3
package, and the same tokenizer as a text-only model) and fake workers (gw_fakes; the vision
model's says so in its Hello). An image_url part reaches the worker as ImageInput with its bytes
and the span the tokenizer computes; /v1/models, gRPC ListModels and /tokenize say what they
should; usage.prompt_tokens counts image tokens."""
import asyncio
import base64
import dataclasses
import http.client
import io
import json
import os
import pathlib
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import zmq
import zmq.asyncio

from gw_fakes import FakeWorker
from gw_process import free_port, wait_ready
from npuflow.models.package import load_package
from npuflow.tokenizer import ImageIn, MessageIn, ModelTokenizer, TokenizerService
from npuflow.v1 import generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc, worker_pb2

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "vision"))
import tinyvlm  # noqa: E402

VLM, TEXT = "tiny-vlm", "tiny-text"


def png(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(b: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(b).decode()


@dataclasses.dataclass
class Gw:
    port: int
    grpc_port: int
    vlm: ModelTokenizer
    workers: dict

    def request(self, method: str, path: str, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        c.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, json.loads(data)

    def chat(self, model: str, messages, **kw):
        return self.request("POST", "/v1/chat/completions", {"model": model, "messages": messages, **kw})

    def last(self, model: str) -> worker_pb2.GenerateRequest:
        return self.workers[model].requests[-1]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gwimg")
    pkg = load_package(tinyvlm.build_tiny_package("idefics3", tmp))
    vlm = ModelTokenizer.from_package(pkg)
    text = ModelTokenizer(TEXT, vlm.tokenizer, chat_template=pkg.chat_template, vocab_size=vlm.vocab_size)
    port, grpc_port = free_port(), free_port()
    (tmp / "npuflow.toml").write_text(
        f'[server]\napi_keys = []\n\n[[models]]\nid = "{VLM}"\nsource = "{pkg.path}"\n\n'
        f'[[models]]\nid = "{TEXT}"\nsource = "{pkg.path}"\n')
    stop = threading.Event()
    svc = threading.Thread(target=TokenizerService({VLM: vlm, TEXT: text}).serve,
                           args=(f"ipc://{tmp}/tokenizer.sock", stop), daemon=True)
    svc.start()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        ctx = zmq.asyncio.Context()
        return ctx, {VLM: FakeWorker(ctx, f"ipc://{tmp}/worker-{VLM}.sock", VLM, 4096, vision=True),
                     TEXT: FakeWorker(ctx, f"ipc://{tmp}/worker-{TEXT}.sock", TEXT, 4096)}

    ctx, workers = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    env = dict(os.environ, NPUFLOW_CONFIG=str(tmp / "npuflow.toml"), NPUFLOW_RUN_DIR=str(tmp),
               NPUFLOW_CACHE_DIR=str(tmp / "cache"), NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT=str(grpc_port))
    proc = subprocess.Popen([sys.executable, "-c", "from npuflow.config import load_settings\n"
                             "from npuflow.gateway import run_gateway\nrun_gateway(load_settings())"],
                            env=env, stderr=subprocess.PIPE)
    g = Gw(port, grpc_port, vlm, workers)
    try:
        wait_ready(proc, lambda: g.request("GET", "/health")[0] == 200, (OSError, http.client.HTTPException,
                                                                          ValueError), "gateway never healthy", 30)
        yield g
    finally:
        proc.kill()
        proc.wait()
        stop.set()
        svc.join(5)

        async def close():
            for w in workers.values():
                await w.close()
            ctx.term()
        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


def expected(gw: Gw, *messages: MessageIn):
    return gw.vlm.encode_conversation(list(messages))


def test_models_say_which_take_images(gw):
    st, body = gw.request("GET", "/v1/models")
    assert st == 200
    assert {m["id"]: m["input_modalities"] for m in body["data"]} == {VLM: ["text", "image"], TEXT: ["text"]}
    assert gw.request("GET", f"/v1/models/{VLM}")[1]["input_modalities"] == ["text", "image"]
    assert gw.request("GET", f"/v1/models/{TEXT}")[1]["input_modalities"] == ["text"]
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as ch:
        models = gs_grpc.GenerationServiceStub(ch).ListModels(gs.ListModelsRequest(), timeout=10).models
    assert {m.id: m.vision for m in models} == {VLM: True, TEXT: False}


def test_image_reaches_the_worker_with_its_span(gw):
    img = png(70, 50)
    st, body = gw.chat(VLM, [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": data_url(img), "detail": "high"}}]}])
    assert st == 200, body
    g = gw.last(VLM)
    want = expected(gw, MessageIn("user", parts=("What is in this picture?", ImageIn(70, 50, "high"))))
    assert list(g.prompt_token_ids) == want.ids
    assert [(i.data, i.detail, i.start, i.end, i.param) for i in g.images] == \
        [(img, "high", want.images[0].start, want.images[0].end, "messages[0].content[1]")]
    image_ids = g.prompt_token_ids[g.images[0].start:g.images[0].end]
    assert list(image_ids).count(gw.vlm.vision.image_token_id) == want.images[0].placeholders > 0
    # usage counts the image tokens, as OpenAI's does
    assert body["usage"]["prompt_tokens"] == len(want.ids) > want.images[0].placeholders


def test_streamed_usage_and_two_turns(gw):
    a, b = png(40, 90, 1), png(20, 20, 2)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(a)}},
                                             {"type": "text", "text": "and this one?"}]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": [{"type": "text", "text": "Here?"},
                                             {"type": "image_url", "image_url": {"url": data_url(b), "detail": "low"}}]}]
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": VLM, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    events = [line[5:].strip().decode() for line in r if line.startswith(b"data:")]
    c.close()
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    want = expected(gw, MessageIn("user", parts=(ImageIn(40, 90), "and this one?")),
                    MessageIn("assistant", "A cat."), MessageIn("user", parts=("Here?", ImageIn(20, 20, "low"))))
    g = gw.last(VLM)
    assert list(g.prompt_token_ids) == want.ids and usage[-1]["prompt_tokens"] == len(want.ids)
    assert [(i.data, i.detail, i.start, i.end, i.param) for i in g.images] == [
        (a, "auto", want.images[0].start, want.images[0].end, "messages[0].content[0]"),
        (b, "low", want.images[1].start, want.images[1].end, "messages[2].content[1]")]
    assert want.images[0].end <= want.images[1].start


def test_tokenize_counts_image_tokens(gw):
    img = png(64, 64, 3)
    st, body = gw.request("POST", "/tokenize", {"model": VLM, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(img)}}, {"type": "text", "text": "hi"}]}]})
    assert st == 200, body
    want = expected(gw, MessageIn("user", parts=(ImageIn(64, 64), "hi")))
    assert body["tokens"] == want.ids and body["count"] == len(want.ids)
    assert body["tokens"].count(gw.vlm.vision.image_token_id) == want.images[0].placeholders > 0


def test_image_to_a_text_model_is_400_naming_the_part(gw):
    before = len(gw.workers[TEXT].requests)
    st, body = gw.chat(TEXT, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": data_url(png(8, 8))}}]}])
    assert st == 400 and body["error"]["param"] == "messages[1].content[1]", body
    assert body["error"]["code"] == "images_not_supported"
    assert len(gw.workers[TEXT].requests) == before


def test_typed_placeholder_is_not_an_image(gw):
    st, body = gw.chat(VLM, [{"role": "user", "content": "what is <image> in <fake_token_around_image>?"}])
    assert st == 200, body
    g = gw.last(VLM)
    assert not g.images and gw.vlm.vision.image_token_id not in g.prompt_token_ids
    assert list(g.prompt_token_ids) == expected(gw, MessageIn("user", "what is <image> in <fake_token_around_image>?")).ids


def test_grpc_chat_sends_image_bytes_once(gw):
    img = png(30, 60, 4)
    req = gs.ChatRequest(model=VLM)
    turn = req.messages.add(role="user")
    turn.parts.add().image.CopyFrom(gs.ChatTurn.Image(data=img, mime_type="image/png", detail="low"))
    turn.parts.add(text="Describe it.")
    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as ch:
        out = list(gs_grpc.GenerationServiceStub(ch).Chat(req, timeout=20))
    want = expected(gw, MessageIn("user", parts=(ImageIn(30, 60, "low"), "Describe it.")))
    g = gw.last(VLM)
    assert list(g.prompt_token_ids) == want.ids
    assert [(i.data, i.detail, i.start, i.end, i.param) for i in g.images] == \
        [(img, "low", want.images[0].start, want.images[0].end, "messages[0].parts[0]")]
    assert out[-1].usage.prompt_tokens == len(want.ids)
