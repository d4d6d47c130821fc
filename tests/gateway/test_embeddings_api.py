"""POST /v1/embeddings against fake peers: every input shape, both encodings, dimensions, the
errors (OpenAI-shaped, naming the param), auth, metrics, cancellation and the deadline."""
import base64
import time

import numpy as np
import openai
import pytest

from gw_fakes import EMBED_DIMS, EMBED_MODEL, MODEL, FakeTokenizer, fake_vector


@pytest.fixture(scope="module")
def estack(tmp_path_factory):
    from gw_stack import Stack
    s = Stack(tmp_path_factory.mktemp("emb"), embed=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(estack):
    return openai.OpenAI(base_url=estack.base_url, api_key=estack.key, max_retries=0, timeout=10)


def _ids(text: str) -> list[int]:
    return [1, *FakeTokenizer.ids(text), 2]


def _post(estack, body, **kw):
    return estack.request("POST", "/v1/embeddings", body, **kw)


def test_strings_through_the_openai_client(estack, client):
    """The SDK asks for base64 by default and decodes it; every vector is the worker's for its input."""
    texts = ["hello world", "the quick brown fox", "cat"]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == EMBED_MODEL and r.object == "list"
    for d, t in zip(r.data, texts):
        assert np.allclose(d.embedding, fake_vector(_ids(t)), atol=1e-7)
    sent = estack.embed_worker.embeds[-1]
    assert [list(x.ids) for x in sent.inputs] == [_ids(t) for t in texts]       # one job, all inputs
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(len(_ids(t)) for t in texts)
    one = client.embeddings.create(model=EMBED_MODEL, input="hello world")
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, r.data[0].embedding)


def test_base64_is_the_float_vector(estack, schema):
    body = {"model": EMBED_MODEL, "input": ["hello world", "cat"]}
    st, _, floats = _post(estack, body)
    assert st == 200 and not schema("CreateEmbeddingResponse", floats)
    st, _, b64 = _post(estack, {**body, "encoding_format": "base64"})
    assert st == 200
    for f, b in zip(floats["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.tolist() == pytest.approx(f["embedding"], abs=0) and len(decoded) == EMBED_DIMS
    assert b64["usage"] == floats["usage"]


@pytest.mark.parametrize("inp", [[5, 6, 7], [[5, 6, 7], [8, 9], [10]]])
def test_token_id_inputs_skip_the_tokenizer(estack, client, inp):
    """LangChain sends token ids: a list, or a list of lists; they go to the worker as they are."""
    rows = [inp] if isinstance(inp[0], int) else inp
    r = client.embeddings.create(model=EMBED_MODEL, input=inp, encoding_format="float")
    assert [list(x.ids) for x in estack.embed_worker.embeds[-1].inputs] == rows
    assert len(r.data) == len(rows) and r.usage.prompt_tokens == sum(map(len, rows))
    for d, ids in zip(r.data, rows):
        assert np.allclose(d.embedding, fake_vector(ids), atol=1e-7)


def test_dimensions(estack, client):
    r = client.embeddings.create(model=EMBED_MODEL, input=["hello world"], dimensions=4)
    assert estack.embed_worker.embeds[-1].dimensions == 4
    v = np.array(r.data[0].embedding)
    assert len(v) == 4 and abs(np.linalg.norm(v) - 1) < 1e-6
    r = client.embeddings.create(model=EMBED_MODEL, input=["hello world"], dimensions=EMBED_DIMS)
    assert len(r.data[0].embedding) == EMBED_DIMS and estack.embed_worker.embeds[-1].dimensions == 0
    st, _, body = _post(estack, {"model": EMBED_MODEL, "input": "cat", "dimensions": EMBED_DIMS + 1})
    assert st == 400 and body["error"]["param"] == "dimensions"


def test_instruction_extension(estack):
    st, _, body = _post(estack, {"model": EMBED_MODEL, "input": ["cat"], "instruction": "Find animals"})
    assert st == 200
    assert list(estack.embed_worker.embeds[-1].inputs[0].ids) == _ids("Instruct: Find animals Query: cat")
    st, _, body = _post(estack, {"model": EMBED_MODEL, "input": [[5, 6]], "instruction": "Find animals"})
    assert st == 400 and body["error"]["param"] == "instruction"


CTX = 64   # the stack's context length


@pytest.mark.parametrize("body,param,code", [
    ({"input": []}, "input", "empty_array"),
    ({"input": ""}, "input", "empty_string"),
    ({"input": ["a", ""]}, "input[1]", "empty_string"),
    ({"input": [[1, 2], []]}, "input[1]", "empty_array"),
    ({"input": [[1, 2], [3, -1]]}, "input[1][1]", "integer_below_min_value"),
    ({"input": [1, 2, 2 ** 40]}, "input[2]", "integer_above_max_value"),
    ({"input": ["a", 1]}, "input", "invalid_type"),
    ({"input": [{"text": "a"}]}, "input[0]", "invalid_type"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": ["a"] * 2049}, "input", "array_above_max_length"),
    ({}, "input", "missing_required_parameter"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ({"input": "a", "dimensions": 0}, "dimensions", "integer_below_min_value"),
    ({"input": "a", "dimensions": "4"}, "dimensions", "invalid_type"),
    ({"input": "a", "user": 5}, "user", "invalid_type"),
    ({"input": [[5] * 3, [6] * 3, [7] * (CTX + 1)]}, "input[2]", "context_length_exceeded"),
])
def test_bad_requests_are_openai_shaped_400s(estack, schema, body, param, code):
    before = len(estack.embed_worker.embeds)
    st, _, err = _post(estack, {"model": EMBED_MODEL, **body})
    assert st == 400, err
    assert not schema("ErrorResponse", err)
    assert (err["error"]["param"], err["error"]["code"]) == (param, code), err
    assert len(estack.embed_worker.embeds) == before          # nothing reached the worker


def test_model_kinds_are_told_apart(estack, client):
    st, _, err = _post(estack, {"model": MODEL, "input": "hello"})
    assert st == 400 and (err["error"]["param"], err["error"]["code"]) == ("model", "model_not_embedding")
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        st, _, err = estack.request("POST", path, {"model": EMBED_MODEL, **body})
        assert st == 400 and (err["error"]["param"], err["error"]["code"]) == ("model", "model_not_generative")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")
    models = {m["id"]: m for m in estack.request("GET", "/v1/models")[2]["data"]}
    assert models[EMBED_MODEL]["embedding"] == {"dimensions": EMBED_DIMS, "matryoshka": True}
    assert "embedding" not in models[MODEL]


def test_auth(estack):
    st, _, err = _post(estack, {"model": EMBED_MODEL, "input": "hello"}, auth=False)
    assert st == 401 and err["error"]["code"] == "invalid_api_key"


def _metric(estack, name: str) -> float:
    text = estack.request("GET", "/metrics")[2]
    line = next((ln for ln in text.splitlines() if ln.startswith(f'{name}{{model="{EMBED_MODEL}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics(estack, client):
    inputs, tokens = _metric(estack, "npuflow_embedding_inputs_total"), _metric(estack, "npuflow_prompt_tokens_total")
    r = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "cat"])
    assert _metric(estack, "npuflow_embedding_inputs_total") == inputs + 2
    assert _metric(estack, "npuflow_prompt_tokens_total") == tokens + r.usage.prompt_tokens
    assert _metric(estack, "npuflow_embedding_seconds_count") >= 1
    text = estack.request("GET", "/metrics")[2]
    assert 'npuflow_http_requests_total{route="/v1/embeddings",status="200"}' in text


def test_client_gone_aborts_the_request(estack):
    w = estack.embed_worker
    w.embed_delay = 3.0
    try:
        with pytest.raises(Exception):
            estack.request("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": "cat"}, timeout=0.3)
        rid = w.embeds[-1].request_id
        end = time.monotonic() + 5
        while rid not in w.aborts and time.monotonic() < end:
            time.sleep(0.02)
        assert rid in w.aborts
    finally:
        w.embed_delay = 0.0


def test_deadline_ends_the_request(make_stack):
    s = make_stack(embed=True, request_timeout_s=0.5)
    s.embed_worker.embed_delay = 5.0
    t = time.monotonic()
    st, _, err = s.request("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": "cat"})
    assert st == 504 and err["error"]["code"] == "timeout"
    assert time.monotonic() - t < 3
    rid = s.embed_worker.embeds[-1].request_id
    end = time.monotonic() + 5
    while rid not in s.embed_worker.aborts and time.monotonic() < end:
        time.sleep(0.02)
    assert rid in s.embed_worker.aborts
    assert s.embed_worker.embeds[-1].deadline_unix_ms > 0


def test_tokens_per_request_cap(make_stack, schema):
    """All inputs of one request together within server.max_embedding_tokens_per_request: more is a
    400 naming `input` before the worker gets any of them."""
    s = make_stack(embed=True, max_embedding_tokens_per_request=20)
    c = openai.OpenAI(base_url=s.base_url, api_key=s.key, max_retries=0, timeout=10)
    assert len(c.embeddings.create(model=EMBED_MODEL, input=["one two three"] * 4).data) == 4   # 4 x 5 tokens
    jobs = len(s.embed_worker.embeds)
    st, _, err = s.request("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": ["one two three"] * 5})
    assert st == 400 and err["error"]["code"] == "max_tokens_per_request" and err["error"]["param"] == "input"
    assert "25 tokens" in err["error"]["message"] and not schema("ErrorResponse", err)
    st, _, err = s.request("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": [list(range(5, 26))]})
    assert st == 400 and err["error"]["code"] == "max_tokens_per_request"
    assert len(s.embed_worker.embeds) == jobs
