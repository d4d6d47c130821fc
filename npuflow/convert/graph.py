"""Build the decoder ONNX graph (one graph for prefill and decode) from a ModelSpec.

Inputs
  inputs_embeds  float32 [B, S, hidden]   token embeddings (looked up by the engine)
  seqlens_k      int32   [B]              total tokens of each row after this step, minus 1
  total_seq_len  int32   []               max over rows of seqlens_k + 1
  cos_cache, sin_cache float32 [P, head_dim/2]  rotary tables for positions 0..P-1
  logit_index    int64   [n]              rows of the flattened [B*S] positions that get logits
  past_key.i, past_value.i float32 [B, kv_heads, M, head_dim]  KV buffers (M = positions held)
Outputs
  logits         float32 [n, vocab]
  present_key.i, present_value.i          bound to the same buffers as past (updated in place)

Every layer: SimplifiedLayerNormalization (RMSNorm, fused with the residual add as
SkipSimplifiedLayerNormalization), one fused q|k|v MatMulNBits, GroupQueryAttention with its
built-in rotary (interleaved pairs for GGUF llama, rotate-half otherwise), one fused gate|up
MatMulNBits, QuickGelu(alpha=1) = SiLU, down projection. Quantized weights stay quantized
(accuracy_level 4: int8 activations); float weights stay float32.

Q4_1 projections (a float zero point per block) are widened to 8 bits with whole-number uint8
zero points (weights.widen_to_8bit, off by at most scale/34 per block), which onnxruntime's int8
kernel runs natively: one MatMulNBits per projection. Kept 4-bit (widen_q4_1=False, or float
activations) they carry the zero point with an exact correction term, four extra nodes each.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .spec import ModelSpec
from .weights import Linear, concat, integer_zero_points, widen_to_8bit

MS = "com.microsoft"
ACCURACY_LEVEL = 4


class _Builder:
    def __init__(self, accuracy_level: int | Callable[[str], int] = ACCURACY_LEVEL, widen_q4_1: bool = False):
        self.level = accuracy_level if callable(accuracy_level) else (lambda prefix: accuracy_level)
        self.widen_q4_1 = widen_q4_1
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def i64(self, base: str, values) -> str:
        """An int64 constant (shapes, axes, indices) under a fresh name from `base`."""
        return self.init(self.name(base), np.array(values, np.int64))

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs) -> list[str]:
        if isinstance(outputs, int):
            outputs = [self.name(op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.name(op + "_node"),
                                           domain=domain or None, **attrs))
        return outputs

    def linear(self, x: str, lin: Linear, prefix: str, rank: int = 3) -> str:
        if lin.quantized:
            if (self.widen_q4_1 and self.level(prefix) >= 2 and lin.zero_points is not None
                    and integer_zero_points(lin) is None):
                lin = widen_to_8bit(lin)
            return self._nbits(x, lin, prefix, rank)
        y = self.node("MatMul", [x, self.init(prefix + ".weight_t", lin.weight.T.copy())])[0]
        if lin.bias is not None:
            y = self.node("Add", [y, self.init(prefix + ".bias", lin.bias.astype(np.float32))])[0]
        return y

    def _nbits(self, x: str, lin: Linear, prefix: str, rank: int) -> str:
        """MatMulNBits. Whole-number zero points go in as uint8, which onnxruntime's int8 kernel
        handles natively. Float zero points (Q4_1 kept 4-bit) are carried exactly by a correction
        term instead, since a float zero point sends MatMulNBits to a slow path:
        (q - zp) * s = (q - z0) * s + (z0 - zp) * s, and sum_k x_k * c_b over a block is
        c_b * blocksum(x), so y += blocksum(x) @ C^T with C = (z0 - zp) * s [N, K/32]."""
        nb = lin.scales.shape[-1]
        block = lin.k // nb
        level = self.level(prefix)
        ins = [x, self.init(prefix + ".qweight", lin.packed),
               self.init(prefix + ".scales", lin.scales.reshape(-1).astype(np.float32))]
        zp_int = integer_zero_points(lin)
        if zp_int is not None:
            ins.append(self.init(prefix + ".zero_points", _pack_zero_points(zp_int, lin.bits)))
        if lin.bias is not None:
            ins += [""] * (4 - len(ins)) + ["", self.init(prefix + ".bias", lin.bias.astype(np.float32))]
        y = self.node("MatMulNBits", ins, domain=MS, K=lin.k, N=lin.n, bits=lin.bits, block_size=block,
                      accuracy_level=level)[0]
        if lin.zero_points is None or zp_int is not None:
            return y
        z0 = 8.0 if lin.bits == 4 else 128.0
        corr = ((z0 - lin.zero_points) * lin.scales).astype(np.float32)        # [N, nb]
        shape = [0] * (rank - 1) + [nb, block]
        blocks = self.node("Reshape", [x, self.i64(prefix + ".blocks", shape)])[0]
        sums = self.node("ReduceSum", [blocks, self.i64("axis", [-1])], keepdims=0)[0]
        c = self.node("MatMul", [sums, self.init(prefix + ".zp_correction_t", corr.T.copy())])[0]
        return self.node("Add", [y, c])[0]

    def linears(self, x: str, parts: list[Linear], prefix: str, split: bool = True) -> list[str]:
        """Project x through several matrices, fused into one kernel when their forms match
        (then one output [.., sum N] unless split)."""
        fused = concat(parts)
        if fused is None:
            return [self.linear(x, p, f"{prefix}.{i}") for i, p in enumerate(parts)]
        y = self.linear(x, fused, prefix)
        if not split:
            return [y]
        sizes = self.i64(prefix + ".split", [p.n for p in parts])
        return self.node("Split", [y, sizes], len(parts), axis=-1)


def build_graph(spec: ModelSpec, progress: Callable[[str, int], None] = lambda what, pct: None,
                accuracy_level: int | Callable[[str], int] = ACCURACY_LEVEL, *,
                widen_q4_1: bool = True, bf16_boundaries: bool = False) -> onnx.ModelProto:
    """accuracy_level 4 quantizes activations to int8 per block of 32 (fast, as llama.cpp does);
    0 keeps them float32 (exact to the dequantized weights, about 2.5x slower projections). It may
    also be a function of the projection's name ("l{i}.qkv", "l{i}.o", "l{i}.gate_up", "l{i}.down",
    "lm_head") for a mixed graph. widen_q4_1: see the module docstring.

    bf16_boundaries rounds to bfloat16 wherever the AX NPU graphs (ax_graph.py) hand tensors over
    in bf16: the embeddings, the residual stream after every layer, and the rotated keys and the
    values as they enter the KV cache. RoPE is then applied outside GroupQueryAttention, so the
    keys are rounded after rotation, as the NPU's K_cache holds them. It makes the CPU engine a
    numerical twin of the AX engine (the same model seen through the chip's bf16 interface)."""
    b = _Builder(accuracy_level, widen_q4_1)
    H, hd, nh, nkv = spec.hidden, spec.head_dim, spec.heads, spec.kv_heads
    eps = float(spec.rms_eps)
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("inputs_embeds", f32, ["batch", "seq", H]),
              helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
              helper.make_tensor_value_info("total_seq_len", i32, []),
              helper.make_tensor_value_info("cos_cache", f32, ["positions", hd // 2]),
              helper.make_tensor_value_info("sin_cache", f32, ["positions", hd // 2]),
              helper.make_tensor_value_info("logit_index", i64, ["n"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["n", spec.vocab])]

    x = _round_bf16(b, "inputs_embeds") if bf16_boundaries else "inputs_embeds"   # residual stream
    pending = None            # output of the previous block, added to x by the next norm
    cos = sin = ""
    if bf16_boundaries:       # positions of the step's tokens: seqlens_k + 1 - S + [0, S)
        cos, sin = _step_rotary(b)
    for i, lw in spec.layers_iter():
        progress(f"layer {i}", int(100 * i / spec.layers))
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", f32, ["batch", nkv, "max_seq", hd]))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", f32, ["batch", nkv, "max_seq", hd]))
        g = b.init(f"l{i}.attn_norm", lw.attn_norm.astype(np.float32))
        if bf16_boundaries and pending is not None:
            x, pending = _round_bf16(b, b.node("Add", [pending, x])[0]), None
        if pending is None:
            h = b.node("SimplifiedLayerNormalization", [x, g], axis=-1, epsilon=eps)[0]
        else:
            h, _, _, x = b.node("SkipSimplifiedLayerNormalization", [pending, x, g],
                                [b.name("h"), "", "", b.name("res")], domain=MS, epsilon=eps)
        if lw.q_norm is None and not bf16_boundaries:
            qkv = b.linears(h, [lw.q, lw.k, lw.v], f"l{i}.qkv", split=False)
            if len(qkv) == 1:       # packed q|k|v, which GroupQueryAttention takes as is
                q, k, v = qkv[0], "", ""
            else:
                q, k, v = qkv
        else:
            q, k, v = b.linears(h, [lw.q, lw.k, lw.v], f"l{i}.qkv")
            if lw.q_norm is not None:
                q = _head_norm(b, q, lw.q_norm, f"l{i}.q_norm", eps, hd)
                k = _head_norm(b, k, lw.k_norm, f"l{i}.k_norm", eps, hd)
        if bf16_boundaries:
            q = rotate(b, q, nh, hd, cos, sin, spec.rotary_interleaved)
            k = _round_bf16(b, rotate(b, k, nkv, hd, cos, sin, spec.rotary_interleaved))
            v = _round_bf16(b, v)
        attn = b.node("GroupQueryAttention",
                      [q, k, v, f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_seq_len",
                       "" if bf16_boundaries else "cos_cache", "" if bf16_boundaries else "sin_cache"],
                      [b.name("attn"), f"present_key.{i}", f"present_value.{i}"], domain=MS,
                      num_heads=nh, kv_num_heads=nkv, scale=1.0 / math.sqrt(hd), do_rotary=int(not bf16_boundaries),
                      rotary_interleaved=int(spec.rotary_interleaved))[0]
        o = b.linear(attn, lw.o, f"l{i}.o")
        g2 = b.init(f"l{i}.ffn_norm", lw.ffn_norm.astype(np.float32))
        h2, _, _, x = b.node("SkipSimplifiedLayerNormalization", [o, x, g2],
                             [b.name("h"), "", "", b.name("res")], domain=MS, epsilon=eps)
        gate, up = b.linears(h2, [lw.gate, lw.up], f"l{i}.gate_up")
        act = b.node("Mul", [b.node("QuickGelu", [gate], domain=MS, alpha=1.0)[0], up])[0]
        pending = b.linear(act, lw.down, f"l{i}.down")
    progress("output head", 100)
    gn = b.init("final_norm", spec.final_norm().astype(np.float32))
    if bf16_boundaries:
        x = _round_bf16(b, b.node("Add", [pending, x])[0])
        hn = b.node("SimplifiedLayerNormalization", [x, gn], axis=-1, epsilon=eps)[0]
    else:
        hn = b.node("SkipSimplifiedLayerNormalization", [pending, x, gn], [b.name("h"), "", "", ""],
                    domain=MS, epsilon=eps)[0]
    flat = b.node("Reshape", [hn, b.init("hidden_2d", np.array([-1, H], np.int64))])[0]
    rows = b.node("Gather", [flat, "logit_index"], axis=0)[0]
    head = b.linear(rows, spec.output(), "lm_head", rank=2)
    b.nodes.append(helper.make_node("Identity", [head], ["logits"], name="logits_out"))
    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
                              producer_name="npuflow.convert")
    model.ir_version = 10
    return model


def _round_bf16(b: _Builder, x: str) -> str:
    """x rounded to the nearest bfloat16 (ties to even), kept as float32."""
    return b.node("Cast", [b.node("Cast", [x], to=TensorProto.BFLOAT16)[0]], to=TensorProto.FLOAT)[0]


def _step_rotary(b: _Builder) -> tuple[str, str]:
    """cos, sin [B, S, head_dim/2] for the step's tokens, row b at positions
    seqlens_k[b] + 1 - S .. seqlens_k[b] (GroupQueryAttention's own convention)."""
    seq = b.node("Shape", ["inputs_embeds"], start=1, end=2)[0]                       # [1]: S
    last = b.node("Unsqueeze", [b.node("Cast", ["seqlens_k"], to=TensorProto.INT64)[0], b.i64("axes", [1])])[0]
    first = b.node("Sub", [b.node("Add", [last, b.i64("one", 1)])[0], seq])[0]         # [B, 1]
    steps = b.node("Range", [b.i64("zero", 0), b.node("Squeeze", [seq])[0], b.i64("one", 1)])[0]
    pos = b.node("Add", [first, steps])[0]                                            # [B, S]
    return (b.node("Gather", ["cos_cache", pos], axis=0)[0], b.node("Gather", ["sin_cache", pos], axis=0)[0])


def rotate(b: _Builder, x: str, heads: int, hd: int, cos: str, sin: str, interleaved: bool) -> str:
    """RoPE on x [B, S, heads*hd] with cos/sin [B, S, hd/2]: pairs (2i, 2i+1) when interleaved,
    else (i, i + hd/2) (rotate-half)."""
    half = hd // 2
    if interleaved:
        shape, axis, un = [0, 0, heads, half, 2], 4, [2, 4]
    else:
        shape, axis, un = [0, 0, heads, 2, half], 3, [2, 3]
    y = b.node("Reshape", [x, b.i64("rope_shape", shape)])[0]
    x0, x1 = b.node("Split", [y], 2, axis=axis, num_outputs=2)
    c = b.node("Unsqueeze", [cos, b.i64("axes", un)])[0]
    s = b.node("Unsqueeze", [sin, b.i64("axes", un)])[0]
    o0 = b.node("Sub", [b.node("Mul", [x0, c])[0], b.node("Mul", [x1, s])[0]])[0]
    o1 = b.node("Add", [b.node("Mul", [x1, c])[0], b.node("Mul", [x0, s])[0]])[0]
    out = b.node("Concat", [o0, o1], axis=axis)[0]
    return b.node("Reshape", [out, b.i64("flat", [0, 0, heads * hd])])[0]


def _head_norm(b: _Builder, x: str, weight: np.ndarray, name: str, eps: float, hd: int) -> str:
    """RMSNorm over each head_dim slice of x [B, S, heads*head_dim] (qwen3 q_norm / k_norm)."""
    head_shape = b.i64("head_shape", [0, 0, -1, hd])
    flat_shape = b.i64("flat_shape", [0, 0, -1])
    y = b.node("Reshape", [x, head_shape])[0]
    y = b.node("SimplifiedLayerNormalization", [y, b.init(name, weight.astype(np.float32))], axis=-1, epsilon=eps)[0]
    return b.node("Reshape", [y, flat_shape])[0]


def _pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points [N, nb] in MatMulNBits layout: 8 bits as is; 4 bits two per byte (low
    nibble first), each row padded to a whole byte."""
    if bits == 8:
        return zp.reshape(-1)
    n, nb = zp.shape
    padded = np.zeros((n, nb + nb % 2), np.uint8)
    padded[:, :nb] = zp
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1)

