"""A stack with API keys and tight limits: auth, body size, context length, and a SIGTERM that
drains in-flight requests and leaves no process or socket file behind."""
import json
import threading
import urllib.request

import openai
import psutil
import pytest

from e2e_stack import DEFAULT_ID, Stack

pytestmark = pytest.mark.e2e

KEYED_CONFIG = """
[server]
port = {port}
run_dir = "{run_dir}"
grpc_port = 0
api_keys = ["sk-right"]
max_body_bytes = 4096

[[models]]
id = "smollm2-135m-instruct"
context_length = 128
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("keyed"), KEYED_CONFIG).start()
    yield s
    s.stop()


def _client(stack, key):
    return openai.OpenAI(api_key=key, base_url=stack.base_url, max_retries=0, timeout=60)


def test_api_key_required(keyed):
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.AuthenticationError) as e:
        _client(keyed, "sk-wrong").chat.completions.create(model=DEFAULT_ID, messages=msgs)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    req = urllib.request.Request(keyed.base_url + "/models")
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req)
    assert he.value.code == 401 and json.loads(he.value.read())["error"]["type"]
    r = _client(keyed, "sk-right").chat.completions.create(model=DEFAULT_ID, messages=msgs, max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_body_over_limit_is_413(keyed):
    with pytest.raises(openai.APIStatusError) as e:
        _client(keyed, "sk-right").chat.completions.create(
            model=DEFAULT_ID, messages=[{"role": "user", "content": "x" * 8000}])
    assert e.value.status_code == 413 and e.value.body["message"]


def test_prompt_over_context_is_400_context_length_exceeded(keyed):
    with pytest.raises(openai.BadRequestError) as e:
        _client(keyed, "sk-right").chat.completions.create(
            model=DEFAULT_ID, messages=[{"role": "user", "content": "word " * 300}])
    assert e.value.body["code"] == "context_length_exceeded"
    assert "128" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        _client(keyed, "sk-right").chat.completions.create(
            model=DEFAULT_ID, max_tokens=120, messages=[{"role": "user", "content": "word " * 20}])
    assert e.value.body["code"] == "context_length_exceeded"


def test_generation_runs_to_the_end_of_the_context_with_length(keyed):
    r = _client(keyed, "sk-right").chat.completions.create(
        model=DEFAULT_ID, temperature=0, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "Tell me a story."}])
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == 128


def test_sigterm_drains_in_flight_and_leaves_nothing_behind(keyed):
    """Runs last in this module: it stops the stack."""
    children = keyed.children()
    assert len(children) >= 3
    result = {}
    started = threading.Event()

    def stream():
        text = []
        for c in _client(keyed, "sk-right").chat.completions.create(
                model=DEFAULT_ID, stream=True, max_tokens=60, temperature=0, extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": "Tell me a story."}]):
            if c.choices:
                started.set()
                text.append(c.choices[0].delta.content or "")
                if c.choices[0].finish_reason:
                    result["finish"] = c.choices[0].finish_reason
        result["text"] = "".join(text)

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    assert keyed.stop(timeout=90) == 0
    t.join(30)
    assert result.get("finish") == "length" and result["text"]
    for p in children:
        assert not psutil.pid_exists(p.pid) or p.status() == psutil.STATUS_ZOMBIE
    assert not list(keyed.run_dir.glob("*.sock"))
