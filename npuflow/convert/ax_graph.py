"""Per-layer and post ONNX graphs with the exact I/O signature of `pulsar2 llm_build` output.

Layer graph (one per decoder layer; see /work/shared/docs/axera.md):
  inputs   K_cache, V_cache bf16 [1, Lk, D]   past keys (rotated) / values; only the first
                                              mask_len - S rows are read
           indices uint32 [1, S]              positions of the S new tokens (RoPE)
           input   bf16 [1, S, H]             residual stream
           mask    bf16 [1, S, mask_len]      additive: 0 = attend, -65536 = masked; columns are
                                              the mask_len - S past rows, then the S new tokens
  outputs  K_cache_out, V_cache_out bf16 [1, S, D], output bf16 [1, S, H]
Dims are symbolic; the concrete shape groups go into the file's metadata (ax_export.py).

Post graph: input bf16 [1, 1, H] -> final RMSNorm -> lm_head -> output float32 [1, 1, V].

Inside, the math mirrors the CPU engine's graph (npuflow/convert/graph.py) op for op where it can:
the same MatMulNBits projections (same packed weights and accuracy level), RMSNorm ops, SiLU
gate; attention is written out (MatMul, additive mask, Softmax in float32) because
GroupQueryAttention keeps its own cache layout. So the two engines differ only where the AX
signature forces it: bf16 residual stream and KV cache, bf16 embedding table.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import ACCURACY_LEVEL, MS, _Builder, _head_norm, build_graph
from .spec import LayerWeights, ModelSpec

BF16, F32, U32 = TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.UINT32
LAYER_INPUTS = ("K_cache", "V_cache", "indices", "input", "mask")
LAYER_OUTPUTS = ("K_cache_out", "V_cache_out", "output")


def _builder(accuracy_level) -> _Builder:
    """A graph builder set up as build_graph sets up the CPU graph's (same weight forms), so the
    projections of both engines compute the same thing."""
    params = inspect.signature(build_graph).parameters
    kw = {k: params[k].default for k in ("widen_q4_1",) if k in params}
    return _Builder(accuracy_level, **kw)


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin float32 [positions, head_dim/2] (computed as the CPU engine computes them)."""
    from ..engine.cpu import rotary_tables
    return rotary_tables(positions, head_dim, theta)


def _model(b: _Builder, name: str, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
                              producer_name="npuflow.convert.ax")
    model.ir_version = 10
    return model


def _i64(b: _Builder, base: str, values) -> str:
    return b.init(b.name(base), np.array(values, np.int64))


def _rotate(b: _Builder, x: str, heads: int, hd: int, cos: str, sin: str, interleaved: bool) -> str:
    """RoPE on x [1, S, heads*hd] with cos/sin [1, S, hd/2]: pairs (2i, 2i+1) when interleaved,
    else (i, i + hd/2) (rotate-half)."""
    half = hd // 2
    if interleaved:
        shape, axis, un = [0, 0, heads, half, 2], 4, [2, 4]
    else:
        shape, axis, un = [0, 0, heads, 2, half], 3, [2, 3]
    y = b.node("Reshape", [x, _i64(b, "rope_shape", shape)])[0]
    x0, x1 = b.node("Split", [y], 2, axis=axis, num_outputs=2)
    c = b.node("Unsqueeze", [cos, _i64(b, "axes", un)])[0]
    s = b.node("Unsqueeze", [sin, _i64(b, "axes", un)])[0]
    o0 = b.node("Sub", [b.node("Mul", [x0, c])[0], b.node("Mul", [x1, s])[0]])[0]
    o1 = b.node("Add", [b.node("Mul", [x1, c])[0], b.node("Mul", [x0, s])[0]])[0]
    out = b.node("Concat", [o0, o1], axis=axis)[0]
    return b.node("Reshape", [out, _i64(b, "flat", [0, 0, heads * hd])])[0]


def _attention(b: _Builder, spec: ModelSpec, q: str, k_all: str, v_all: str, mask: str) -> str:
    """softmax(q k^T * scale + mask) v with kv heads shared by groups of query heads."""
    nh, nkv, hd = spec.heads, spec.kv_heads, spec.head_dim
    g = nh // nkv
    qh = b.node("Transpose", [b.node("Reshape", [q, _i64(b, "q4", [0, 0, nh, hd])])[0]], perm=[0, 2, 1, 3])[0]
    qg = b.node("Reshape", [qh, _i64(b, "qg", [1, nkv, -1, hd])])[0]                      # [1,nkv,G*S,hd]
    kt = b.node("Transpose", [b.node("Reshape", [k_all, _i64(b, "k4", [0, 0, nkv, hd])])[0]], perm=[0, 2, 3, 1])[0]
    vh = b.node("Transpose", [b.node("Reshape", [v_all, _i64(b, "v4", [0, 0, nkv, hd])])[0]], perm=[0, 2, 1, 3])[0]
    scores = b.node("Mul", [b.node("MatMul", [qg, kt])[0],
                            b.init(b.name("scale"), np.array(1.0 / math.sqrt(hd), np.float32))])[0]
    m = b.node("Cast", [mask], to=F32)[0]
    if g > 1:
        m = b.node("Tile", [m, _i64(b, "tile", [1, g, 1])])[0]                            # rows: g*S + s
    m = b.node("Unsqueeze", [m, _i64(b, "axes", [1])])[0]
    probs = b.node("Softmax", [b.node("Add", [scores, m])[0]], axis=-1)[0]
    o = b.node("MatMul", [probs, vh])[0]                                                  # [1,nkv,G*S,hd]
    o = b.node("Transpose", [b.node("Reshape", [o, _i64(b, "oh", [1, nh, -1, hd])])[0]], perm=[0, 2, 1, 3])[0]
    return b.node("Reshape", [o, _i64(b, "o3", [0, 0, nh * hd])])[0]


def build_layer_graph(spec: ModelSpec, i: int, lw: LayerWeights, positions: int,
                      accuracy_level: int = ACCURACY_LEVEL) -> onnx.ModelProto:
    """The AX layer graph of layer i; RoPE tables cover positions 0..positions-1."""
    b = _builder(accuracy_level)
    H, hd, nh, nkv = spec.hidden, spec.head_dim, spec.heads, spec.kv_heads
    D = nkv * hd
    eps = float(spec.rms_eps)
    vi = helper.make_tensor_value_info
    inputs = [vi("K_cache", BF16, [1, "kv_len", D]), vi("V_cache", BF16, [1, "kv_len", D]),
              vi("indices", U32, [1, "seq"]), vi("input", BF16, [1, "seq", H]), vi("mask", BF16, [1, "seq", "mask_len"])]
    outputs = [vi("K_cache_out", BF16, [1, "seq", D]), vi("V_cache_out", BF16, [1, "seq", D]),
               vi("output", BF16, [1, "seq", H])]

    x = b.node("Cast", ["input"], to=F32)[0]
    h = b.node("SimplifiedLayerNormalization", [x, b.init(f"l{i}.attn_norm", lw.attn_norm.astype(np.float32))],
               axis=-1, epsilon=eps)[0]
    q, k, v = b.linears(h, [lw.q, lw.k, lw.v], f"l{i}.qkv")
    if lw.q_norm is not None:
        q = _head_norm(b, q, lw.q_norm, f"l{i}.q_norm", eps, hd)
        k = _head_norm(b, k, lw.k_norm, f"l{i}.k_norm", eps, hd)
    cos_t, sin_t = rope_tables(positions, hd, spec.rope_theta)
    pos = b.node("Cast", ["indices"], to=TensorProto.INT64)[0]
    cos = b.node("Gather", [b.init("rope_cos", cos_t), pos], axis=0)[0]
    sin = b.node("Gather", [b.init("rope_sin", sin_t), pos], axis=0)[0]
    q = _rotate(b, q, nh, hd, cos, sin, spec.rotary_interleaved)
    k = _rotate(b, k, nkv, hd, cos, sin, spec.rotary_interleaved)
    b.node("Cast", [k], ["K_cache_out"], to=BF16)
    b.node("Cast", [v], ["V_cache_out"], to=BF16)

    # past rows actually read: mask_len - S (0 in the first prefill chunk, whatever K_cache holds)
    n_past = b.node("Sub", [b.node("Shape", ["mask"], start=2, end=3)[0], b.node("Shape", ["input"], start=1, end=2)[0]])[0]
    zero, one = _i64(b, "zero", [0]), _i64(b, "one", [1])
    k_past = b.node("Cast", [b.node("Slice", ["K_cache", zero, n_past, one])[0]], to=F32)[0]
    v_past = b.node("Cast", [b.node("Slice", ["V_cache", zero, n_past, one])[0]], to=F32)[0]
    k_all = b.node("Concat", [k_past, k], axis=1)[0]
    v_all = b.node("Concat", [v_past, v], axis=1)[0]
    attn = _attention(b, spec, q, k_all, v_all, "mask")

    o = b.linear(attn, lw.o, f"l{i}.o")
    h2, _, _, res = b.node("SkipSimplifiedLayerNormalization",
                           [o, x, b.init(f"l{i}.ffn_norm", lw.ffn_norm.astype(np.float32))],
                           [b.name("h"), "", "", b.name("res")], domain=MS, epsilon=eps)
    gate, up = b.linears(h2, [lw.gate, lw.up], f"l{i}.gate_up")
    act = b.node("Mul", [b.node("QuickGelu", [gate], domain=MS, alpha=1.0)[0], up])[0]
    down = b.linear(act, lw.down, f"l{i}.down")
    b.node("Cast", [b.node("Add", [down, res])[0]], ["output"], to=BF16)
    return _model(b, f"layer{i}", inputs, outputs)


def build_post_graph(spec: ModelSpec, accuracy_level: int = ACCURACY_LEVEL) -> onnx.ModelProto:
    b = _builder(accuracy_level)
    vi = helper.make_tensor_value_info
    x = b.node("Cast", ["input"], to=F32)[0]
    h = b.node("SimplifiedLayerNormalization", [x, b.init("final_norm", spec.final_norm().astype(np.float32))],
               axis=-1, epsilon=float(spec.rms_eps))[0]
    logits = b.linear(h, spec.output(), "lm_head")
    b.nodes.append(helper.make_node("Identity", [logits], ["output"], name="logits_out"))
    return _model(b, "post", [vi("input", BF16, [1, 1, spec.hidden])], [vi("output", F32, [1, 1, spec.vocab])])
