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


LEGACY = {"internvl": [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                       ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")],
          "idefics3": [("model.", "")]}


@pytest.mark.parametrize("which", ["idefics3", "internvl"])
def test_hub_tensor_names_convert_to_the_same_package(which, tiny_idefics3_dir, tiny_internvl_dir,
                                                      tiny_idefics3_pkg, tiny_internvl_pkg, tmp_path):
    """Checkpoints on the hub may carry the names of older transformers releases (InternVL's
    -hf repos: language_model.model.*, language_model.lm_head, vision_tower.*); they convert to
    the same graphs as transformers 5's names."""
    from safetensors.numpy import load_file, save_file

    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder
    src = {"idefics3": tiny_idefics3_dir, "internvl": tiny_internvl_dir}[which]
    ref = {"idefics3": tiny_idefics3_pkg, "internvl": tiny_internvl_pkg}[which]
    legacy = tmp_path / "legacy"
    shutil.copytree(src, legacy)
    w = load_file(str(legacy / "model.safetensors"))
    renamed = {}
    for name, t in w.items():
        for old, new in LEGACY[which]:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = t
    assert set(renamed) != set(w)
    save_file(renamed, str(legacy / "model.safetensors"))
    pkg = convert(legacy, tmp_path / "pkg", model_id="legacy")
    ids = list(range(5, 25))
    logits = [CpuEngine(p, max_slots=1, threads=1).prefill(0, ids) for p in (ref, pkg)]
    assert np.array_equal(logits[0], logits[1])
    S = ref.extra["vision"]["tile_size"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
    a, b = (open_vision_encoder(p, threads=1).encode(pixels) for p in (ref, pkg))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("which", ["idefics3", "internvl"])
def test_int8_vision_encoder(which, tiny_idefics3_dir, tiny_internvl_dir, tiny_idefics3_pkg, tiny_internvl_pkg,
                             tmp_path):
    """--int8-vision: the package's vision graph has int8 MatMuls, its files are checksummed, and
    its embeddings stay close to the float encoder's."""
    import onnx

    from npuflow.engine.vision import open_vision_encoder
    src = {"idefics3": tiny_idefics3_dir, "internvl": tiny_internvl_dir}[which]
    ref = {"idefics3": tiny_idefics3_pkg, "internvl": tiny_internvl_pkg}[which]
    pkg = convert(src, tmp_path / "int8", model_id="q", int8_vision=True)
    assert pkg.extra["vision"]["weights"] == "int8" and ref.extra["vision"]["weights"] == "float32"
    m = json.loads((pkg.path / "manifest.json").read_text())
    assert set(m["checksums"]) >= {pkg.files["vision_model"], pkg.files["vision_model_data"]}
    assert not (pkg.path / "vision.onnx").exists()
    ops = {n.op_type for n in onnx.load(str(pkg.file("vision_model")), load_external_data=False).graph.node}
    assert "MatMulInteger" in ops
    S = ref.extra["vision"]["tile_size"]
    pixels = np.random.default_rng(1).standard_normal((2, 3, S, S)).astype(np.float32)
    a, b = (open_vision_encoder(p, threads=1).encode(pixels) for p in (ref, pkg))
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert not np.array_equal(a, b) and cos > 0.99, cos
