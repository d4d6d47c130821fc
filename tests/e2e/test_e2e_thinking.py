"""A thinking model on the real stack: a tiny qwen3 checkpoint (random weights, converted from its
safetensors folder by its worker) whose chat template opens a <think> block in the generation
prompt, as Qwen3's thinking models do, and renders an empty closed block when enable_thinking is
false. Its output then starts inside the block, so what it writes is reasoning until it closes the
block: reasoning_content, reasoning_text over gRPC and a Responses `reasoning` item carry it,
content gets none of it, and chat_template_kwargs / reasoning_effort turn it off."""
import json
import pathlib
import sys

import grpc
import pytest

from e2e_stack import SERVER_SECTION, Stack

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "convert"))
import tinymodels  # noqa: E402

from npuflow.v1 import common_pb2, generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc  # noqa: E402

pytestmark = pytest.mark.e2e

MODEL = "tiny-thinker"
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}")
CONFIG = SERVER_SECTION + """
[[models]]
id = "tiny-thinker"
source = "SOURCE"
threads = 1
context_length = 256
max_batch = 2
"""
HI = [{"role": "user", "content": "Hello there, how are you today?"}]
LONG = {"max_tokens": 12, "temperature": 0}
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thinker")
    folder = tmp / "qwen3-thinking"
    tinymodels.write_hf(folder, "qwen3")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=THINKING_TEMPLATE)))
    s = Stack(tmp, CONFIG.replace("SOURCE", str(folder))).start()
    yield s
    s.stop()


@pytest.fixture()
def client(thinker):
    from openai import OpenAI
    return OpenAI(api_key="sk-", base_url=thinker.base_url, max_retries=0, timeout=120)


def test_thinking_goes_to_reasoning_content(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_EOS, **LONG)
    msg = r.choices[0].message
    reasoning = msg.model_extra.get("reasoning_content")
    assert reasoning and not msg.content       # the block never closed within 12 tokens: all of it is reasoning
    assert r.usage.completion_tokens == 12 and r.usage.completion_tokens_details.reasoning_tokens == 12

    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_EOS, stream=True,
                                                 stream_options={"include_usage": True}, **LONG))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    assert not "".join(d.content or "" for d in deltas)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 12


@pytest.mark.parametrize("extra", [{"chat_template_kwargs": {"enable_thinking": False}},
                                   {"reasoning_effort": "none"}])
def test_thinking_off(client, extra):
    r = client.chat.completions.create(model=MODEL, messages=HI, extra_body=dict(NO_EOS, **extra), **LONG)
    msg = r.choices[0].message
    assert "reasoning_content" not in (msg.model_extra or {}) and msg.content
    assert r.usage.completion_tokens_details is None or not r.usage.completion_tokens_details.reasoning_tokens


def test_responses_reasoning_item(client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_EOS, **LONG)
    r = client.responses.create(model=MODEL, input=HI[0]["content"], temperature=0, max_output_tokens=16,
                                extra_body=NO_EOS)
    assert r.status == "incomplete" and r.output[0].type == "reasoning"
    assert r.output[0].content[0].text.startswith(whole.choices[0].message.model_extra["reasoning_content"])
    assert r.usage.output_tokens_details.reasoning_tokens == 16
    off = client.responses.create(model=MODEL, input=HI[0]["content"], temperature=0, max_output_tokens=16,
                                  reasoning={"effort": "none"}, extra_body=NO_EOS)
    assert [o.type for o in off.output] == ["message"] and off.output_text


def test_grpc_chat_streams_reasoning_text(thinker, client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_EOS, **LONG)
    with grpc.insecure_channel(thinker.grpc_target) as ch:
        stub = gs_grpc.GenerationServiceStub(ch)
        req = gs.ChatRequest(model=MODEL, messages=[gs.ChatTurn(role="user", content=HI[0]["content"])],
                             sampling=common_pb2.SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        msgs = list(stub.Chat(req, timeout=60))
    assert "".join(c.reasoning_text for m in msgs for c in m.choices) == \
        whole.choices[0].message.model_extra["reasoning_content"]
    assert not "".join(c.text for m in msgs for c in m.choices) and msgs[-1].usage.reasoning_tokens == 12


def test_a_grammar_lets_the_model_think_first(client):
    """With a json_object format the block the template opened stays free text (the worker's grammar
    constrains only what follows </think>): 12 tokens of it here, all reasoning."""
    free = client.chat.completions.create(model=MODEL, messages=HI, extra_body=NO_EOS, **LONG)
    r = client.chat.completions.create(model=MODEL, messages=HI, response_format={"type": "json_object"}, **LONG)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "length" and not msg.content
    assert msg.model_extra["reasoning_content"] == free.choices[0].message.model_extra["reasoning_content"]
    off = client.chat.completions.create(model=MODEL, messages=HI, response_format={"type": "json_object"},
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}},
                                         max_tokens=24, temperature=0)
    assert off.choices[0].message.content.startswith("{")     # no block: the answer is constrained from its start
