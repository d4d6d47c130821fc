"""A new user's first image request: the stack serves a converted tiny VLM (a SmolVLM-style
Idefics3 checkpoint and an InternVL one, random weights) next to the default model, and the
official openai client sends a local PNG as a data URL, streamed and not."""
from __future__ import annotations

import base64
import io
import pathlib
import sys

import numpy as np
import openai
import pytest

from e2e_stack import SERVER_AND_DEFAULT_MODEL, Stack

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "vision"))
import tinyvlm  # noqa: E402

pytestmark = pytest.mark.e2e
FAMILIES = ("idefics3", "internvl")
PROMPT = "What is in this picture?"


def png_bytes(seed: int, width: int, height: int) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_message(png: bytes, text: str = PROMPT, detail: str = "auto") -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": data_url(png), "detail": detail}}]}


@pytest.fixture(scope="module")
def vlm_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm-e2e")
    hf = {f: tinyvlm.BUILDERS[f](root / f"hf-{f}") for f in FAMILIES}
    models = "".join(f'\n[[models]]\nid = "tiny-{f}"\nsource = "{hf[f]}"\nthreads = 1\ncontext_length = 1024\n'
                     for f in FAMILIES)
    s = Stack(root, SERVER_AND_DEFAULT_MODEL + models).start()
    s.hf = hf
    yield s
    s.stop()


@pytest.fixture()
def vclient(vlm_stack):
    return openai.OpenAI(api_key="sk-", base_url=vlm_stack.base_url, max_retries=0, timeout=120)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_and_not_agree_and_count_the_image(vclient, family):
    png = png_bytes(1, 90, 60)
    msgs = [image_message(png)]
    full = vclient.chat.completions.create(model=f"tiny-{family}", messages=msgs, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert text, "the model answered nothing"
    chunks = list(vclient.chat.completions.create(model=f"tiny-{family}", messages=msgs, max_tokens=24,
                                                  temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    usage = chunks[-1].usage
    assert usage.prompt_tokens == full.usage.prompt_tokens
    text_only = vclient.chat.completions.create(model=f"tiny-{family}", max_tokens=1, temperature=0,
                                                messages=[{"role": "user", "content": PROMPT}])
    # the image's placeholders and layout markers count as prompt tokens, as OpenAI counts them
    assert full.usage.prompt_tokens > text_only.usage.prompt_tokens + 4
    assert usage.prompt_tokens_details.cached_tokens > 0      # the second request reused the first's KV


@pytest.mark.parametrize("family", FAMILIES)
def test_a_different_image_gets_its_own_answer(vclient, family):
    answers = []
    for seed in (11, 12, 11):
        r = vclient.chat.completions.create(model=f"tiny-{family}", messages=[image_message(png_bytes(seed, 64, 64))],
                                            max_tokens=16, temperature=0)
        answers.append((r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens))
    (a1, _, n1), (a2, c2, _), (a3, c3, _) = answers
    assert a1 == a3                     # the same image again: the same answer, its KV reused
    assert c3 > c2
    assert c2 < n1 - 4                  # the other image shared at most the text before it


def test_models_say_which_take_images(vclient, vlm_stack):
    import json
    import urllib.request
    with urllib.request.urlopen(f"{vlm_stack.base_url}/models", timeout=10) as r:
        data = {m["id"]: m for m in json.loads(r.read())["data"]}
    assert data["tiny-idefics3"]["input_modalities"] == ["text", "image"]
    assert data["smollm2-135m-instruct"]["input_modalities"] == ["text"]


def test_bad_images_are_400s_naming_the_part(vclient):
    cases = [
        ("data:image/png;base64,iVBORw0KGgo", "messages[0].content[1]"),            # truncated PNG
        ("data:image/png;base64,not base64!!", "messages[0].content[1]"),
        ("file:///etc/passwd", "messages[0].content[1]"),
        ("https://example.com/cat.png", "messages[0].content[1]"),                 # fetching is off
    ]
    for url, param in cases:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
        with pytest.raises(openai.BadRequestError) as e:
            vclient.chat.completions.create(model="tiny-idefics3", messages=msgs, max_tokens=4)
        err = e.value.body
        assert err["param"] == param, (url, err)
        assert err["message"] and err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        vclient.chat.completions.create(model="smollm2-135m-instruct", max_tokens=4,
                                        messages=[image_message(png_bytes(3, 32, 32))])
    assert e.value.body["param"] == "messages[0].content[1]"
    assert "image" in e.value.body["message"]


@pytest.mark.heavy
@pytest.mark.parametrize("family", FAMILIES)
def test_answer_is_transformers_greedy_answer(vclient, vlm_stack, family):
    """What the user gets is what transformers computes from the same checkpoint folder."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    png = png_bytes(5, 120, 80)
    folder = vlm_stack.hf[family]
    processor = tinyvlm.load_hf_processor(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, torch_dtype=torch.float32).eval()
    conv = [{"role": "user", "content": [{"type": "text", "text": PROMPT}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    inputs = processor(text=prompt, images=[image], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    want = processor.tokenizer.decode(new, skip_special_tokens=True)

    for stream in (False, True):
        r = vclient.chat.completions.create(model=f"tiny-{family}", messages=[image_message(png)], max_tokens=32,
                                            temperature=0, stream=stream)
        got = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
        assert got == want, (stream, got, want)
    assert len(new) >= 8, "transformers' answer is too short to prove anything"
