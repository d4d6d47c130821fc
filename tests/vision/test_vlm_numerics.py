"""Image-conditioned numbers against transformers: the tiny Idefics3 and InternVL checkpoints
(tinyvlm.py), converted, their vision encoder run by npuflow.engine.vision and its embeddings
written over the image-token positions with the CPU engine's prefill(embeds=...), compared with
the HF model's forward pass on the HF processor's input_ids and pixel_values (all positions,
the tolerance of tests/convert/test_convert_transformers.py) and with model.generate's greedy
tokens (32 of them, token for token), for one image, two images in one message and images in
two different turns."""
import numpy as np
import pytest

import tinyvlm

pytestmark = pytest.mark.heavy

N_TOKENS = 32


def _image(seed: int, width: int, height: int):
    from PIL import Image
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: resampling filters see real structure, not only noise
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _messages(case: str):
    img, txt = {"type": "image"}, lambda t: {"type": "text", "text": t}
    if case == "one image":
        return [{"role": "user", "content": [img, txt("What is in this picture?")]}], [_image(0, 70, 50)]
    if case == "two images in one message":
        return ([{"role": "user", "content": [img, txt("and"), img, txt("Describe the image.")]}],
                [_image(1, 40, 90), _image(2, 64, 64)])
    return ([{"role": "user", "content": [img, txt("What is in this picture?")]},
             {"role": "assistant", "content": [txt("A cat sits on a red mat.")]},
             {"role": "user", "content": [txt("And here?"), img]}],
            [_image(3, 100, 30), _image(4, 20, 20)])


CASES = ["one image", "two images in one message", "images in two turns"]
_FAMILIES = {"idefics3": "Idefics3ForConditionalGeneration", "internvl": "InternVLForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(_FAMILIES))
def family(request, tiny_idefics3_dir, tiny_internvl_dir, tiny_idefics3_pkg, tiny_internvl_pkg):
    import torch
    import transformers

    torch.manual_seed(0)
    name = request.param
    folder, pkg = {"idefics3": (tiny_idefics3_dir, tiny_idefics3_pkg),
                   "internvl": (tiny_internvl_dir, tiny_internvl_pkg)}[name]
    model, info = getattr(transformers, _FAMILIES[name]).from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return name, model.eval(), tinyvlm.load_hf_processor(folder), pkg


def _hf_inputs(processor, case):
    messages, images = _messages(case)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, images=images, return_tensors="pt"), len(images)


def test_tiny_folders_load_in_transformers(family):
    name, model, processor, pkg = family
    spec = pkg.extra["vision"]
    assert spec["family"] == name and spec["tokens_per_tile"] == tinyvlm.TOKENS_PER_TILE
    assert spec["image_token_id"] == model.config.image_token_id
    assert pkg.dims.vocab == model.config.text_config.vocab_size


@pytest.mark.parametrize("case", CASES)
def test_logits_and_greedy_match_transformers(family, case, monkeypatch):
    import torch
    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder

    name, model, processor, pkg = family
    inputs, n_images = _hf_inputs(processor, case)
    ids = inputs["input_ids"][0].numpy()
    S = pkg.extra["vision"]["tile_size"]
    pixels = inputs["pixel_values"].numpy().reshape(-1, 3, S, S).astype(np.float32)
    if name == "idefics3":     # tiles are full (no padding), as npuflow's preprocessing makes them
        assert bool(inputs["pixel_attention_mask"].all())

    rows = np.flatnonzero(ids == pkg.extra["vision"]["image_token_id"])
    assert len(rows) == len(pixels) * tinyvlm.TOKENS_PER_TILE and len(pixels) > n_images   # tiled

    encoder = open_vision_encoder(pkg)
    engine = CpuEngine(pkg, max_slots=2, context_length=len(ids) + N_TOKENS + 1)
    try:
        embeds = encoder.encode(pixels)
        assert embeds.shape == (len(rows), pkg.dims.hidden)
        got = engine.prefill(0, ids.tolist(), all_logits=True, embeds=(rows, embeds))

        with torch.no_grad():
            want = model(**inputs).logits[0].numpy()
        assert got.shape == want.shape
        err = np.abs(got - want).max()
        assert err <= 1e-3 * np.abs(want).max(), f"{name} {case}: max |logit diff| {err:.3g}"
        # the images matter: without their embeddings the logits after them are far off
        blind = engine.prefill(1, ids.tolist(), all_logits=True)
        engine.release(1)
        # prefill pieces that cut through images give the same numbers
        import npuflow.engine.cpu as cpu
        monkeypatch.setattr(cpu, "PREFILL_CHUNK", 37)
        pieces = engine.prefill(1, ids.tolist(), all_logits=True, embeds=(rows, embeds))
        monkeypatch.undo()
        engine.release(1)
        assert np.abs(pieces - want).max() <= 1e-3 * np.abs(want).max()
        assert np.abs(blind[rows[-1]:] - want[rows[-1]:]).max() > 100 * max(err, 1e-5)

        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        hf_tokens = out[0, len(ids):].tolist()
        assert len(hf_tokens) == N_TOKENS
        # min_new_tokens keeps generate from stopping early by masking the end tokens; do the same
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])

        def pick(logits):
            logits = logits.copy()
            logits[eos] = -np.inf
            return int(np.argmax(logits))

        tokens = [pick(got[-1])]
        while len(tokens) < N_TOKENS:
            tokens.append(pick(engine.decode([0], [tokens[-1]])[0]))
        assert tokens == hf_tokens, f"{name} {case}: greedy tokens differ"
    finally:
        engine.close()
        encoder.close()
