"""The vision encoder graphs (npuflow/convert/vision_*.py) against transformers' get_image_features,
and the CPU vision encoder runtime (npuflow/engine/vision.py) on converted tiny packages.

Heavy tests build checkpoints with transformers (random weights, perturbed so that zero-initialised
CLS tokens, position embeddings and unit norms are not trivially zero or one), save them with
save_pretrained and read them back through the converter's own safetensors reader."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from npuflow.convert.hf_source import _SafeTensors
from npuflow.convert.spec import ConvertError
from npuflow.convert.vision_graph import build_vision_graph, vision_shape
from npuflow.engine.base import EngineError
from npuflow.engine.vision import VisionEncoder, open_vision_encoder

ATOL = 1e-4
TEXT = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _graph(folder: pathlib.Path, family: str) -> onnx.ModelProto:
    cfg = json.loads((folder / "config.json").read_text())
    steps = []
    model = build_vision_graph(family, cfg, _SafeTensors(folder).get, lambda what, pct: steps.append(what))
    assert steps and steps[-1].startswith("vision")
    onnx.checker.check_model(model)
    return model


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def _reference(folder: pathlib.Path, family: str, px: np.ndarray) -> np.ndarray:
    """transformers' image features for the tiles px, [N * T, hidden]."""
    import torch
    from transformers import Idefics3ForConditionalGeneration, InternVLForConditionalGeneration

    cls = Idefics3ForConditionalGeneration if family == "idefics3" else InternVLForConditionalGeneration
    model = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        x = torch.from_numpy(px)
        if family == "idefics3":
            mask = torch.ones(1, px.shape[0], px.shape[2], px.shape[3], dtype=torch.bool)
            out = model.get_image_features(x[None], pixel_attention_mask=mask).pooler_output[0]
        else:
            out = model.get_image_features(x).pooler_output
    return out.reshape(-1, out.shape[-1]).numpy()


def _save_hf(folder: pathlib.Path, family: str, vision: dict, **top) -> pathlib.Path:
    """A random checkpoint of `family` with these vision settings, saved with save_pretrained."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, InternVLConfig,
                              InternVLForConditionalGeneration)

    torch.manual_seed(0)
    if family == "idefics3":
        model = Idefics3ForConditionalGeneration(Idefics3Config(
            vision_config=vision, text_config=dict(model_type="llama", **TEXT), image_token_id=127, **top))
    else:
        model = InternVLForConditionalGeneration(InternVLConfig(
            vision_config=vision, text_config=dict(model_type="qwen2", **TEXT), image_token_id=127, **top))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def _check(folder: pathlib.Path, family: str, tiles: tuple[int, ...] = (1, 3)) -> onnx.ModelProto:
    model = _graph(folder, family)
    shape = vision_shape(model)
    sess = _session(model)
    for n in tiles:
        px = _pixels(n, shape.tile_size, seed=n)
        got = sess.run(None, {"pixel_values": px})[0]
        assert got.shape == (n, shape.tokens_per_tile, shape.hidden)
        want = _reference(folder, family, px)
        assert want.shape == (n * shape.tokens_per_tile, shape.hidden)
        err = float(np.abs(got.reshape(want.shape) - want).max())
        assert err < ATOL, f"{family} N={n}: max abs error {err} (reference max {np.abs(want).max()})"
        assert np.abs(want).max() > 0.1      # not a trivially small output
    return model


# -- the tiny checkpoints every vision test uses (tests/vision/tinyvlm.py) -------------------------

@pytest.mark.heavy
@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_tiny_checkpoint_matches_transformers(family, tiny_idefics3_dir, tiny_internvl_dir):
    folder = tiny_idefics3_dir if family == "idefics3" else tiny_internvl_dir
    model = _check(folder, family)
    assert dataclasses.astuple(vision_shape(model)) == ((32, 4, 64) if family == "idefics3" else (28, 4, 64))


# -- transformers' own save_pretrained names and settings ----------------------------------------

@pytest.mark.heavy
def test_idefics3_saved_by_transformers(tmp_path):
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=8, hidden_act="gelu_pytorch_tanh")
    _check(_save_hf(tmp_path / "idefics3", "idefics3", vision, scale_factor=4), "idefics3")


@pytest.mark.heavy
@pytest.mark.parametrize("variant", [
    dict(),
    dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=True, use_mean_pooling=False),
    dict(use_mean_pooling=False, feature_layer=-2, hidden_act="quick_gelu"),
    dict(feature_layer=1, projector_act="silu"),
], ids=["default", "rms_qknorm_bias_layernorm", "layer_minus2", "layer1"])
def test_internvl_saved_by_transformers(tmp_path, variant):
    variant = dict(variant)
    top = {"vision_feature_layer": variant.pop("feature_layer", -1),
           "projector_hidden_act": variant.pop("projector_act", "gelu")}
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  image_size=56, patch_size=14, **variant)
    _check(_save_hf(tmp_path / "internvl", "internvl", vision, **top), "internvl")


# -- the real models' widths (a few layers) --------------------------------------------------------

@pytest.mark.heavy
def test_smolvlm_256m_vision_size(tmp_path):
    """SmolVLM-256M's tower (768 wide, 12 heads, 512 px tiles of 16 px patches, scale 4 -> 64
    rows of 576), 2 of its 12 layers."""
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                  image_size=512, patch_size=16, hidden_act="gelu_pytorch_tanh")
    text = dict(TEXT, hidden_size=576, num_attention_heads=9, num_key_value_heads=3)
    folder = tmp_path / "smolvlm"
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(Idefics3Config(
        vision_config=vision, text_config=dict(model_type="llama", **text), image_token_id=127, scale_factor=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    del model
    graph = _check(folder, "idefics3")
    assert dataclasses.astuple(vision_shape(graph)) == (512, 64, 576)


@pytest.mark.heavy
def test_internvl3_1b_vision_size(tmp_path):
    """InternVL3-1B's InternViT-300M (1024 wide, 16 heads, 448 px tiles of 14 px patches, ratio
    0.5 -> 256 rows of 896), 2 of its 24 layers."""
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                  image_size=448, patch_size=14, attention_bias=True)
    folder = tmp_path / "internvl3"
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=vision, text_config=dict(model_type="qwen2", **dict(TEXT, hidden_size=896, num_attention_heads=14)),
        image_token_id=127))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    del model
    graph = _check(folder, "internvl", tiles=(1, 3))
    assert dataclasses.astuple(vision_shape(graph)) == (448, 256, 896)


# -- errors the converter reports -------------------------------------------------------------------

def test_unsupported_settings_are_convert_errors(tiny_internvl_dir):
    cfg = json.loads((tiny_internvl_dir / "config.json").read_text())
    get = _SafeTensors(tiny_internvl_dir).get
    with pytest.raises(ConvertError, match="unsupported vision family 'qwen2_5_vl'"):
        build_vision_graph("qwen2_5_vl", cfg, get)
    for change, message in [({"vision_feature_select_strategy": "full"}, "'full' is not supported"),
                            ({"vision_feature_layer": [-1, -2]}, "one layer index only"),
                            ({"vision_feature_layer": 5}, "out of range"),
                            ({"projector_hidden_act": "mish"}, "unsupported vision activation 'mish'")]:
        with pytest.raises(ConvertError, match=message):
            build_vision_graph("internvl", {**cfg, **change}, get)
    bigger = {**cfg, "vision_config": {**cfg["vision_config"], "image_size": [56, 56]}}
    with pytest.raises(ConvertError, match="position embeddings"):
        build_vision_graph("internvl", bigger, get)
    with pytest.raises(ConvertError, match="has no tensor 'model.vision_model.embeddings"):
        build_vision_graph("idefics3", cfg, get)


# -- the CPU vision encoder on converted packages (no torch) ----------------------------------------

@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_encoder_on_package(family, tiny_idefics3_pkg, tiny_internvl_pkg, tiny_idefics3_dir, tiny_internvl_dir):
    pkg = tiny_idefics3_pkg if family == "idefics3" else tiny_internvl_pkg
    folder = tiny_idefics3_dir if family == "idefics3" else tiny_internvl_dir
    enc = open_vision_encoder(pkg, threads=1)
    assert isinstance(enc, VisionEncoder)
    spec = enc.spec
    assert (spec.family, spec.tokens_per_tile, spec.hidden) == (family, 4, pkg.dims.hidden)
    px = _pixels(3, spec.tile_size, seed=7)
    rows = enc.encode(px)
    assert rows.shape == (3 * spec.tokens_per_tile, spec.hidden) and rows.dtype == np.float32
    # the package's graph is the one build_vision_graph makes from the checkpoint
    direct = _session(_graph(folder, family)).run(None, {"pixel_values": px})[0]
    np.testing.assert_allclose(rows, direct.reshape(rows.shape), rtol=0, atol=1e-6)
    # one tile at a time gives the same rows as the batch
    single = np.concatenate([enc.encode(px[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(single, rows, rtol=0, atol=1e-5)
    with pytest.raises(EngineError, match=r"takes pixels \[N, 3,"):
        enc.encode(px[:, :, :-1])
    with pytest.raises(EngineError, match="takes pixels"):
        enc.encode(px[:0])
    enc.close()
    with pytest.raises(EngineError, match="closed"):
        enc.encode(px)


def test_text_package_has_no_encoder(tiny_idefics3_pkg):
    text_only = dataclasses.replace(tiny_idefics3_pkg, extra={k: v for k, v in tiny_idefics3_pkg.extra.items()
                                                              if k != "vision"})
    assert open_vision_encoder(text_only) is None


def test_manifest_that_disagrees_with_the_graph(tiny_idefics3_pkg):
    from npuflow.models.package import PackageError

    section = dict(tiny_idefics3_pkg.extra["vision"], tokens_per_tile=5)
    bad = dataclasses.replace(tiny_idefics3_pkg, extra={**tiny_idefics3_pkg.extra, "vision": section})
    with pytest.raises(PackageError, match=r"the manifest says \[N, 3, 32, 32\] to \[N, 5, 64\]"):
        VisionEncoder(bad)


def test_ax_package_goes_to_the_ax_encoder(tiny_idefics3_pkg):
    """engine "ax" dispatches to npuflow.engine.ax_vision (which wants the package's vision axmodel)."""
    from npuflow.models.package import PackageError

    ax = dataclasses.replace(tiny_idefics3_pkg, engine="ax")
    with pytest.raises(PackageError, match="no vision axmodel"):
        open_vision_encoder(ax)
