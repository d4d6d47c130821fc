"""Several models at once, and a worker that dies: its requests end with an error, it is
restarted, the next request succeeds, and the other model is served throughout."""
import threading
import time

import openai
import pytest

from e2e_stack import DEFAULT_ID

pytestmark = pytest.mark.e2e
LONG = dict(temperature=0, max_tokens=400, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": "Write a very long story."}])


def test_long_generation_on_one_model_does_not_block_another(client):
    first_token_at = {}
    done_at = {}

    def long_stream():
        for chunk in client.chat.completions.create(model=DEFAULT_ID, stream=True, **LONG):
            if chunk.choices and chunk.choices[0].delta.content and "long" not in first_token_at:
                first_token_at["long"] = time.monotonic()
        done_at["long"] = time.monotonic()

    t = threading.Thread(target=long_stream)
    t.start()
    while "long" not in first_token_at and t.is_alive():
        time.sleep(0.01)
    start = time.monotonic()
    r = client.chat.completions.create(model="smollm2-second", max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    other_done = time.monotonic()
    t.join()
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
    assert other_done < done_at["long"], "the short request waited for the long one"
    assert other_done - start < 5.0


def test_killed_worker_ends_stream_with_error_restarts_and_serves_again(stack, client):
    old = stack.worker(DEFAULT_ID)
    stream = client.chat.completions.create(model=DEFAULT_ID, stream=True, **LONG)
    got_text = False
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and not got_text:
                got_text = True
                old.kill()
    assert got_text
    assert "worker" in str(err.value).lower()
    # the other model keeps serving while this one restarts
    r = client.chat.completions.create(model="smollm2-second", max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens >= 1
    stack.wait_healthy(120)
    new = stack.worker(DEFAULT_ID)
    assert new.pid != old.pid
    r = client.chat.completions.create(model=DEFAULT_ID, max_tokens=3,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_killed_worker_fails_a_non_streamed_request_clearly(stack, client):
    old = stack.worker("smollm2-second")
    threading.Timer(1.0, old.kill).start()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="smollm2-second", **LONG)
    assert err.value.status_code in (500, 502, 503)
    assert "worker" in err.value.message.lower()
    stack.wait_healthy(120)
    r = client.chat.completions.create(model="smollm2-second", max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens >= 1
