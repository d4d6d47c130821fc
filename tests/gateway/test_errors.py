"""Every error is an OpenAI ErrorResponse with the right status, type, param and code."""
import pytest

from gw_fakes import MODEL

MSGS = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def _err(stack, schema, status, method, path, body=None, **kw):
    st, headers, b = stack.request(method, path, body, **kw)
    assert st == status, b
    assert headers["Content-Type"].startswith("application/json")
    assert not schema("ErrorResponse", b), b
    return b["error"]


def test_malformed_json(stack, schema):
    e = _err(stack, schema, 400, "POST", CHAT, raw=b"{not json")
    assert e["type"] == "invalid_request_error"
    _err(stack, schema, 400, "POST", CHAT, raw=b"[1, 2]")
    _err(stack, schema, 400, "POST", CHAT, raw=b"\xff\xfe")


@pytest.mark.parametrize("patch, param", [
    ({"model": None}, "model"),
    ({"messages": None}, "messages"),
    ({"model": 5}, "model"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),      # an image URL without a scheme
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 100}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"5": 200}}, "logit_bias.5"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
])
def test_chat_param_errors(stack, schema, patch, param):
    body = {"model": MODEL, "messages": MSGS}
    body.update(patch)
    body = {k: v for k, v in body.items() if v is not None}
    e = _err(stack, schema, 400, "POST", CHAT, body)
    assert e["param"] == param and e["type"] == "invalid_request_error", e


@pytest.mark.parametrize("patch, param", [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": ""}, "prompt"),
])
def test_completion_param_errors(stack, schema, patch, param):
    body = {"model": MODEL, **patch}
    e = _err(stack, schema, 400, "POST", "/v1/completions", {k: v for k, v in body.items() if v is not None})
    assert e["param"] == param


def test_unknown_model(stack, schema):
    for path, body in ((CHAT, {"model": "nope", "messages": MSGS}), ("/v1/completions", {"model": "nope", "prompt": "x"})):
        e = _err(stack, schema, 404, "POST", path, body)
        assert e["code"] == "model_not_found"
    assert _err(stack, schema, 404, "GET", "/v1/models/nope")["code"] == "model_not_found"


def test_unknown_route_and_method(stack, schema):
    _err(stack, schema, 404, "GET", "/no/such/route")
    _err(stack, schema, 404, "POST", "/v1/nothing", {})
    _err(stack, schema, 405, "GET", CHAT)
    _err(stack, schema, 405, "DELETE", "/v1/models")


def test_auth(stack, schema):
    e = _err(stack, schema, 401, "POST", CHAT, {"model": MODEL, "messages": MSGS}, auth=False)
    assert e["code"] == "invalid_api_key"
    e = _err(stack, schema, 401, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert e["code"] == "invalid_api_key"
    _err(stack, schema, 401, "GET", "/v1/models", headers={"Authorization": "Basic abc"})


def test_body_too_large(stack, schema):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70000}]}
    _err(stack, schema, 413, "POST", CHAT, big)


def test_context_length_exceeded(stack, schema):
    words = " ".join(["w"] * 60)   # one token per word in the fake tokenizer; context is 64
    e = _err(stack, schema, 400, "POST", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": words}],
                                                "max_tokens": 10})
    assert e["code"] == "context_length_exceeded" and e["param"] == "messages"
    assert e["message"].startswith("This model's maximum context length is 64 tokens. However, you requested 72 "
                                   "tokens (62 in the messages, 10 in the completion).")
    e = _err(stack, schema, 400, "POST", "/v1/completions", {"model": MODEL, "prompt": " ".join(["w"] * 64)})
    assert e["code"] == "context_length_exceeded" and e["param"] == "prompt"
    st, _, body = stack.request("POST", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": words}]})
    assert st == 200 and body["usage"]["total_tokens"] <= 64


def test_queue_full_429(stack, schema):
    import concurrent.futures as cf
    stack.worker.delay = 0.05          # 8 tokens -> ~0.4 s per request; max_queue 4 + max_batch 2
    try:
        with cf.ThreadPoolExecutor(10) as pool:
            futs = [pool.submit(stack.request, "POST", CHAT, {"model": MODEL, "messages": MSGS}) for _ in range(10)]
            results = [f.result() for f in futs]
    finally:
        stack.worker.delay = 0.001
    statuses = sorted(r[0] for r in results)
    assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses
    e = next(r[2]["error"] for r in results if r[0] == 429)
    assert e["code"] == "rate_limit_exceeded" and not schema("ErrorResponse", {"error": e})
