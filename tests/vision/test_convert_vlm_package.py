"""What the converter writes for a vision-language folder (no torch needed)."""
import json
import shutil

import numpy as np
import pytest

import tinyvlm
from npuflow.convert import ConvertError, convert


@pytest.mark.parametrize("which", ["idefics3", "internvl"])
def test_package_has_vision_graph_and_section(which, tiny_idefics3_pkg, tiny_internvl_pkg):
    pkg = {"idefics3": tiny_idefics3_pkg, "internvl": tiny_internvl_pkg}[which]
    assert pkg.architecture == {"idefics3": "llama", "internvl": "qwen2"}[which]
    assert pkg.files["vision_model"] == "vision.onnx" and pkg.files["vision_model_data"] == "vision.onnx.data"
    m = json.loads((pkg.path / "manifest.json").read_text())
    for name in ("vision.onnx", "vision.onnx.data"):
        assert m["checksums"][name]["size"] == (pkg.path / name).stat().st_size
    v = pkg.extra["vision"]
    assert v["family"] == which and v["hidden"] == pkg.dims.hidden == 64
    assert v["tokens_per_tile"] == tinyvlm.TOKENS_PER_TILE
    assert v["tile_size"] == {"idefics3": tinyvlm.IDEFICS3_TILE, "internvl": tinyvlm.INTERNVL_TILE}[which]
    tok = json.loads((pkg.path / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert added[v["image_token"]] == v["image_token_id"]
    import onnxruntime as ort
    sess = ort.InferenceSession(str(pkg.file("vision_model")), providers=["CPUExecutionProvider"])
    S = v["tile_size"]
    out = sess.run(None, {v["input"]["name"]: np.zeros((2, 3, S, S), np.float32)})[0]
    assert out.shape == (2, v["tokens_per_tile"], v["hidden"]) and np.isfinite(out).all()


def test_text_model_of_a_vlm_is_the_checkpoints(tiny_idefics3_dir, tiny_idefics3_pkg):
    from safetensors.numpy import load_file
    w = load_file(str(tiny_idefics3_dir / "model.safetensors"))
    table = np.load(tiny_idefics3_pkg.file("embedding.weight"))
    assert np.array_equal(table, w["model.text_model.embed_tokens.weight"])
    assert tiny_idefics3_pkg.extra["source"]["format"] == "safetensors"


def test_unsupported_text_model_is_a_convert_error(tiny_internvl_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_internvl_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["text_config"]["model_type"] = "gemma"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="unsupported internvl text model 'gemma'"):
        convert(bad, tmp_path / "out")
    del cfg["text_config"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="no text_config"):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
