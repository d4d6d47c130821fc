"""An independent float32 numpy forward pass of llama / qwen2 / qwen3 decoders, for tests.

Weights use Hugging Face names and layouts (W[out, in]); `rotary` is "half" (HF, rotate-half
pairs (i, i + d/2)) or "interleaved" (GGUF llama, pairs (2i, 2i + 1)).
"""
from __future__ import annotations

import numpy as np


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta, rotary):
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None]
    cos, sin = np.cos(ang)[:, None].astype(np.float32), np.sin(ang)[:, None].astype(np.float32)
    if rotary == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def forward(w: dict, cfg: dict, ids, rotary: str = "half") -> np.ndarray:
    """Logits [len(ids), vocab] of one sequence starting at position 0."""
    H, nh, nkv, hd = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    eps, theta = cfg["eps"], cfg["theta"]
    ids = np.asarray(ids)
    T = len(ids)
    x = w["model.embed_tokens.weight"][ids].astype(np.float32)
    pos = np.arange(T)
    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}."
        lin = lambda h, n: h @ w[p + n + ".weight"].T + w.get(p + n + ".bias", 0)  # noqa: E731
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, "self_attn.q_proj").reshape(T, nh, hd)
        k = lin(h, "self_attn.k_proj").reshape(T, nkv, hd)
        v = lin(h, "self_attn.v_proj").reshape(T, nkv, hd)
        if p + "self_attn.q_norm.weight" in w:
            q = rms(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q, pos, theta, rotary), rope(k, pos, theta, rotary)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(T, nh * hd)
        x = x + lin(a, "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    x = rms(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return (x @ head.T).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


_GGUF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_weights(path) -> tuple[dict, dict, str]:
    """(HF-named float32 weights, cfg, rotary) of a GGUF file, dequantized with gguf.quants."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    meta = lambda k, d=None: r.fields[f"{arch}.{k}"].contents() if f"{arch}.{k}" in r.fields else d  # noqa: E731
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
        else:
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}[parts[0]] + ".weight"
        w[name] = a.reshape(-1) if a.ndim == 1 or name.endswith("norm.weight") else a
    H, nh = int(meta("embedding_length")), int(meta("attention.head_count"))
    cfg = {"hidden": H, "heads": nh, "kv_heads": int(meta("attention.head_count_kv", nh)),
           "head_dim": int(meta("attention.key_length", H // nh)), "eps": float(meta("attention.layer_norm_rms_epsilon")),
           "theta": float(meta("rope.freq_base", 10000.0)), "layers": int(meta("block_count"))}
    return w, cfg, "interleaved" if arch == "llama" else "half"
