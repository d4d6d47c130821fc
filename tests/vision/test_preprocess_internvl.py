"""InternVL (HF) preprocessing and prompt expansion against transformers' InternVLProcessor
(GotOcr2ImageProcessorPil with crop_to_patches): pixel values within 1e-5 in the same tile order,
the same expanded text and token ids, for the tiny checkpoint's settings and InternVL3-1B's."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import tinyvlm
from npuflow.vision import VisionSpec, image_prompt, image_tokens, preprocess, tile_count
from npuflow.vision.internvl import best_grid
from npuflow.vision.settings import read_hf_vision

pytestmark = pytest.mark.heavy

SIZES = [(1, 1), (5, 3), (3, 5), (28, 28), (56, 28), (84, 84), (97, 61), (700, 300), (300, 700),
         (448, 448), (896, 448), (1000, 10), (10, 1000), (1344, 896), (2000, 1999)]
# InternVL3-1B-hf's preprocessor_config.json (crop_to_patches false there: InternVLProcessor turns it on)
INTERNVL3_PREPROCESSOR = {
    "crop_size": None, "crop_to_patches": False, "data_format": "channels_first", "default_to_square": True,
    "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "GotOcr2ImageProcessorFast",
    "image_std": [0.229, 0.224, 0.225], "max_patches": 12, "min_patches": 1, "processor_class": "InternVLProcessor",
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 448, "width": 448}}


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 7919 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _internvl3_folder(tiny: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """The tiny folder with InternVL3-1B's vision geometry and processor files (tokenizer kept)."""
    shutil.copytree(tiny, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["vision_config"].update(image_size=[448, 448], patch_size=[14, 14])
    cfg["image_seq_length"] = 256
    (dest / "config.json").write_text(json.dumps(cfg))
    (dest / "preprocessor_config.json").write_text(json.dumps(INTERNVL3_PREPROCESSOR))
    (dest / "processor_config.json").write_text(json.dumps({"image_seq_length": 256, "processor_class": "InternVLProcessor"}))
    return dest


@pytest.fixture(scope="module", params=["tiny", "internvl3"])
def setup(request, tiny_internvl_dir, tmp_path_factory):
    from tokenizers import Tokenizer

    folder = tiny_internvl_dir
    if request.param == "internvl3":
        folder = _internvl3_folder(tiny_internvl_dir, tmp_path_factory.mktemp("internvl3") / "hf")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "config.json").read_text())
    spec = VisionSpec.from_manifest(read_hf_vision(folder, cfg, tok))
    if request.param == "internvl3":
        assert (spec.tile_size, spec.tokens_per_tile, spec.processor["max_patches"]) == (448, 256, 12)
    return spec, tinyvlm.load_hf_processor(folder), tok


def _expand(spec: VisionSpec, text: str, sizes, detail: str) -> str:
    parts = text.split(spec.image_token)
    assert len(parts) == len(sizes) + 1
    out = parts[0]
    for (w, h), rest in zip(sizes, parts[1:]):
        out += image_prompt(spec, w, h, detail) + rest
    return out


def _hf(processor, text: str, images, detail: str):
    kwargs = {"crop_to_patches": False} if detail == "low" else {}
    return processor(text=[text], images=images, return_text_replacement_offsets=True, **kwargs)


@pytest.mark.parametrize("detail", ["auto", "low"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_one_image_matches_the_processor(setup, size, detail):
    spec, processor, tok = setup
    img = _image(*size)
    text = "<|im_start|>user\n<IMG_CONTEXT>\nWhat is in this picture?<|im_end|>\n<|im_start|>assistant\n"
    ref = _hf(processor, text, [img], detail)
    assert image_prompt(spec, *size, detail) == ref["text_replacement_offsets"][0][0]["replacement"]
    expected = np.stack([np.asarray(p) for p in ref["pixel_values"]])
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
    text = ("<|im_start|>user\n<IMG_CONTEXT>\n<IMG_CONTEXT>\nCompare these.<|im_end|>\n"
            "<|im_start|>assistant\nTwo.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nAnd this?<|im_end|>\n")
    ref = _hf(processor, text, images, "low" if detail == "low" else "auto")
    ids = tok.encode(_expand(spec, text, sizes, detail), add_special_tokens=True).ids
    assert ids == list(ref["input_ids"][0])
    ours = np.concatenate([preprocess(spec, im, detail) for im in images])
    np.testing.assert_allclose(ours, np.stack([np.asarray(p) for p in ref["pixel_values"]]), rtol=0, atol=1e-5)


def test_grid_choice_matches_transformers():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    rng = np.random.default_rng(3)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 3000, (300, 2))] + [(448 * c, 448 * r) for c in range(1, 5)
                                                                             for r in range(1, 5)]
    for least, most in ((1, 12), (1, 6), (2, 9), (1, 40)):
        for w, h in sizes:
            assert best_grid(w, h, 448, least, most) == get_optimal_tiled_canvas((h, w), (448, 448), least, most)
