"""Build an embedding model's ONNX graph (one run per batch, no KV cache) from an EmbedSpec.

Inputs
  input_ids       int64 [B, T]   token ids, right-padded with any id (0)
  attention_mask  int64 [B, T]   1 for a real token, 0 for padding (every row has >= 1 real token)
Output
  embeddings      float32 [B, D] the pooled vector of each row, L2-normalised when the model is

BERT: word + position + token-type-0 embeddings and LayerNorm, then per layer bidirectional
attention with the padding masked out (an additive bias on the keys), Add + LayerNorm, a GELU
(erf) MLP, Add + LayerNorm. Pooling: the mean over the real tokens or the first token ([CLS]).

qwen3 (Qwen3-Embedding): the decoder without a cache: RMSNorm, q/k/v projections, per-head
q/k RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU MLP, final RMSNorm, pooled
at each row's last real token. Right padding needs no mask beyond the causal one: a real token
never attends to a later position, so the pads cannot reach it, and positions start at 0 in every
row as they do for the same text alone.

Every op is a standard ONNX op (opset 21) computed in float32, so the graph follows the reference
to float rounding; onnxruntime's own graph optimizer fuses what it recognises (LayerNorm and
SkipLayerNorm, Gelu, MatMul + Add) when the session is built.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from .embed_source import EmbedSpec
from .graph import _Builder
from .weights import from_float

MASK_BIAS = -1e30     # added to a padding key's score: exp() of it is exactly 0


def build_embed_graph(spec: EmbedSpec, progress: Callable[[str, int], None] = lambda what, pct: None
                      ) -> onnx.ModelProto:
    b = _Builder(0)
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("embeddings", f32, ["batch", spec.hidden])]
    seq = b.node("Shape", ["input_ids"], start=1, end=2)[0]          # [T]
    mask = b.node("Cast", ["attention_mask"], to=f32)[0]              # [B, T]
    build = _bert if spec.architecture == "bert" else _qwen3
    hidden = build(b, spec, seq, mask, progress)                     # [B, T, H]
    pooled = _pool(b, spec, hidden, mask)
    if spec.normalize:
        norm = b.node("ReduceL2", [pooled, b.i64("axis", [-1])], keepdims=1)[0]
        norm = b.node("Max", [norm, b.init("l2_floor", np.array(1e-12, np.float32))])[0]
        pooled = b.node("Div", [pooled, norm])[0]
    b.nodes.append(helper.make_node("Identity", [pooled], ["embeddings"], name="embeddings_out"))
    graph = helper.make_graph(b.nodes, f"{spec.architecture}_embedding", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="npuflow.convert")
    model.ir_version = 10
    return model


def _pool(b: _Builder, spec: EmbedSpec, x: str, mask: str) -> str:
    if spec.pooling == "cls":
        first = b.node("Gather", [x, b.i64("first", [0])], axis=1)[0]                  # [B, 1, H]
        return b.node("Squeeze", [first, b.i64("axis", [1])])[0]
    if spec.pooling == "mean":
        m = b.node("Unsqueeze", [mask, b.i64("axis", [-1])])[0]                  # [B, T, 1]
        total = b.node("ReduceSum", [b.node("Mul", [x, m])[0], b.i64("axis", [1])], keepdims=0)[0]
        count = b.node("ReduceSum", [m, b.i64("axis", [1])], keepdims=0)[0]      # [B, 1]
        count = b.node("Max", [count, b.init("count_floor", np.array(1e-9, np.float32))])[0]
        return b.node("Div", [total, count])[0]
    # last: row r's position sum(mask[r]) - 1 (right padding)
    n = b.node("ReduceSum", ["attention_mask", b.i64("axis", [1])], keepdims=1)[0]   # [B, 1]
    last = b.node("Sub", [n, b.init("one_i64", np.array(1, np.int64))])[0]
    shape = b.node("Concat", [b.node("Shape", [last])[0], b.i64("hidden", [spec.hidden])], axis=0)[0]   # [B, 1, H]
    idx = b.node("Expand", [b.node("Unsqueeze", [last, b.i64("axis", [-1])])[0], shape])[0]
    return b.node("Squeeze", [b.node("GatherElements", [x, idx], axis=1)[0], b.i64("axis", [1])])[0]


def _linear(b: _Builder, x: str, w: np.ndarray, bias: np.ndarray | None, prefix: str) -> str:
    lin = from_float(w)
    lin.bias = bias
    return b.linear(x, lin, prefix)


def _heads(b: _Builder, x: str, n: int, hd: int, perm: list[int]) -> str:
    """[B, T, n*hd] -> [B, T, n, hd] transposed by perm."""
    y = b.node("Reshape", [x, b.i64("heads", [0, 0, n, hd])])[0]
    return b.node("Transpose", [y], perm=perm)[0]


def _bert(b: _Builder, spec: EmbedSpec, seq: str, mask: str, progress) -> str:
    g, p = spec.get, spec.prefix
    H, nh, hd = spec.hidden, spec.heads, spec.head_dim
    e = p + "embeddings."
    word = b.node("Gather", [b.init("word_embeddings", g(e + "word_embeddings.weight")), "input_ids"], axis=0)[0]
    pos = b.node("Slice", [b.init("position_embeddings", g(e + "position_embeddings.weight")),
                           b.i64("zero", [0]), seq, b.i64("axis", [0])])[0]
    types = b.init("token_type_0", g(e + "token_type_embeddings.weight")[0].copy())
    x = b.node("Add", [b.node("Add", [word, pos])[0], types])[0]
    x = _layer_norm(b, x, g(e + "LayerNorm.weight"), g(e + "LayerNorm.bias"), spec.eps, "emb_ln")
    keep = b.node("Unsqueeze", [mask, b.i64("axes", [1, 2])])[0]                 # [B, 1, 1, T]
    bias = b.node("Mul", [b.node("Sub", [b.init("one", np.array(1, np.float32)), keep])[0],
                          b.init("mask_bias", np.array(MASK_BIAS, np.float32))])[0]
    scale = b.init("attn_scale", np.array(1.0 / np.sqrt(hd), np.float32))
    for i in range(spec.layers):
        progress("layers", 100 * i // spec.layers)
        L = f"{p}encoder.layer.{i}."
        a = L + "attention.self."
        wqkv = np.concatenate([g(a + n + ".weight") for n in ("query", "key", "value")], axis=0)
        bqkv = np.concatenate([g(a + n + ".bias") for n in ("query", "key", "value")], axis=0)
        qkv = _linear(b, x, wqkv, bqkv, f"l{i}.qkv")
        q, k, v = b.node("Split", [qkv, b.i64("split", [H, H, H])], 3, axis=-1)
        q = _heads(b, q, nh, hd, [0, 2, 1, 3])
        k = _heads(b, k, nh, hd, [0, 2, 3, 1])
        v = _heads(b, v, nh, hd, [0, 2, 1, 3])
        s = b.node("Add", [b.node("Mul", [b.node("MatMul", [q, k])[0], scale])[0], bias])[0]
        ctx = b.node("MatMul", [b.node("Softmax", [s], axis=-1)[0], v])[0]
        ctx = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 2, 1, 3])[0], b.i64("merge", [0, 0, H])])[0]
        o = _linear(b, ctx, g(L + "attention.output.dense.weight"), g(L + "attention.output.dense.bias"), f"l{i}.o")
        x = _layer_norm(b, b.node("Add", [x, o])[0], g(L + "attention.output.LayerNorm.weight"),
                        g(L + "attention.output.LayerNorm.bias"), spec.eps, f"l{i}.ln1")
        h = _linear(b, x, g(L + "intermediate.dense.weight"), g(L + "intermediate.dense.bias"), f"l{i}.up")
        h = _gelu(b, h)
        d = _linear(b, h, g(L + "output.dense.weight"), g(L + "output.dense.bias"), f"l{i}.down")
        x = _layer_norm(b, b.node("Add", [x, d])[0], g(L + "output.LayerNorm.weight"),
                        g(L + "output.LayerNorm.bias"), spec.eps, f"l{i}.ln2")
    return x


def _layer_norm(b: _Builder, x: str, w: np.ndarray, bias: np.ndarray, eps: float, name: str) -> str:
    return b.node("LayerNormalization", [x, b.init(name + ".weight", w), b.init(name + ".bias", bias)],
                  axis=-1, epsilon=float(eps))[0]


def _gelu(b: _Builder, x: str) -> str:
    """0.5 x (1 + erf(x / sqrt 2)), the exact GELU BERT uses (onnxruntime fuses it into Gelu)."""
    e = b.node("Erf", [b.node("Div", [x, b.init(b.name("sqrt2"), np.array(np.sqrt(2.0), np.float32))])[0]])[0]
    one = b.node("Add", [e, b.init(b.name("one"), np.array(1.0, np.float32))])[0]
    return b.node("Mul", [b.node("Mul", [x, one])[0], b.init(b.name("half"), np.array(0.5, np.float32))])[0]


def _rms_ops(b: _Builder, x: str, w: np.ndarray, eps: float, name: str) -> str:
    """x / sqrt(mean(x^2) + eps) * w (standard ops; onnxruntime fuses it into SimplifiedLayerNormalization)."""
    ms = b.node("ReduceMean", [b.node("Mul", [x, x])[0], b.i64("axis", [-1])], keepdims=1)[0]
    r = b.node("Sqrt", [b.node("Add", [ms, b.init(b.name("eps"), np.array(eps, np.float32))])[0]])[0]
    return b.node("Mul", [b.node("Div", [x, r])[0], b.init(name, w)])[0]


def _qwen3(b: _Builder, spec: EmbedSpec, seq: str, mask: str, progress) -> str:
    g, p = spec.get, spec.prefix
    nh, nkv, hd = spec.heads, spec.kv_heads, spec.head_dim
    grp = nh // nkv
    x = b.node("Gather", [b.init("embed_tokens", g(p + "embed_tokens.weight")), "input_ids"], axis=0)[0]
    inv = 1.0 / (spec.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.arange(spec.context_length, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)                                      # [P, hd]
    zero, ax0 = b.i64("zero", [0]), b.i64("axis", [0])
    cos = b.node("Slice", [b.init("rope_cos", np.cos(ang).astype(np.float32)), zero, seq, ax0])[0]   # [T, hd]
    sin = b.node("Slice", [b.init("rope_sin", np.sin(ang).astype(np.float32)), zero, seq, ax0])[0]
    # causal bias [T, T]: 0 on and below the diagonal
    P = spec.context_length
    causal = np.triu(np.full((P, P), MASK_BIAS, np.float32), 1) if P <= 4096 else None
    if causal is not None:
        c = b.node("Slice", [b.init("causal", causal), b.i64("zero2", [0, 0]),
                             b.node("Concat", [seq, seq], axis=0)[0], b.i64("axes01", [0, 1])])[0]
    else:   # a long context: build it per run (Trilu of a [T, T] block)
        t2 = b.node("Concat", [seq, seq], axis=0)[0]
        full = b.node("Expand", [b.init("mask_bias_c", np.array(MASK_BIAS, np.float32)), t2])[0]
        c = b.node("Trilu", [full, b.init("one_k", np.array(1, np.int64))], upper=1)[0]
    half = hd // 2
    for i in range(spec.layers):
        progress("layers", 100 * i // spec.layers)
        L = f"{p}layers.{i}."
        a = L + "self_attn."
        h = _rms_ops(b, x, g(L + "input_layernorm.weight"), spec.eps, f"l{i}.attn_norm")
        wqkv = np.concatenate([g(a + n + "_proj.weight") for n in ("q", "k", "v")], axis=0)
        qkv = _linear(b, h, wqkv, None, f"l{i}.qkv")
        q, k, v = b.node("Split", [qkv, b.i64("split", [nh * hd, nkv * hd, nkv * hd])], 3, axis=-1)
        q = b.node("Reshape", [q, b.i64("heads", [0, 0, nh, hd])])[0]                # [B, T, nh, hd]
        k = b.node("Reshape", [k, b.i64("heads", [0, 0, nkv, hd])])[0]
        q = _rope(b, _rms_ops(b, q, g(a + "q_norm.weight"), spec.eps, f"l{i}.q_norm"), cos, sin, half)
        k = _rope(b, _rms_ops(b, k, g(a + "k_norm.weight"), spec.eps, f"l{i}.k_norm"), cos, sin, half)
        # grouped: Q [B, nkv, grp, T, hd] against K [B, nkv, 1, hd, T] (broadcast over the group)
        q = b.node("Transpose", [b.node("Reshape", [q, b.i64("grp", [0, 0, nkv, grp, hd])])[0]], perm=[0, 2, 3, 1, 4])[0]
        k = b.node("Unsqueeze", [b.node("Transpose", [k], perm=[0, 2, 3, 1])[0], b.i64("axis", [2])])[0]
        v = b.node("Unsqueeze", [_heads(b, v, nkv, hd, [0, 2, 1, 3]), b.i64("axis", [2])])[0]
        s = b.node("Mul", [b.node("MatMul", [q, k])[0], b.init(b.name("scale"), np.array(hd ** -0.5, np.float32))])[0]
        s = b.node("Add", [s, c])[0]
        ctx = b.node("MatMul", [b.node("Softmax", [s], axis=-1)[0], v])[0]                 # [B, nkv, grp, T, hd]
        ctx = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 3, 1, 2, 4])[0], b.i64("merge", [0, 0, nh * hd])])[0]
        o = _linear(b, ctx, g(a + "o_proj.weight"), None, f"l{i}.o")
        x = b.node("Add", [x, o])[0]
        h = _rms_ops(b, x, g(L + "post_attention_layernorm.weight"), spec.eps, f"l{i}.ffn_norm")
        F = spec.ffn
        gu = _linear(b, h, np.concatenate([g(L + "mlp.gate_proj.weight"), g(L + "mlp.up_proj.weight")], axis=0),
                     None, f"l{i}.gate_up")
        gate, up = b.node("Split", [gu, b.i64("split", [F, F])], 2, axis=-1)
        act = b.node("Mul", [b.node("Mul", [gate, b.node("Sigmoid", [gate])[0]])[0], up])[0]
        x = b.node("Add", [x, _linear(b, act, g(L + "mlp.down_proj.weight"), None, f"l{i}.down")])[0]
    return _rms_ops(b, x, g(p + "norm.weight"), spec.eps, "final_norm")


def _rope(b: _Builder, x: str, cos: str, sin: str, half: int) -> str:
    """Rotate-half RoPE of x [B, T, n, hd] at positions 0..T-1 (cos/sin [T, hd] broadcast over heads)."""
    c = b.node("Unsqueeze", [cos, b.i64("axis", [1])])[0]                         # [T, 1, hd]
    s = b.node("Unsqueeze", [sin, b.i64("axis", [1])])[0]
    x1, x2 = b.node("Split", [x, b.i64("split", [half, half])], 2, axis=-1)
    rot = b.node("Concat", [b.node("Neg", [x2])[0], x1], axis=-1)[0]
    return b.node("Add", [b.node("Mul", [x, c])[0], b.node("Mul", [rot, s])[0]])[0]
