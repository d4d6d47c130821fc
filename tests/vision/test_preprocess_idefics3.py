"""Idefics3 / SmolVLM preprocessing and prompt expansion against transformers' Idefics3Processor
(Idefics3ImageProcessorPil): pixel values within 1e-5 in the same tile order, the same expanded
text, the same token ids, for the tiny checkpoint's settings and SmolVLM-256M's real ones."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import tinyvlm
from npuflow.vision import VisionSpec, image_prompt, image_tokens, preprocess, tile_count
from npuflow.vision.settings import read_hf_vision

pytestmark = pytest.mark.heavy

SIZES = [(1, 1), (5, 3), (3, 5), (32, 32), (64, 32), (128, 128), (97, 61), (700, 300), (300, 700),
         (512, 512), (1024, 512), (1000, 10), (10, 1000), (2048, 1536)]
# SmolVLM-256M-Instruct's preprocessor_config.json and its vision / connector settings
SMOLVLM_PREPROCESSOR = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Idefics3ImageProcessor",
    "image_std": [0.5, 0.5, 0.5], "max_image_size": {"longest_edge": 512}, "processor_class": "Idefics3Processor",
    "resample": 1, "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048}}


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 7919 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _smolvlm_folder(tiny: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """The tiny folder with SmolVLM-256M's vision geometry and processor files (tokenizer kept)."""
    shutil.copytree(tiny, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["scale_factor"] = 4
    cfg["vision_config"].update(image_size=512, patch_size=16)
    (dest / "config.json").write_text(json.dumps(cfg))
    (dest / "preprocessor_config.json").write_text(json.dumps(SMOLVLM_PREPROCESSOR))
    (dest / "processor_config.json").write_text(json.dumps({"image_seq_len": 64, "processor_class": "Idefics3Processor"}))
    return dest


@pytest.fixture(scope="module", params=["tiny", "smolvlm"])
def setup(request, tiny_idefics3_dir, tmp_path_factory):
    from tokenizers import Tokenizer

    folder = tiny_idefics3_dir
    if request.param == "smolvlm":
        folder = _smolvlm_folder(tiny_idefics3_dir, tmp_path_factory.mktemp("smolvlm") / "hf")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "config.json").read_text())
    spec = VisionSpec.from_manifest(read_hf_vision(folder, cfg, tok))
    if request.param == "smolvlm":
        assert (spec.tile_size, spec.tokens_per_tile, spec.processor["longest_edge"]) == (512, 64, 2048)
    return spec, tinyvlm.load_hf_processor(folder), tok


def _expand(spec: VisionSpec, text: str, sizes, detail: str) -> str:
    parts = text.split(spec.image_token)
    assert len(parts) == len(sizes) + 1
    out = parts[0]
    for (w, h), rest in zip(sizes, parts[1:]):
        out += image_prompt(spec, w, h, detail) + rest
    return out


def _hf(processor, text: str, images, detail: str):
    kwargs = {"do_image_splitting": False} if detail == "low" else {}
    return processor(text=[text], images=[images], return_text_replacement_offsets=True, **kwargs)


@pytest.mark.parametrize("detail", ["auto", "low"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_one_image_matches_the_processor(setup, size, detail):
    spec, processor, tok = setup
    img = _image(*size)
    text = "User:<image>What is in this picture?<end_of_utterance>\nAssistant:"
    ref = _hf(processor, text, [img], detail)
    assert image_prompt(spec, *size, detail) == ref["text_replacement_offsets"][0][0]["replacement"]
    expected = np.asarray(ref["pixel_values"])[0]
    ours = preprocess(spec, img, detail)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert len(ours) == tile_count(spec, *size, detail)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    ids = tok.encode(_expand(spec, text, [size], detail), add_special_tokens=True).ids
    assert ids == list(ref["input_ids"][0])
    assert ids.count(spec.image_token_id) == image_tokens(spec, *size, detail)


@pytest.mark.parametrize("detail", ["auto", "high", "low"])
def test_two_images_and_two_turns(setup, detail):
    spec, processor, tok = setup
    sizes = [(700, 300), (40, 90), (1, 1)]
    images = [_image(*s) for s in sizes]
    text = ("User:<image><image>Compare these.<end_of_utterance>\nAssistant: Two.<end_of_utterance>\n"
            "User:And this one?<image><end_of_utterance>\nAssistant:")
    ref = _hf(processor, text, images, "low" if detail == "low" else "auto")
    ids = tok.encode(_expand(spec, text, sizes, detail), add_special_tokens=True).ids
    assert ids == list(ref["input_ids"][0])
    ours = np.concatenate([preprocess(spec, im, detail) for im in images])
    frames = np.asarray(ref["pixel_values"])[0][: len(ours)]        # the rest is the batch's padding
    assert np.asarray(ref["pixel_attention_mask"])[0][len(ours):].sum() == 0
    np.testing.assert_allclose(ours, frames, rtol=0, atol=1e-5)
