"""HF safetensors folder -> package, checked against the numpy reference (no torch needed)."""
import numpy as np
import pytest

import reference as ref
import tinymodels
from npuflow.convert import convert
from npuflow.engine.cpu import CpuEngine

IDS = list(range(3, 60))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_hf_logits_match_numpy_reference(tmp_path, arch, dtype):
    w, cfg = tinymodels.write_hf(tmp_path / "ckpt", arch, dtype=dtype)
    pkg = convert(tmp_path / "ckpt", tmp_path / "pkg")
    want = ref.forward(w, cfg, IDS, "half")
    got = CpuEngine(pkg).prefill(0, IDS, all_logits=True)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert pkg.eos_token_ids[0] == 2 and pkg.chat_template == tinymodels.CHAT_TEMPLATE
    assert pkg.architecture == arch


def test_hf_and_gguf_agree(tmp_path, tiny_gguf):
    """The same weights through both readers give the same logits (GGUF llama Q/K are permuted)."""
    tinymodels.write_hf(tmp_path / "ckpt", "llama")
    a = CpuEngine(convert(tmp_path / "ckpt", tmp_path / "a")).prefill(0, IDS, all_logits=True)
    b = CpuEngine(convert(tiny_gguf("llama"), tmp_path / "b")).prefill(0, IDS, all_logits=True)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
