"""A random-weight SmolVLM-256M-Instruct checkpoint (HF layout) for bench/vision.py.

The real model's dimensions and processor settings, weights drawn with numpy and saved with
safetensors (no torch needed to write it; speed does not depend on the values):
- vision: SigLIP-B/16 at 512 px (Idefics3 vision tower): 12 layers, hidden 768, 12 heads, mlp
  3072, patch 16 (1024 patches per tile), connector pixel shuffle scale_factor 4 -> 64 tokens per
  tile, projected to 576
- text: SmolLM2-135M (llama): hidden 576, 30 layers, 9 heads (head_dim 64), 3 KV heads, ffn 1536,
  vocab 49280, tied embeddings as the real checkpoint
- processor: size longest_edge 2048, max_image_size 512, image splitting on (a 512x512 image is
  resized to 2048x2048: 4x4 tiles + the global image = 17 tiles, 1088 image tokens)
The tokenizer is SmolLM2's own (taken from npuflow's cached default model package when present)
with SmolVLM's added tokens; the chat template is the SmolVLM shape of tests/vision/tinyvlm.py.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

VISION = dict(hidden=768, layers=12, heads=12, ffn=3072, image_size=512, patch=16, scale=4)
TEXT = dict(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49280,
            rope_theta=100000.0, max_pos=8192)
PROCESSOR = dict(longest_edge=2048, max_image_size=512, image_seq_len=64)
SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
            + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
VERSION = "1"   # bump when the checkpoint's layout changes: the cache folder is rebuilt


def _template() -> str:
    sys.path.insert(0, str(ROOT / "tests" / "vision"))
    try:
        from tinyvlm import IDEFICS3_TEMPLATE  # noqa: PLC0415 - the SmolVLM template shape
    finally:
        sys.path.pop(0)
    return IDEFICS3_TEMPLATE


def _base_tokenizer():
    """SmolLM2's tokenizer.json (npuflow's default model package), or a small BPE if absent."""
    from tokenizers import AddedToken, Tokenizer

    cache = pathlib.Path.home() / ".cache" / "npuflow" / "models"
    found = sorted(cache.glob("smollm2-135m-instruct-*/tokenizer.json"))
    if found:
        tok = Tokenizer.from_file(str(found[0]))
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from bpe_tokenizer import build_bpe_tokenizer  # noqa: PLC0415
        sys.path.pop(0)
        tok = build_bpe_tokenizer(None, ["The quick brown fox jumps over the lazy dog. " * 50], 2000)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def build_smolvlm256m(folder: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write the checkpoint to `folder` (kept when it holds this VERSION); returns the folder."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    stamp = folder / "bench-version"
    if stamp.is_file() and stamp.read_text() == VERSION and (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def mat(n, k):
        return rng.standard_normal((n, k), dtype=np.float32) * np.float32(1 / np.sqrt(k))

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def bias(n):
        return 0.02 * rng.standard_normal(n, dtype=np.float32)

    tok = _base_tokenizer()
    V, T = VISION, TEXT
    D, F, P = V["hidden"], V["ffn"], V["patch"]
    H, hd, nh, nkv, FF, vocab = T["hidden"], T["head_dim"], T["heads"], T["kv_heads"], T["ffn"], T["vocab"]
    assert tok.get_vocab_size() <= vocab, tok.get_vocab_size()
    pv = "model.vision_model."
    w = {pv + "embeddings.patch_embedding.weight":
         rng.standard_normal((D, 3, P, P), dtype=np.float32) * np.float32(1 / np.sqrt(3 * P * P)),
         pv + "embeddings.patch_embedding.bias": bias(D),
         pv + "embeddings.position_embedding.weight": 0.5 * rng.standard_normal(((V["image_size"] // P) ** 2, D), dtype=np.float32),
         pv + "post_layernorm.weight": norm(D), pv + "post_layernorm.bias": bias(D),
         "model.connector.modality_projection.proj.weight": mat(H, D * V["scale"] ** 2)}
    for i in range(V["layers"]):
        p = f"{pv}encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{n}.weight"], w[p + f"self_attn.{n}.bias"] = mat(D, D), bias(D)
        for n in ("layer_norm1", "layer_norm2"):
            w[p + f"{n}.weight"], w[p + f"{n}.bias"] = norm(D), bias(D)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = mat(F, D), bias(F)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = mat(D, F), bias(D)
    pt = "model.text_model."
    w[pt + "embed_tokens.weight"] = rng.standard_normal((vocab, H), dtype=np.float32)
    w[pt + "norm.weight"] = norm(H)
    for i in range(T["layers"]):
        p = f"{pt}layers.{i}."
        w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"] = norm(H), norm(H)
        w[p + "self_attn.q_proj.weight"] = mat(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = mat(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = mat(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = mat(H, nh * hd)
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = mat(FF, H), mat(FF, H)
        w[p + "mlp.down_proj.weight"] = mat(H, FF)
    image_id = tok.token_to_id("<image>")
    bos, eos = tok.token_to_id("<|im_start|>"), tok.token_to_id("<end_of_utterance>")
    stops = list(dict.fromkeys(tok.token_to_id(t) for t in ("<end_of_utterance>", "<|im_end|>", "<|endoftext|>")))
    pad = tok.token_to_id("<|endoftext|>")
    config = {
        "model_type": "idefics3", "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": image_id, "scale_factor": V["scale"], "tie_word_embeddings": True,
        "use_cache": True, "torch_dtype": "float32",
        "vision_config": {"model_type": "idefics3_vision", "hidden_size": D, "intermediate_size": F,
                          "num_hidden_layers": V["layers"], "num_attention_heads": V["heads"], "num_channels": 3,
                          "image_size": V["image_size"], "patch_size": P, "hidden_act": "gelu_pytorch_tanh",
                          "layer_norm_eps": 1e-6},
        "text_config": {"model_type": "llama", "hidden_size": H, "num_hidden_layers": T["layers"],
                        "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": hd,
                        "intermediate_size": FF, "vocab_size": vocab, "max_position_embeddings": T["max_pos"],
                        "rms_norm_eps": 1e-5, "rope_theta": T["rope_theta"], "hidden_act": "silu",
                        "tie_word_embeddings": True, "attention_bias": False, "bos_token_id": bos,
                        "eos_token_id": eos, "pad_token_id": pad, "torch_dtype": "float32"},
    }
    preprocessor = {
        "image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
        "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": PROCESSOR["longest_edge"]},
        "resample": 1, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True,
        "do_image_splitting": True, "max_image_size": {"longest_edge": PROCESSOR["max_image_size"]},
    }
    template = _template()
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
            "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "add_bos_token": False, "add_eos_token": False, "model_max_length": T["max_pos"],
            "processor_class": "Idefics3Processor", "chat_template": template}
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del w
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos, "eos_token_id": stops, "pad_token_id": pad}, indent=2))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    (folder / "chat_template.jinja").write_text(template)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Idefics3Processor", "image_seq_len": PROCESSOR["image_seq_len"]}, indent=2))
    stamp.write_text(VERSION)
    return folder
