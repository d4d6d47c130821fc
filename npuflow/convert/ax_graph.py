"""Per-layer and post ONNX graphs with the exact I/O signature of `pulsar2 llm_build` output.

Layer graph (one per decoder layer; the signature `pulsar2 llm_build` gives every layer):
  inputs   K_cache, V_cache bf16 [1, Lk, D]   past keys (rotated) / values; rows 0..n-1
                                              are read, n = zeros in the mask's first row - 1
           indices uint32 [1, S]              positions of the S new tokens (RoPE)
           input   bf16 [1, S, H]             residual stream
           mask    bf16 [1, S, mask_len]      additive: 0 = attend, -65536 = masked; columns are
                                              the mask_len - S past rows, then the S new tokens
                                              (the vendor loop's masks: row 0 admits exactly the
                                              past rows before the chunk, and itself)
  outputs  K_cache_out, V_cache_out bf16 [1, S, D], output bf16 [1, S, H]
Dims are symbolic; the concrete shape groups go into the file's metadata (ax_export.py).

Post graph: input bf16 [1, 1, H] -> final RMSNorm -> lm_head -> output float32 [1, 1, V].

Inside, the math is the CPU engine's graph (npuflow/convert/graph.py) op for op: the same
MatMulNBits projections (same packed weights and accuracy level), RMSNorm ops, SiLU gate, RoPE
tables, and GroupQueryAttention for attention (fed the past rows the mask admits, the mask as its
bias). The two differ only where the AX signature forces it: bf16 residual stream, KV cache and
embedding table. The CPU graph built with bf16_boundaries rounds at exactly those points, and
then the two compute bit-identical logits (tests/ax/test_ax_identity.py).
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import ACCURACY_LEVEL, MS, _Builder, _head_norm, _round_bf16, build_graph, rotate
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


def _attention(b: _Builder, spec: ModelSpec, q: str, k: str, v: str) -> str:
    """Attention of the S new rows (q, k, v [1, S, *], already rotated; k and v as the cache holds
    them) over the past rows the mask's first row admits, then themselves, with GroupQueryAttention
    as the CPU engine's graph runs it (same kernel, same summation order: the results are
    bit-identical to the CPU graph with bf16 boundaries for the same inputs). The rest of the mask
    (the past columns admitted, and the new rows among themselves) is added as attention_bias:
    0 attends, -65536 masks; the kernel is causal over the new rows as well."""
    nkv, hd = spec.kv_heads, spec.head_dim
    mask = b.node("Cast", ["mask"], to=F32)[0]                                               # [1, S, W]
    zero, one, two = b.i64("zero", [0]), b.i64("one", [1]), b.i64("two", [2])
    row0 = b.node("Slice", [mask, zero, one, one])[0]                                        # [1, 1, W]
    admitted = b.node("ReduceSum", [b.node("Cast", [b.node("Equal", [row0, b.init(b.name("f0"), np.array(0, np.float32))])[0]],
                                           to=TensorProto.INT64)[0]], keepdims=0)[0]      # scalar
    seq = b.node("Shape", ["input"], start=1, end=2)[0]                                      # [1]
    width = b.node("Shape", ["mask"], start=2, end=3)[0]                                     # [1]
    n_past = b.node("Sub", [b.node("Unsqueeze", [admitted, zero])[0], one])[0]               # [1]
    past = []
    for name in ("K_cache", "V_cache"):
        rows = b.node("Cast", [b.node("Slice", [name, zero, n_past, one])[0]], to=F32)[0]     # [1, n, D]
        rows = b.node("Reshape", [rows, b.i64("bnsh", [1, -1, nkv, hd])])[0]
        past.append(b.node("Transpose", [rows], perm=[0, 2, 1, 3])[0])                       # [1, nkv, n, hd]
    total = b.node("Add", [n_past, seq])[0]                                                  # [1]
    seqlens = b.node("Cast", [b.node("Sub", [total, one])[0]], to=TensorProto.INT32)[0]
    total_s = b.node("Cast", [b.node("Squeeze", [total])[0]], to=TensorProto.INT32)[0]
    bias = b.node("Concat", [b.node("Slice", [mask, zero, n_past, two])[0],
                             b.node("Slice", [mask, b.node("Sub", [width, seq])[0], width, two])[0]], axis=2)[0]
    bias = b.node("Unsqueeze", [bias, one])[0]                                               # [1, 1, S, total]
    return b.node("GroupQueryAttention",
                  [q, k, v, past[0], past[1], seqlens, total_s, "", "", "", bias],
                  [b.name("attn"), b.name("present_k"), b.name("present_v")], domain=MS,
                  num_heads=spec.heads, kv_num_heads=nkv, scale=1.0 / math.sqrt(hd), do_rotary=0)[0]


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
    q = rotate(b, q, nh, hd, cos, sin, spec.rotary_interleaved)
    k = rotate(b, k, nkv, hd, cos, sin, spec.rotary_interleaved)
    b.node("Cast", [k], ["K_cache_out"], to=BF16)
    b.node("Cast", [v], ["V_cache_out"], to=BF16)
    k, v = _round_bf16(b, k), _round_bf16(b, v)     # the new rows are attended as the cache holds them

    attn = _attention(b, spec, q, k, v)

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
