"""The official openai client against the real stack serving the default model."""
import pytest

from e2e_stack import DEFAULT_ID

pytestmark = pytest.mark.e2e


def test_documented_example_runs_unchanged(stack, capsys):
    from openai import OpenAI
    client = OpenAI(api_key="sk-", base_url=stack.base_url)
    completion = client.chat.completions.create(model="smollm2-135m-instruct", messages=[
        {"role": "developer", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"}])
    print(completion.choices[0].message)
    out = capsys.readouterr().out
    assert "ChatCompletionMessage" in out and "role='assistant'" in out
    msg = completion.choices[0].message
    assert msg.role == "assistant" and msg.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    u = completion.usage
    assert u.prompt_tokens > 10 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_models_list_and_get(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [DEFAULT_ID, "smollm2-second"]
    m = client.models.retrieve(DEFAULT_ID)
    assert m.id == DEFAULT_ID and m.object == "model" and m.owned_by


@pytest.mark.ort_kernels
def test_greedy_answer_is_the_models_own(client):
    """The default model's known greedy continuation (default-model.md) through the whole stack."""
    # the test vector's prompt has no system turn, so send it as raw text through /v1/completions
    prompt = "<|im_start|>user\nHello, world! How are you?<|im_end|>\n<|im_start|>assistant\n"
    c = client.completions.create(model=DEFAULT_ID, prompt=prompt, temperature=0, max_tokens=8)
    assert c.choices[0].text == "I'm so glad you're enjoying the"
    assert c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == 17 and c.usage.completion_tokens == 8


def test_max_tokens_cuts_with_length_and_counts_real_tokens(client):
    for kw in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        r = client.chat.completions.create(model=DEFAULT_ID, temperature=0, messages=[
            {"role": "user", "content": "Write a long story about a dragon."}], **kw)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 5


def test_whole_conversation_reaches_the_model(stack, client):
    """Every role goes through the template, in order: the tokens the model is given (the same
    count as the request's usage) decode to every turn under its role's header."""
    msgs = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "developer", "content": "Answer with one word."},
            {"role": "user", "content": "My cat is called Whiskers."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "What is my cat called?"}]
    full = client.chat.completions.create(model=DEFAULT_ID, temperature=0, max_tokens=12, messages=msgs)
    assert full.choices[0].message.content
    tok = stack.post("/tokenize", {"model": DEFAULT_ID, "messages": msgs})
    assert tok["count"] == full.usage.prompt_tokens
    text = stack.post("/detokenize", {"model": DEFAULT_ID, "tokens": tok["tokens"]})["prompt"]
    want = ["<|im_start|>system\nYou are a terse assistant.<|im_end|>",
            "<|im_start|>system\nAnswer with one word.<|im_end|>",      # developer = system
            "<|im_start|>user\nMy cat is called Whiskers.<|im_end|>",
            "<|im_start|>assistant\nNoted.<|im_end|>",
            "<|im_start|>user\nWhat is my cat called?<|im_end|>",
            "<|im_start|>assistant\n"]
    pos = 0
    for w in want:  # each turn after the one before
        pos = text.find(w, pos)
        assert pos >= 0, f"{w!r} missing or out of order in {text!r}"
        pos += len(w)
    assert text.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" not in text  # no default system prompt added


def test_stream_matches_non_stream_and_invariants(client):
    kw = dict(model=DEFAULT_ID, temperature=0, max_tokens=24,
              messages=[{"role": "user", "content": "Name three colours."}])
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_strings_end_the_answer_without_the_stop_text(client):
    kw = dict(model=DEFAULT_ID, temperature=0, max_tokens=40,
              messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}])
    free = client.chat.completions.create(**kw).choices[0].message.content
    assert "5" in free
    r = client.chat.completions.create(stop=["5"], **kw)
    assert r.choices[0].finish_reason == "stop"
    text = r.choices[0].message.content
    assert "5" not in text and free.startswith(text)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stop=["5"], stream=True, **kw) if c.choices)
    assert streamed == text


def test_temperature_and_top_p_change_sampling(client):
    kw = dict(model=DEFAULT_ID, max_tokens=16, messages=[{"role": "user", "content": "Tell me a word."}])
    greedy = {client.chat.completions.create(temperature=0, **kw).choices[0].message.content for _ in range(2)}
    assert len(greedy) == 1
    hot = {client.chat.completions.create(temperature=1.5, top_p=1.0, **kw).choices[0].message.content
           for _ in range(4)}
    assert len(hot) > 1
    narrow = {client.chat.completions.create(temperature=1.5, top_p=1e-6, **kw).choices[0].message.content
              for _ in range(2)}
    assert narrow == greedy  # top_p that keeps only the best token is greedy


def test_completions_endpoint(client):
    c = client.completions.create(model=DEFAULT_ID, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert c.object == "text_completion" and c.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=DEFAULT_ID, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if ch.choices)
    assert streamed == c.choices[0].text


def test_health(stack):
    status, body = stack.health()
    assert status == 200 and body
