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


def _freed_within(stack, seconds: float) -> bool:
    """The worker's heartbeat (every 0.2 s) reports no running sequence within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if stack.health()[1]["workers"][DEFAULT_ID]["running"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_deadline_stops_generation_and_frees_the_slot(short_deadline):
    client = openai.OpenAI(api_key="sk-", base_url=short_deadline.base_url, max_retries=0, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**LONG)
    took = time.monotonic() - t0
    assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
    assert 1.9 < took < 4.0
    assert _freed_within(short_deadline, 1.0)

    got_text = False
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(stream=True, **LONG):
            got_text = got_text or bool(chunk.choices and chunk.choices[0].delta.content)
    assert got_text and "deadline" in str(e.value).lower()
    assert _freed_within(short_deadline, 1.0)
