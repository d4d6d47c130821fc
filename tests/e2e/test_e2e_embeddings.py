"""Embeddings through the real stack: `npuflow serve` with the default chat model, a tiny BERT
sentence encoder given as its Hugging Face folder (converted on start) and a tiny
Qwen3-Embedding-shaped package, driven by the official openai client and by gRPC Embed. The
vectors are compared with the embedding engine run here on the same checkpoints."""
from __future__ import annotations

import pathlib
import sys

import grpc
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from e2e_stack import SERVER_AND_DEFAULT_MODEL, Stack
from npuflow.convert import convert
from npuflow.convert.embed_source import QWEN3_QUERY_FORMAT
from npuflow.engine.embed import EmbedEngine
from npuflow.v1 import common_pb2, generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import embed_ckpt  # noqa: E402

pytestmark = pytest.mark.e2e
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "cat sat on the mat",
         "how are you today", "embedding search query"]
CHAT = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def estack(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb-e2e")
    bert = embed_ckpt.write_bert(root / "bert-hf", pooling="mean", normalize=True)
    qwen_pkg = convert(embed_ckpt.write_qwen3_embedding(root / "qwen3-hf"), root / "qwen3-pkg")
    models = (f'\n[[models]]\nid = "tiny-bert"\nsource = "{bert}"\nthreads = 1\n'
              f'\n[[models]]\nid = "tiny-qwen3-embed"\nsource = "{qwen_pkg.path}"\nthreads = 1\n')
    s = Stack(root, SERVER_AND_DEFAULT_MODEL + models).start()
    ref_bert = convert(bert, root / "bert-ref-pkg")
    s.ref = {"tiny-bert": (EmbedEngine(ref_bert, threads=1), Tokenizer.from_file(str(bert / "tokenizer.json"))),
             "tiny-qwen3-embed": (EmbedEngine(qwen_pkg, threads=1),
                                  Tokenizer.from_file(str(root / "qwen3-hf" / "tokenizer.json")))}
    yield s
    s.stop()


@pytest.fixture(scope="module")
def eclient(estack):
    return openai.OpenAI(api_key="sk-", base_url=estack.base_url, max_retries=0, timeout=120)


def _ref(estack, model, texts, dimensions=0):
    eng, tok = estack.ref[model]
    ids = [tok.encode(t).ids for t in texts]
    return eng.embed(ids, dimensions), ids


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-qwen3-embed"])
def test_openai_client_gets_the_models_vectors(estack, eclient, model):
    r = eclient.embeddings.create(model=model, input=TEXTS)          # base64, decoded by the SDK
    want, ids = _ref(estack, model, TEXTS)
    got = np.array([d.embedding for d in r.data], np.float32)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(map(len, ids))
    floats = eclient.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert np.array([d.embedding for d in floats.data], np.float32).tolist() == got.tolist()
    by_ids = eclient.embeddings.create(model=model, input=ids)       # token-id lists, as LangChain sends
    assert np.abs(np.array([d.embedding for d in by_ids.data]) - want).max() < 1e-5


def test_dimensions_and_instruction(estack, eclient):
    r = eclient.embeddings.create(model="tiny-qwen3-embed", input=TEXTS[:2], dimensions=8)
    want, _ = _ref(estack, "tiny-qwen3-embed", TEXTS[:2], dimensions=8)
    assert np.abs(np.array([d.embedding for d in r.data]) - want).max() < 1e-5
    with pytest.raises(openai.BadRequestError) as e:
        eclient.embeddings.create(model="tiny-bert", input="cat", dimensions=8)
    assert e.value.body["param"] == "dimensions"
    task = "Given a web search query, retrieve relevant passages"
    q = eclient.embeddings.create(model="tiny-qwen3-embed", input=["cat"], extra_body={"instruction": task})
    want, _ = _ref(estack, "tiny-qwen3-embed", [QWEN3_QUERY_FORMAT.format(instruction=task, text="cat")])
    assert np.abs(np.array(q.data[0].embedding) - want[0]).max() < 1e-5
    with pytest.raises(openai.BadRequestError) as e:
        eclient.embeddings.create(model="tiny-bert", input="cat", extra_body={"instruction": task})
    assert e.value.body["param"] == "instruction"


def test_limits_and_kinds(estack, eclient):
    long = " ".join(["fox"] * 200)                 # over tiny-bert's 128 positions
    with pytest.raises(openai.BadRequestError) as e:
        eclient.embeddings.create(model="tiny-bert", input=["cat", long])
    assert (e.value.body["param"], e.value.body["code"]) == ("input[1]", "context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as e:
        eclient.embeddings.create(model=CHAT, input="cat")
    assert (e.value.body["param"], e.value.body["code"]) == ("model", "model_not_embedding")
    with pytest.raises(openai.BadRequestError) as e:
        eclient.chat.completions.create(model="tiny-bert", messages=[{"role": "user", "content": "hi"}])
    assert (e.value.body["param"], e.value.body["code"]) == ("model", "model_not_generative")
    models = {m.id: m for m in eclient.models.list().data}
    assert models["tiny-bert"].model_extra["embedding"] == {"dimensions": 32, "matryoshka": False}
    assert models["tiny-qwen3-embed"].model_extra["embedding"] == {"dimensions": 32, "matryoshka": True}
    assert "embedding" not in models[CHAT].model_extra
    answer = eclient.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.choices[0].message.content      # the chat model still serves next to them


def test_grpc_embed(estack):
    with grpc.insecure_channel(estack.grpc_target) as ch:
        stub = gs_grpc.GenerationServiceStub(ch)
        r = stub.Embed(gs.EmbedTextRequest(model="tiny-bert", input=TEXTS), timeout=60)
        want, ids = _ref(estack, "tiny-bert", TEXTS)
        assert np.abs(np.array([list(d.values) for d in r.data]) - want).max() < 1e-5
        assert r.usage.prompt_tokens == sum(map(len, ids))
        r = stub.Embed(gs.EmbedTextRequest(model="tiny-qwen3-embed", dimensions=4,
                                           input_token_ids=[common_pb2.TokenIds(ids=[5, 6, 0])]), timeout=60)
        ref = estack.ref["tiny-qwen3-embed"][0].embed([[5, 6, 0]], 4)
        assert np.abs(np.array(r.data[0].values) - ref[0]).max() < 1e-5
