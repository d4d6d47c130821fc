"""Tiny random-weight checkpoints for tests: HF safetensors folders and GGUF files written here."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from bpe_tokenizer import SPECIALS, build_bpe_tokenizer
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = ("The quick brown fox jumps over the lazy dog. Hello, world! How are you today? "
        "Numbers like 12345 and 678 appear too. Small models are useful for tests of converters. ") * 20

SHAPES = {
    "llama": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128, tied=True, bias=False, qk_norm=False),
    "qwen2": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128, tied=False, bias=True, qk_norm=False),
    "qwen3": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, ffn=128, tied=True, bias=False, qk_norm=True),
}


def tiny_tokenizer():
    return build_bpe_tokenizer(None, [TEXT], 320)


def tiny_weights(arch: str, vocab: int, seed: int = 0) -> tuple[dict, dict]:
    """(HF-named float32 weights, reference cfg) for one architecture."""
    s = SHAPES[arch]
    rng = np.random.default_rng(seed)
    H, hd, nh, nkv, F = s["hidden"], s["head_dim"], s["heads"], s["kv_heads"], s["ffn"]
    mat = lambda n, k: rng.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32)  # noqa: E731
    norm = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    w = {"model.embed_tokens.weight": rng.normal(0, 1, (vocab, H)).astype(np.float32), "model.norm.weight": norm(H)}
    if not s["tied"]:
        w["lm_head.weight"] = mat(vocab, H)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = mat(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = mat(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = mat(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = mat(H, nh * hd)
        w[p + "mlp.gate_proj.weight"] = mat(F, H)
        w[p + "mlp.up_proj.weight"] = mat(F, H)
        w[p + "mlp.down_proj.weight"] = mat(H, F)
        if s["bias"]:
            for n, d in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
        if s["qk_norm"]:
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
    cfg = {"hidden": H, "heads": nh, "kv_heads": nkv, "head_dim": hd, "eps": 1e-6, "theta": 10000.0,
           "layers": s["layers"]}
    return w, cfg


def hf_config(arch: str, vocab: int) -> dict:
    s = SHAPES[arch]
    return {"model_type": arch, "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                                    "qwen3": "Qwen3ForCausalLM"}[arch]],
            "hidden_size": s["hidden"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
            "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"], "intermediate_size": s["ffn"],
            "vocab_size": vocab, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "hidden_act": "silu", "tie_word_embeddings": s["tied"], "attention_bias": False,
            "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32", "use_sliding_window": False}


def write_hf(folder: pathlib.Path, arch: str, seed: int = 0, dtype=np.float32) -> tuple[dict, dict]:
    """A checkpoint folder (config.json, model.safetensors, tokenizer files); returns (weights, cfg)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    vocab = tok.get_vocab_size()
    w, cfg = tiny_weights(arch, vocab, seed)
    save_file({k: v.astype(dtype) for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(arch, vocab)))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": None,
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    return {k: v.astype(dtype).astype(np.float32) for k, v in w.items()}, cfg


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate-half Q/K rows -> the interleaved-pairs order GGUF llama files use."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(path: pathlib.Path, arch: str, qtype: str = "F32", embed_qtype: str | None = None,
               seed: int = 0, arch_name: str | None = None) -> None:
    """A GGUF file of the tiny model: matrices in qtype (F32, F16, Q4_0, Q4_1, Q8_0), norms F32."""
    import gguf
    from gguf.quants import quantize

    tok = tiny_tokenizer()
    tj = json.loads(tok.to_str())
    vocab = tok.get_vocab_size()
    w, cfg = tiny_weights(arch, vocab, seed)
    s = SHAPES[arch]
    wr = gguf.GGUFWriter(str(path), arch_name or arch)
    wr.add_block_count(s["layers"])
    wr.add_context_length(256)
    wr.add_embedding_length(s["hidden"])
    wr.add_feed_forward_length(s["ffn"])
    wr.add_head_count(s["heads"])
    wr.add_head_count_kv(s["kv_heads"])
    wr.add_key_length(s["head_dim"])
    wr.add_value_length(s["head_dim"])
    wr.add_rope_dimension_count(s["head_dim"])
    wr.add_layer_norm_rms_eps(1e-6)
    wr.add_rope_freq_base(10000.0)
    wr.add_vocab_size(vocab)
    inv = {i: t for t, i in tok.get_vocab().items()}
    tokens = [inv[i] for i in range(vocab)]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    wr.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(False)
    wr.add_chat_template(CHAT_TEMPLATE)

    def add(name: str, arr: np.ndarray, kind: str) -> None:
        if arr.ndim == 1 or kind == "F32":
            wr.add_tensor(name, arr.astype(np.float32))
        elif kind == "F16":
            wr.add_tensor(name, arr.astype(np.float16))
        else:
            qt = gguf.GGMLQuantizationType[kind]
            wr.add_tensor(name, quantize(arr, qt), raw_shape=quantize(arr, qt).shape, raw_dtype=qt)

    add("token_embd.weight", w["model.embed_tokens.weight"], embed_qtype or qtype)
    add("output_norm.weight", w["model.norm.weight"], "F32")
    if "lm_head.weight" in w:
        add("output.weight", w["lm_head.weight"], qtype)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        for hf, g in _TO_GGUF.items():
            for suffix in ("weight", "bias"):
                a = w.get(p + hf + "." + suffix)
                if a is None:
                    continue
                if arch == "llama" and hf in ("self_attn.q_proj", "self_attn.k_proj"):
                    a = _permute(a, s["heads"] if hf == "self_attn.q_proj" else s["kv_heads"])
                add(f"blk.{i}.{g}.{suffix}", a, qtype)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
