"""Tiny random checkpoints made and run by Hugging Face transformers (torch CPU) as the reference."""
import json

import numpy as np
import pytest

import tinymodels
from npuflow.convert import convert
from npuflow.engine.cpu import CpuEngine

IDS = list(range(3, 80))


def _transformers_checkpoint(folder, arch: str):
    import torch
    import transformers

    torch.manual_seed(0)
    vocab = tinymodels.tiny_tokenizer().get_vocab_size()
    cfg_dict = tinymodels.hf_config(arch, vocab)
    cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}[arch]
    config = getattr(transformers, cls)(**{k: v for k, v in cfg_dict.items() if k not in ("model_type", "architectures")})
    if arch == "qwen2":
        config.attention_bias = True
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():       # default init is tiny; give every weight a visible scale
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 1 / np.sqrt(p.shape[-1])) + (1.0 if "norm" in name else 0))
    model.save_pretrained(folder, safe_serialization=True)
    tok = tinymodels.tiny_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": tinymodels.CHAT_TEMPLATE,
                                                              "eos_token": "<|im_end|>"}))
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0].numpy()
    return model, logits


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(tmp_path, arch):
    model, want = _transformers_checkpoint(tmp_path / "ckpt", arch)
    eng = CpuEngine(convert(tmp_path / "ckpt", tmp_path / "pkg"), max_slots=2)
    got = eng.prefill(0, IDS, all_logits=True)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    # incremental decoding in a second slot: prefill a prefix, then one token at a time
    eng.prefill(1, IDS[:40])
    for i in range(40, len(IDS)):
        step = eng.decode([1], [IDS[i]])[0]
        assert np.abs(step - want[i]).max() <= 1e-3 * np.abs(want).max()
