"""An embedding model's worker over a real ZMQ socket, with the real embedding engine on a tiny
BERT package: Hello says what it is, one EmbedResult per request equal to the engine's vectors,
batches, Abort and deadline between batches, requests of the other kind refused."""
import threading
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

import embed_ckpt
from npuflow.config import ModelSettings
from npuflow.convert import convert
from npuflow.engine.embed import EmbedEngine
from npuflow.llm_worker import build_link
from npuflow.llm_worker.run import WorkerStartError, build_embed_engine, build_embed_link
from npuflow.v1 import common_pb2, worker_pb2

from worker_helpers import FakeEngine, WorkerPeer

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "cat", "how are you today"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("wemb")
    embed_ckpt.write_bert(root / "ckpt")
    pkg = convert(root / "ckpt", root / "pkg")
    tok = Tokenizer.from_file(str(root / "ckpt" / "tokenizer.json"))
    return pkg, [tok.encode(t).ids for t in TEXTS]


class Gateway(WorkerPeer):
    def ping(self):
        self.send(ping=worker_pb2.Ping(sent_unix_ms=int(time.time() * 1000)))

    def embed(self, rid, inputs, dimensions=0, deadline_unix_ms=0):
        req = worker_pb2.EmbedRequest(request_id=rid, model="emb", dimensions=dimensions,
                                      deadline_unix_ms=deadline_unix_ms)
        for ids in inputs:
            req.inputs.add().ids.extend(ids)
        self.send(embed=req)

    def result(self, timeout=10.0) -> worker_pb2.EmbedResult:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = self.recv(timeout)
            if msg.WhichOneof("kind") == "embedded":
                return msg.embedded
        raise AssertionError("no EmbedResult")


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(link):
        stop = threading.Event()
        t = threading.Thread(target=link.serve, args=(stop,), daemon=True)
        t.start()
        started.append((stop, t))
        return Gateway(link.endpoint)

    yield start
    for stop, t in started:
        stop.set()
        t.join(5)
        assert not t.is_alive()


def _link(pkg, tmp_path, **kw):
    model = ModelSettings(id="emb", endpoint=f"ipc://{tmp_path}/e.sock", max_queue=2, max_batch=1)
    engine = EmbedEngine(pkg, **kw)
    return build_embed_link(engine, pkg, model), engine


def test_hello_and_vectors(bert, tmp_path, serve):
    pkg, ids = bert
    link, engine = _link(pkg, tmp_path, batch_tokens=24)     # several graph runs for these inputs
    gw = serve(link)
    gw.ping()
    h = gw.recv().hello
    assert h.embedding and h.embedding_dimensions == 32 and not h.matryoshka and h.context_length == 128
    gw.embed("r1", ids)
    res = gw.result()
    assert res.request_id == "r1" and not res.error.code and res.dimensions == 32
    got = np.frombuffer(res.vectors, "<f4").reshape(len(ids), 32)
    assert np.abs(got - engine.embed(ids)).max() < 1e-6
    assert res.prompt_tokens == sum(map(len, ids))


def test_bad_requests_name_the_field(bert, tmp_path, serve):
    pkg, ids = bert
    link, _ = _link(pkg, tmp_path)
    gw = serve(link)
    gw.embed("r1", [ids[0], []])
    res = gw.result()
    assert res.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and res.error.param == "input[1]"
    gw.embed("r2", ids, dimensions=8)
    res = gw.result()
    assert res.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and res.error.param == "dimensions"
    gw.send(generate=worker_pb2.GenerateRequest(request_id="g1", model="emb", prompt_token_ids=[2, 5, 3]))
    msg = gw.recv()
    while msg.WhichOneof("kind") != "events":
        msg = gw.recv()
    ev = msg.events.events[0]
    assert ev.finish_reason == common_pb2.FINISH_REASON_ERROR and ev.error.param == "model"


def test_abort_and_deadline_stop_between_batches(bert, tmp_path, serve):
    pkg, ids = bert
    link, _ = _link(pkg, tmp_path, batch_tokens=1)           # one input per graph run
    slow = link.scheduler.engine.run_batch
    link.scheduler.engine.run_batch = lambda rows: (time.sleep(0.2), slow(rows))[1]
    gw = serve(link)
    gw.embed("late", ids * 5, deadline_unix_ms=int(time.time() * 1000) + 300)
    res = gw.result()
    assert res.request_id == "late" and res.error.code == common_pb2.ERROR_CODE_DEADLINE_EXCEEDED
    gw.embed("gone", ids * 5)
    time.sleep(0.3)
    gw.send(abort=worker_pb2.Abort(request_id="gone"))
    gw.embed("next", ids[:1])
    res = gw.result()
    assert res.request_id == "next" and not res.error.code      # the aborted one never answers
    assert not link.scheduler.requests


def test_embed_to_a_language_model_is_refused(package, hf_tokenizer, tmp_path, serve):
    model = ModelSettings(id="tiny", endpoint=f"ipc://{tmp_path}/w.sock", max_queue=4)
    gw = serve(build_link(FakeEngine(hf_tokenizer.get_vocab_size()), package, model))
    gw.send(embed=worker_pb2.EmbedRequest(request_id="e1", model="tiny", inputs=[common_pb2.TokenIds(ids=[5])]))
    res = gw.result()
    assert res.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and res.error.param == "model"


def test_embedding_models_are_cpu_only(bert):
    pkg, _ = bert
    with pytest.raises(WorkerStartError, match="CPU engine only"):
        build_embed_engine(pkg, ModelSettings(id="emb", engine="ax"))
