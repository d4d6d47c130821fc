"""OpenAI conformance of the running stack: every body, stream chunk and error body has the shape of
the official `openai` package's types (tests/oai_shapes.py), and the stream keeps the invariants
that real clients rely on. (.ci/run also runs the shared conformance checker against `./run serve`.)"""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

import oai_shapes

pytestmark = pytest.mark.e2e

MSGS = [{"role": "developer", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in five words."}]


def call(stack, method: str, path: str, body=None, raw: bytes | None = None, stream: bool = False):
    """(status, content type, JSON body or the list of SSE data payloads) of one request."""
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=300)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, "/v1" + path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    ctype = r.getheader("Content-Type", "")
    if stream and r.status == 200:
        events = [line.strip()[5:].strip().decode() for line in r if line.strip().startswith(b"data:")]
        c.close()
        return r.status, ctype, events
    text = r.read().decode()
    c.close()
    try:
        return r.status, ctype, json.loads(text)
    except ValueError:
        return r.status, ctype, text


@pytest.fixture(scope="module")
def model(stack) -> str:
    st, _, body = call(stack, "GET", "/models")
    assert st == 200 and not oai_shapes.check("ListModelsResponse", body), body
    return body["data"][0]["id"]


def test_models(stack, model):
    st, _, body = call(stack, "GET", "/models/" + urllib.parse.quote(model, safe=""))
    assert st == 200 and not oai_shapes.check("Model", body), body


def test_chat_completion_with_usage(stack, model):
    st, _, body = call(stack, "POST", "/chat/completions", {"model": model, "messages": MSGS, "max_tokens": 16})
    assert st == 200, body
    assert not oai_shapes.check("CreateChatCompletionResponse", body), oai_shapes.check("CreateChatCompletionResponse", body)
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def _chunks(events: list[str]) -> list[dict]:
    assert events and events[-1] == "[DONE]", "stream does not end with data: [DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for i, ch in enumerate(chunks):
        errs = oai_shapes.check("CreateChatCompletionStreamResponse", ch)
        assert not errs, (i, errs, ch)
    return chunks


def test_stream_with_usage_trailer(stack, model):
    req = {"model": model, "messages": MSGS, "max_tokens": 16, "stream": True,
           "stream_options": {"include_usage": True}}
    st, ctype, events = call(stack, "POST", "/chat/completions", req, stream=True)
    assert st == 200, events
    assert "text/event-stream" in ctype, ctype
    chunks = _chunks(events)
    assert len({ch["id"] for ch in chunks}) == 1, "chunks carry more than one id"
    with_choices = [ch for ch in chunks if ch["choices"]]
    assert with_choices and with_choices[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [c["finish_reason"] for ch in with_choices for c in ch["choices"] if c.get("finish_reason")]
    assert len(finishes) == 1, f"finish_reason set in {len(finishes)} chunks, want exactly 1"
    assert chunks[-1]["choices"] == [] and chunks[-1].get("usage"), "the last chunk must have choices [] and usage"
    assert not [ch for ch in chunks[:-1] if ch.get("usage")], "non-final chunks carry usage"


def test_stream_without_include_usage_has_no_usage(stack, model):
    st, _, events = call(stack, "POST", "/chat/completions",
                         {"model": model, "messages": MSGS, "max_tokens": 16, "stream": True}, stream=True)
    assert st == 200, events
    assert not [ch for ch in _chunks(events) if ch.get("usage")]


@pytest.mark.parametrize("want, method, path, body, raw", [
    (404, "POST", "/chat/completions", {"model": "no-such-model", "messages": MSGS}, None),
    (400, "POST", "/chat/completions", None, b"{not json"),
    (400, "POST", "/chat/completions", {"model": "{model}"}, None),
    (400, "POST", "/chat/completions", {"model": "{model}", "messages": MSGS, "temperature": "hot"}, None),
    (400, "POST", "/chat/completions", {"model": "{model}", "messages": MSGS, "max_tokens": -5}, None),
    (404, "GET", "/no/such/route", None, None),
], ids=["unknown-model", "malformed-json", "no-messages", "temperature-type", "negative-max-tokens", "unknown-route"])
def test_errors_are_error_responses(stack, model, want, method, path, body, raw):
    if body and body.get("model") == "{model}":
        body = dict(body, model=model)
    st, _, b = call(stack, method, path, body, raw)
    assert st == want, (st, b)
    assert isinstance(b, dict) and not oai_shapes.check("ErrorResponse", b), b


def test_completion(stack, model):
    st, _, body = call(stack, "POST", "/completions", {"model": model, "prompt": "Once upon a time", "max_tokens": 8})
    assert st == 200 and not oai_shapes.check("CreateCompletionResponse", body), body
