"""Read a GGUF file (llama, qwen2, qwen3) into a ModelSpec without dequantizing it."""
from __future__ import annotations

import pathlib

import numpy as np

from . import weights as W
from .spec import ARCHITECTURES, ConvertError, LayerWeights, ModelSpec
from .tokenizer import gguf_tokenizer_json

_QUANT = {"Q4_0": W.from_q4_0, "Q4_1": W.from_q4_1, "Q8_0": W.from_q8_0}
_FLOAT = ("F32", "F16", "BF16")


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class _Tensors:
    def __init__(self, reader, path):
        self.path = path
        self.by_name = {t.name: t for t in reader.tensors}

    def has(self, name: str) -> bool:
        return name in self.by_name

    def _get(self, name: str):
        t = self.by_name.get(name)
        if t is None:
            raise ConvertError(f"{self.path}: tensor '{name}' is missing")
        return t

    def vector(self, name: str) -> np.ndarray:
        t = self._get(name)
        if t.tensor_type.name not in _FLOAT:
            raise ConvertError(f"{self.path}: tensor '{name}' has type {t.tensor_type.name}; norms must be F32/F16/BF16")
        return self._float(t).reshape(-1)

    def _float(self, t) -> np.ndarray:
        kind = t.tensor_type.name
        data = np.asarray(t.data)
        if kind == "BF16":
            data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)

    def linear(self, name: str, bias: str | None = None) -> W.Linear:
        t = self._get(name)
        kind = t.tensor_type.name
        k, n = int(t.shape[0]), int(t.shape[1])        # ggml order: fastest dimension first
        if kind in _QUANT:
            lin = _QUANT[kind](t.data, n, k)
        elif kind in _FLOAT:
            lin = W.from_float(self._float(t).reshape(n, k))
        else:
            raise ConvertError(f"{self.path}: tensor '{name}' has unsupported type {kind} "
                               f"(supported: {', '.join([*_QUANT, *_FLOAT])})")
        if bias and self.has(bias):
            lin.bias = self.vector(bias)
        return lin


def read_gguf(path: str | pathlib.Path) -> ModelSpec:
    from gguf import GGUFReader

    path = pathlib.Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf package raises plain errors for bad files
        raise ConvertError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ConvertError(f"{path}: unsupported architecture '{arch}' (supported: {', '.join(ARCHITECTURES)})")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    tensors = _Tensors(reader, path)
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in _QUANT and kind not in _FLOAT:
            raise ConvertError(f"{path}: tensor '{t.name}' has unsupported type {kind} "
                               f"(supported: {', '.join([*_QUANT, *_FLOAT])})")
    hidden = int(meta("embedding_length"))
    heads = int(meta("attention.head_count"))
    kv_heads = int(meta("attention.head_count_kv", heads))
    head_dim = int(meta("attention.key_length", hidden // heads))
    rope_dim = int(meta("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConvertError(f"{path}: partial rotary (rope dimension {rope_dim} of head {head_dim}) is not supported")
    if meta("rope.scaling.type") not in (None, "none"):
        raise ConvertError(f"{path}: rope scaling '{meta('rope.scaling.type')}' is not supported")
    tokens = list(_field(reader, "tokenizer.ggml.tokens") or [])
    tied = not tensors.has("output.weight")
    tok_json, eos, bos = gguf_tokenizer_json(reader, path)

    def layer(i: int) -> LayerWeights:
        p = f"blk.{i}."
        return LayerWeights(
            attn_norm=tensors.vector(p + "attn_norm.weight"),
            q=tensors.linear(p + "attn_q.weight", p + "attn_q.bias"),
            k=tensors.linear(p + "attn_k.weight", p + "attn_k.bias"),
            v=tensors.linear(p + "attn_v.weight", p + "attn_v.bias"),
            o=tensors.linear(p + "attn_output.weight"),
            ffn_norm=tensors.vector(p + "ffn_norm.weight"),
            gate=tensors.linear(p + "ffn_gate.weight"),
            up=tensors.linear(p + "ffn_up.weight"),
            down=tensors.linear(p + "ffn_down.weight"),
            q_norm=tensors.vector(p + "attn_q_norm.weight") if arch == "qwen3" else None,
            k_norm=tensors.vector(p + "attn_k_norm.weight") if arch == "qwen3" else None,
        )

    return ModelSpec(
        architecture=arch, hidden=hidden, layers=int(meta("block_count")), heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, ffn=int(meta("feed_forward_length")),
        vocab=int(meta("vocab_size", len(tokens))) if tokens else int(meta("vocab_size")),
        context_length=int(meta("context_length", 2048)),
        rms_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rotary_interleaved=(arch == "llama"),
        embedding=lambda: tensors.linear("token_embd.weight"),
        output=lambda: tensors.linear("output.weight" if not tied else "token_embd.weight"),
        final_norm=lambda: tensors.vector("output_norm.weight"),
        layer=layer, tokenizer_json=tok_json, eos_token_ids=eos, bos_token_id=bos,
        chat_template=str(_field(reader, "tokenizer.chat_template", "") or ""),
        name=str(_field(reader, "general.name", "") or ""), tied=tied)
