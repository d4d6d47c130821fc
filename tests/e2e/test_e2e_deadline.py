"""A request that passes its deadline (server.request_timeout_s) is stopped in the worker, its
slot is freed, and the client gets a 504 OpenAI error (an error event in a stream)."""
import time

import openai
import pytest

from e2e_stack import DEFAULT_ID, Stack

pytestmark = pytest.mark.e2e

DEADLINE_CONFIG = """
[server]
port = {port}
run_dir = "{run_dir}"
grpc_port = 0
request_timeout_s = 2

[[models]]
id = "smollm2-135m-instruct"
context_length = 2048
"""
LONG = dict(model=DEFAULT_ID, max_tokens=1800, temperature=0, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": "Write a very long story."}])


@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("deadline"), DEADLINE_CONFIG).start()
    yield s
    s.stop()


def test_deadline_stops_generation_and_frees_the_slot(short_deadline):
    client = openai.OpenAI(api_key="sk-", base_url=short_deadline.base_url, max_retries=0, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**LONG)
    took = time.monotonic() - t0
    assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
    assert 1.9 < took < 4.0
    assert short_deadline.wait_running(DEFAULT_ID, 0, 1.0)

    got_text = False
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(stream=True, **LONG):
            got_text = got_text or bool(chunk.choices and chunk.choices[0].delta.content)
    assert got_text and "deadline" in str(e.value).lower()
    assert short_deadline.wait_running(DEFAULT_ID, 0, 1.0)
