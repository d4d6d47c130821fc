"""GGUF -> package: every supported architecture and tensor type against a numpy forward pass."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

import reference as ref
import tinymodels
from npuflow.convert import ConvertError, convert, main
from npuflow.engine.cpu import CpuEngine
from npuflow.models.package import load_package

IDS = list(range(3, 70))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("qtype", ["F32", "F16", "Q4_0", "Q4_1", "Q8_0"])
def test_logits_match_numpy_reference(tiny_gguf, tmp_path, arch, qtype):
    src = tiny_gguf(arch, qtype)
    pkg = convert(src, tmp_path / "pkg")
    w, cfg, rotary = ref.gguf_weights(src)
    want = ref.forward(w, cfg, IDS, rotary)
    eng = CpuEngine(pkg, max_slots=2)
    got = eng.prefill(0, IDS, all_logits=True)
    eng.close()
    # float weights: exact up to float rounding; quantized: onnxruntime quantizes activations to
    # int8 (as llama.cpp does), about 1% of the logit range
    tol = 1e-3 if qtype in ("F32", "F16") else 0.03
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("embed", ["Q4_0", "Q4_1", "Q8_0", "F16"])
def test_embedding_types(tiny_gguf, tmp_path, embed):
    src = tiny_gguf("qwen3", "Q8_0", embed)
    pkg = convert(src, tmp_path / "pkg")
    w, cfg, rotary = ref.gguf_weights(src)
    want = ref.forward(w, cfg, IDS, rotary)
    got = CpuEngine(pkg).prefill(0, IDS, all_logits=True)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


def test_manifest_and_tokenizer(tiny_gguf, tmp_path):
    pkg = convert(tiny_gguf("llama"), tmp_path / "pkg", model_id="tiny")
    assert pkg.id == "tiny" and pkg.architecture == "llama" and pkg.engine == "cpu"
    assert pkg.eos_token_ids[0] == 2 and 0 in pkg.eos_token_ids
    assert pkg.bos_token_id is None
    assert pkg.chat_template == tinymodels.CHAT_TEMPLATE
    assert pkg.dims.vocab == pkg.dims.vocab and pkg.context_length == 256
    sums = pkg.extra["checksums"]
    assert set(sums) == set(pkg.files.values())
    ours = Tokenizer.from_file(str(pkg.tokenizer_path))
    theirs = tinymodels.tiny_tokenizer()
    text = "<|im_start|>user\nHello, world! 12345 quick foxes<|im_end|>\n"
    assert ours.encode(text).ids == theirs.encode(text).ids
    assert ours.encode("<|im_end|>").ids == [2]
    assert ours.decode(ours.encode(text).ids, skip_special_tokens=True) == "user\nHello, world! 12345 quick foxes\n"


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "m.gguf"
    tinymodels.write_gguf(path, "llama", arch_name="falcon")
    with pytest.raises(ConvertError, match="unsupported architecture 'falcon'"):
        convert(path, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]     # no temp directory left behind


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "m.gguf"
    tinymodels.write_gguf(path, "llama", "Q5_0")
    with pytest.raises(ConvertError, match="unsupported type Q5_0"):
        convert(path, tmp_path / "pkg")


def test_not_a_model(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"nope")
    with pytest.raises(ConvertError, match="not a GGUF file"):
        convert(tmp_path / "x.gguf", tmp_path / "pkg")


def test_refuses_existing_output(tiny_gguf, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "keep").write_text("x")
    with pytest.raises(ConvertError, match="already exists"):
        convert(tiny_gguf("llama"), tmp_path / "pkg")
    assert convert(tiny_gguf("llama"), tmp_path / "pkg", overwrite=True).id


def test_cli(tiny_gguf, tmp_path, capsys):
    assert main([str(tiny_gguf("qwen2")), str(tmp_path / "pkg"), "--id", "q"]) == 0
    assert load_package(tmp_path / "pkg").id == "q"
    bad = tmp_path / "m.gguf"
    tinymodels.write_gguf(bad, "llama", arch_name="gpt2")
    assert main([str(bad), str(tmp_path / "pkg2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("npuflow convert: error:") and "gpt2" in err[-1]
    assert json.loads((tmp_path / "pkg" / "manifest.json").read_text())["architecture"] == "qwen2"
