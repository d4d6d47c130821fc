"""gRPC Embed against fake peers: the same path as /v1/embeddings (inputs, dimensions, errors
with the HTTP API's code and param in the trailers, auth, deadline and cancellation)."""
import time

import grpc
import numpy as np
import pytest

from gw_fakes import EMBED_DIMS, EMBED_MODEL, MODEL, FakeTokenizer, fake_vector
from grpc_front import GrpcFront
from npuflow.gateway.grpc_errors import CODE_KEY, PARAM_KEY
from npuflow.v1 import common_pb2, generation_service_pb2 as gs


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    from gw_stack import Stack
    s = Stack(tmp_path_factory.mktemp("gemb"), embed=True)
    f = GrpcFront(s)
    yield f
    f.close()
    s.close()


def _embed(front, timeout=10.0, metadata=None, **fields):
    return front.stub.Embed(gs.EmbedTextRequest(**fields), metadata=front.md if metadata is None else metadata,
                            timeout=timeout)


def _error(front, **fields):
    with pytest.raises(grpc.RpcError) as e:
        _embed(front, **fields)
    trailers = dict(e.value.trailing_metadata() or ())
    return e.value.code(), trailers.get(CODE_KEY), trailers.get(PARAM_KEY)


def test_texts_and_token_ids(front):
    texts = ["hello world", "cat"]
    r = _embed(front, model=EMBED_MODEL, input=texts)
    assert r.model == EMBED_MODEL and [d.index for d in r.data] == [0, 1]
    for d, t in zip(r.data, texts):
        assert np.allclose(d.values, fake_vector([1, *FakeTokenizer.ids(t), 2]), atol=1e-7)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(len(FakeTokenizer.ids(t)) + 2 for t in texts)
    r = _embed(front, model=EMBED_MODEL, input_token_ids=[common_pb2.TokenIds(ids=[5, 6]), common_pb2.TokenIds(ids=[7])])
    assert [list(x.ids) for x in front.stack.embed_worker.embeds[-1].inputs] == [[5, 6], [7]]
    assert np.allclose(r.data[1].values, fake_vector([7]), atol=1e-7) and r.usage.prompt_tokens == 3
    r = _embed(front, model=EMBED_MODEL, input=["cat"], dimensions=3)
    assert len(r.data[0].values) == 3 and abs(np.linalg.norm(r.data[0].values) - 1) < 1e-6


@pytest.mark.parametrize("fields,status,code,param", [
    (dict(model=EMBED_MODEL), grpc.StatusCode.INVALID_ARGUMENT, "missing_required_parameter", "input"),
    (dict(model=EMBED_MODEL, input=["a"], input_token_ids=[common_pb2.TokenIds(ids=[1])]),
     grpc.StatusCode.INVALID_ARGUMENT, "invalid_value", "input"),
    (dict(model=EMBED_MODEL, input=["a", ""]), grpc.StatusCode.INVALID_ARGUMENT, "empty_input", "input[1]"),
    (dict(model=EMBED_MODEL, input_token_ids=[common_pb2.TokenIds(ids=[1]), common_pb2.TokenIds(ids=[9] * 65)]),
     grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded", "input_token_ids[1]"),
    (dict(model=EMBED_MODEL, input=["a"], dimensions=EMBED_DIMS + 1), grpc.StatusCode.INVALID_ARGUMENT,
     "invalid_value", "dimensions"),
    (dict(model=MODEL, input=["a"]), grpc.StatusCode.INVALID_ARGUMENT, "model_not_embedding", "model"),
    (dict(model="nope", input=["a"]), grpc.StatusCode.NOT_FOUND, "model_not_found", "model"),
])
def test_errors(front, fields, status, code, param):
    assert _error(front, **fields) == (status, code, param)


def test_generate_to_an_embedding_model_is_refused(front):
    with pytest.raises(grpc.RpcError) as e:
        list(front.stub.Generate(gs.GenerateTextRequest(model=EMBED_MODEL, prompt="hi"), metadata=front.md, timeout=5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())[CODE_KEY] == "model_not_generative"
    cards = {m.id: m for m in front.stub.ListModels(gs.ListModelsRequest(), metadata=front.md, timeout=5).models}
    assert cards[EMBED_MODEL].embedding and not cards[MODEL].embedding


def test_auth(front):
    with pytest.raises(grpc.RpcError) as e:
        _embed(front, metadata=(), model=EMBED_MODEL, input=["a"])
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_deadline_aborts_the_worker_request(front):
    w = front.stack.embed_worker
    w.embed_delay = 3.0
    try:
        with pytest.raises(grpc.RpcError) as e:
            _embed(front, timeout=0.4, model=EMBED_MODEL, input=["cat"])
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        rid = w.embeds[-1].request_id
        assert w.embeds[-1].deadline_unix_ms and w.embeds[-1].deadline_unix_ms / 1000 < time.time() + 1
        end = time.monotonic() + 5
        while rid not in w.aborts and time.monotonic() < end:
            time.sleep(0.02)
        assert rid in w.aborts
    finally:
        w.embed_delay = 0.0
