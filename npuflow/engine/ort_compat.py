"""Keep the graphs' numerics independent of the installed onnxruntime release, where that can be
done exactly.

onnxruntime's CPU SimplifiedLayerNormalization (RMSNorm) kernel changed. Up to 1.23 (the last
release with Python 3.10 wheels, which the boards run) it sums x*x in one float32 accumulator,
left to right, and computes x / sqrt(ms + eps) * g. The releases that Python 3.11+ installs
(>= 1.30, measured on 1.32) sum with eight float32 lanes and fused multiply-adds, element k into
lane k % 8, add the lanes pairwise (0..3 + 4..7, then halves again), and compute
(x * (1 / sqrt(ms + eps))) * g. The two differ by an ulp or two in most elements (1.23's is the
less accurate), and the graphs then round activations to int8 per block of 32 (MatMulNBits
accuracy_level 4), which turns those ulps into different roundings: on the default model, greedy
decoding of the documented test vector splits at the third token.

So on the older releases each SimplifiedLayerNormalization is replaced, when the session is
built, by standard ops that compute exactly what the newer kernel does: squares in float64
(exact), each lane's running sum rounded to float32 after every add (a float64 add of an exact
product and a float32, rounded once, is the fused multiply-add's result), the same pairwise lane
reduction, then Div, Add, Sqrt, Reciprocal and two Muls in float32, each correctly rounded. It
was checked bit-exact against 1.32's kernel for norm sizes 16..4096 (multiples of 8) over inputs
from 1e-3 to 30 in scale; other sizes (below 16, or not a multiple of 8, where the kernel takes
other paths) keep the kernel. The newer releases run the graphs untouched. The reference is the
x86 (AVX2) kernel, on which the test vectors were recorded.

What remains different: GroupQueryAttention. The newer releases run float attention through a
tiled online-softmax kernel for prefill and a GEMV kernel for decode (MlasFlashAttentionGQA,
off with ORT_GQA_DISABLE_FLASH_ATTENTION=1, which makes 1.32 bit-identical to 1.23 here); 1.23
has only the unfused path (GEMM, softmax, GEMM). Their outputs differ by an ulp in 60-90% of the
elements, which the int8 activation rounding again amplifies. That kernel is not reproduced here.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..logs import get_logger

log = get_logger("engine.ort_compat")


def _version(text: str) -> tuple[int, int]:
    parts = text.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


# The single switch: onnxruntime releases whose SimplifiedLayerNormalization kernel is the old
# single-accumulator one (all before 1.30, the oldest release the project installs on 3.11+).
EMULATE_RMSNORM = _version(ort.__version__) < (1, 30)

_LANES = 8
_MIN_SIZE = 16


def session_source(src: str | os.PathLike | bytes, opts: ort.SessionOptions) -> str | bytes:
    """What to hand to ort.InferenceSession for the model at src (a path, or serialized bytes):
    src itself on the newer releases; on the older ones, the model with its RMSNorms replaced,
    serialized (its external data, if any, is then read from the model's folder: opts is told
    where), or src when it has none to replace."""
    if not EMULATE_RMSNORM:
        return src if isinstance(src, bytes) else os.fspath(src)
    if isinstance(src, bytes):
        model = onnx.load(io.BytesIO(src), load_external_data=False)
        if not replace_rmsnorm(model):
            return src
    else:
        path = os.fspath(src)
        model = onnx.load(path, load_external_data=False)
        if not replace_rmsnorm(model):
            return path
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      os.path.dirname(os.path.abspath(path)))
    return model.SerializeToString()


def replace_rmsnorm(model: onnx.ModelProto) -> int:
    """Replace, in place, every SimplifiedLayerNormalization of model's main graph whose scale is
    an initializer of a supported size (see the module docstring). Returns how many it replaced."""
    g = model.graph
    sizes = {i.name: int(np.prod(i.dims)) for i in g.initializer}
    nodes: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        size = sizes.get(n.input[1]) if len(n.input) > 1 else None
        outs = [o for o in n.output[1:] if o]
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), -1)
        if (n.op_type == "SimplifiedLayerNormalization" and n.domain in ("", "ai.onnx") and size
                and size % _LANES == 0 and size >= _MIN_SIZE and not outs and axis == -1):
            eps = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"), 1e-5)
            new, inits = _rmsnorm_nodes(n.input[0], n.input[1], n.output[0], size, float(eps), f"_rms{done}")
            nodes += new
            g.initializer.extend(inits)
            done += 1
        else:
            nodes.append(n)
    if done:
        del g.node[:]
        g.node.extend(nodes)
        log.info("rmsnorm emulated for this onnxruntime", onnxruntime=ort.__version__, nodes=done)
    return done


def _rmsnorm_nodes(x: str, scale: str, out: str, size: int, eps: float,
                   p: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, arr: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), p + name))
        return p + name

    def node(op: str, ins: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [f"{p}_{len(nodes)}_{k}" for k in range(n_out)]
        nodes.append(helper.make_node(op, ins, outs, name=f"{p}_{op}_{len(nodes)}", **attrs))
        return outs

    chunks = size // _LANES
    rows = node("Reshape", [x, const("rows", np.array([-1, size], np.int64))])[0]            # [N, size]
    xd = node("Cast", [node("Reshape", [x, const("lanes", np.array([-1, chunks, _LANES], np.int64))])[0]],
              to=TensorProto.DOUBLE)[0]
    sq = node("Mul", [xd, xd])[0]                                   # exact: 24-bit by 24-bit
    parts = node("Split", [sq, const("chunks", np.ones(chunks, np.int64))], chunks, axis=1)
    acc = node("Cast", [parts[0]], to=TensorProto.FLOAT)[0]        # [N, 1, 8]
    for part in parts[1:]:                                          # acc = fma(x, x, acc), per lane
        wide = node("Cast", [acc], to=TensorProto.DOUBLE)[0]
        acc = node("Cast", [node("Add", [wide, part])[0]], to=TensorProto.FLOAT)[0]
    width = _LANES
    while width > 1:                                                # lanes 0..w/2-1 + w/2..w-1
        width //= 2
        lo, hi = node("Split", [acc, const(f"half{width}", np.array([width, width], np.int64))], 2, axis=2)
        acc = node("Add", [lo, hi])[0]
    total = node("Reshape", [acc, const("col", np.array([-1, 1], np.int64))])[0]             # [N, 1]
    ms = node("Div", [total, const("size", np.array(size, np.float32))])[0]
    inv = node("Reciprocal", [node("Sqrt", [node("Add", [ms, const("eps", np.array(eps, np.float32))])[0]])[0]])[0]
    y = node("Mul", [node("Mul", [rows, inv])[0], scale])[0]
    nodes.append(helper.make_node("Reshape", [y, node("Shape", [x])[0]], [out], name=f"{p}_Reshape_out"))
    return nodes, inits
