"""npuflow.vision.settings.read_hf_vision and VisionSpec: the manifest's vision section from HF
folders (the tiny checkpoints, SmolVLM-256M's and InternVL3-1B's real configs), and one-line
ConvertErrors for missing or inconsistent files. No torch needed."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from npuflow.convert.spec import ConvertError
from npuflow.models.package import PackageError
from npuflow.vision import VisionSpec, image_prompt, image_tokens, preprocess, tile_count
from npuflow.vision.settings import read_hf_vision


def _read(folder: pathlib.Path, tokenizer=True) -> dict:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json")) if tokenizer else None
    return read_hf_vision(folder, json.loads((folder / "config.json").read_text()), tok)


def _edit(folder: pathlib.Path, name: str, **changes) -> None:
    data = json.loads((folder / name).read_text())
    data.update(changes)
    (folder / name).write_text(json.dumps(data))


def test_tiny_idefics3(tiny_idefics3_dir):
    section = _read(tiny_idefics3_dir)
    tok = Tokenizer.from_file(str(tiny_idefics3_dir / "tokenizer.json"))
    assert section["family"] == "idefics3" and section["image_token"] == "<image>"
    assert section["image_token_id"] == tok.token_to_id("<image>")
    assert (section["tile_size"], section["tokens_per_tile"], section["hidden"]) == (32, 4, 64)
    assert section["tokens"] == {"fake_image": "<fake_token_around_image>", "global_image": "<global-img>"}
    p = section["processor"]
    assert (p["longest_edge"], p["max_image_size"], p["resample"], p["do_image_splitting"]) == (128, 32, 1, True)
    assert section["input"] == {"name": "pixel_values", "layout": "NCHW", "dtype": "float32"}
    assert VisionSpec.from_manifest(json.loads(json.dumps(section))).to_manifest() == section


def test_tiny_internvl(tiny_internvl_dir):
    section = _read(tiny_internvl_dir)
    tok = Tokenizer.from_file(str(tiny_internvl_dir / "tokenizer.json"))
    assert section["family"] == "internvl" and section["image_token"] == "<IMG_CONTEXT>"
    assert section["image_token_id"] == tok.token_to_id("<IMG_CONTEXT>")
    assert (section["tile_size"], section["tokens_per_tile"], section["hidden"]) == (28, 4, 64)
    assert section["tokens"] == {"start": "<img>", "end": "</img>"}
    p = section["processor"]
    assert (p["size"], p["min_patches"], p["max_patches"], p["resample"], p["crop_to_patches"]) == (28, 1, 12, 3, True)
    assert p["image_mean"] == [0.485, 0.456, 0.406]


def test_real_model_geometry(tmp_path):
    smol = tmp_path / "smolvlm"
    smol.mkdir()
    (smol / "config.json").write_text(json.dumps({
        "model_type": "idefics3", "image_token_id": 49190, "scale_factor": 4,
        "vision_config": {"image_size": 512, "patch_size": 16}, "text_config": {"hidden_size": 576}}))
    (smol / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512}, "resample": 1}))
    s = _read(smol, tokenizer=False)
    assert (s["image_token_id"], s["tile_size"], s["tokens_per_tile"], s["hidden"]) == (49190, 512, 64, 576)
    intern = tmp_path / "internvl3"
    intern.mkdir()
    (intern / "config.json").write_text(json.dumps({
        "model_type": "internvl", "image_token_id": 151667, "downsample_ratio": 0.5,
        "vision_config": {"image_size": [448, 448], "patch_size": [14, 14]}, "text_config": {"hidden_size": 896}}))
    # transformers 5 writes the image processor inside processor_config.json
    (intern / "processor_config.json").write_text(json.dumps({
        "image_seq_length": 256, "image_processor": {"size": {"height": 448, "width": 448}, "max_patches": 12}}))
    s = _read(intern, tokenizer=False)
    assert (s["image_token_id"], s["tile_size"], s["tokens_per_tile"], s["hidden"]) == (151667, 448, 256, 896)
    assert s["processor"]["resample"] == 3 and s["processor"]["crop_to_patches"] is True


@pytest.mark.parametrize("case,message", [
    ("no_processor_files", "no preprocessor_config.json or processor_config.json"),
    ("bad_json", "not readable JSON"),
    ("seq_len", "image_seq_len is 5, config.json gives 4 tokens per tile"),
    ("token_id", "image_token_id 7 but the tokenizer's '<image>' is"),
    ("tile", "max_image_size 64 != vision image_size 32"),
    ("mean", "image_mean must be three numbers"),
    ("patch", "image_size 32 is not a multiple of patch_size 5"),
    ("family", "model_type 'llava' has no vision support"),
])
def test_errors_are_one_line(tiny_idefics3_dir, tmp_path, case, message):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_idefics3_dir, folder)
    if case == "no_processor_files":
        (folder / "preprocessor_config.json").unlink()
        (folder / "processor_config.json").unlink()
    elif case == "bad_json":
        (folder / "preprocessor_config.json").write_text("{not json")
    elif case == "seq_len":
        _edit(folder, "processor_config.json", image_seq_len=5)
    elif case == "token_id":
        _edit(folder, "config.json", image_token_id=7)
    elif case == "tile":
        _edit(folder, "preprocessor_config.json", max_image_size={"longest_edge": 64})
    elif case == "mean":
        _edit(folder, "preprocessor_config.json", image_mean=[0.5, 0.5])
    elif case == "patch":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["vision_config"]["patch_size"] = 5
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "family":
        _edit(folder, "config.json", model_type="llava")
    with pytest.raises(ConvertError) as e:
        _read(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_manifest_section_errors():
    good = {"family": "idefics3", "image_token": "<image>", "image_token_id": 3, "tile_size": 32,
            "tokens_per_tile": 4, "hidden": 64, "processor": {}, "tokens": {}}
    assert VisionSpec.from_manifest(good).output == "image_embeds"
    for bad, text in ((dict(good, family="llava"), "vision.family"), (dict(good, tile_size="32"), "vision.tile_size"),
                      (dict(good, image_token_id=True), "vision.image_token_id"), (dict(good, hidden=0), "positive"),
                      ({k: v for k, v in good.items() if k != "tokens"}, "vision.tokens")):
        with pytest.raises(PackageError, match=text):
            VisionSpec.from_manifest(bad)


@pytest.mark.parametrize("fixture", ["tiny_idefics3_dir", "tiny_internvl_dir"])
def test_counts_agree_with_prompt_and_pixels(fixture, request):
    spec = VisionSpec.from_manifest(_read(request.getfixturevalue(fixture)))
    for w, h in ((1, 1), (31, 200), (200, 31), (64, 64), (333, 100), (90, 90)):
        for detail in ("auto", "high", "low"):
            prompt = image_prompt(spec, w, h, detail)
            assert prompt.count(spec.image_token) == image_tokens(spec, w, h, detail)
            pixels = preprocess(spec, Image.new("RGB", (w, h), (255, 0, 128)), detail)
            assert pixels.shape == (tile_count(spec, w, h, detail), 3, spec.tile_size, spec.tile_size)
            assert pixels.dtype == np.float32
            if detail == "low":
                assert pixels.shape[0] == 1
    with pytest.raises(ValueError, match="detail"):
        image_prompt(spec, 10, 10, "medium")


@pytest.mark.parametrize("factor", [1 / 255, 1 / 127.5, 0.5, 0.017, 0.1234567, 1.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_pixels_equal_transformers_float_steps_bit_for_bit(factor, normalize):
    from npuflow.vision.pixels import to_pixels

    rng = np.random.default_rng(5)
    tiles = [Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)) for _ in range(3)]
    tiles[0].putdata([(v, v, v) for v in range(63)])
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    p = {"do_rescale": True, "rescale_factor": factor, "do_normalize": normalize, "image_mean": mean, "image_std": std}
    # transformers' numpy rescale then normalize: float64 product cast to float32, then float32 (x - m) / s
    want = np.stack([np.asarray(t).transpose(2, 0, 1) for t in tiles]).astype(np.float64) * factor
    want = want.astype(np.float32)
    if normalize:
        want = (want - np.float32(mean).reshape(1, 3, 1, 1)) / np.float32(std).reshape(1, 3, 1, 1)
    got = to_pixels(tiles, p)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)
