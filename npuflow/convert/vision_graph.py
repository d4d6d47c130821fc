"""Build the vision encoder ONNX graph (vision tower + connector) of a vision-language checkpoint.

Input   pixel_values  float32 [N, 3, S, S]    N tiles, resized and normalized by npuflow.vision
Output  image_embeds  float32 [N, T, hidden]  T rows per tile, hidden = the text model's width

Families (one module each): "idefics3" (SigLIP tower, pixel shuffle, one linear: vision_siglip.py)
and "internvl" (InternViT tower with CLS token and layer scale, pixel shuffle, LayerNorm + MLP
projector: vision_internvl.py). Tiles are always full (S x S, no padding), so attention needs no
mask and SigLIP's position ids are simply 0..P-1.

The pieces both towers share live here: patch embedding (a strided Conv), pre-norm transformer
layers (one fused q|k|v MatMul, com.microsoft MultiHeadAttention, MLP with the config's
activation) and the pixel shuffle. Weights stay float32; the graph is built with the onnx helper
API from numpy arrays (no torch at conversion time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import MS, _Builder
from .spec import ConvertError
from .weights import Linear

Getter = Callable[[str], np.ndarray]
Progress = Callable[[str, int], None]
FAMILIES = ("idefics3", "internvl")


@dataclass(frozen=True)
class VisionShape:
    tile_size: int          # S: the encoder takes [N, 3, S, S]
    tokens_per_tile: int    # T: it gives [N, T, hidden]
    hidden: int


def build_vision_graph(family: str, cfg: dict, get: Getter,
                       progress: Progress = lambda what, pct: None) -> onnx.ModelProto:
    """cfg is the checkpoint's whole config.json; get(name) returns a float32 tensor by its
    checkpoint name. Raises ConvertError for a family or setting this builder does not cover."""
    if family == "idefics3":
        from .vision_siglip import build_idefics3
        return build_idefics3(cfg, get, progress)
    if family == "internvl":
        from .vision_internvl import build_internvl
        return build_internvl(cfg, get, progress)
    raise ConvertError(f"unsupported vision family '{family}' (supported: {', '.join(FAMILIES)})")


def vision_shape(model: onnx.ModelProto) -> VisionShape:
    """Tile size, tokens per tile and width, read back from a built graph's input and output."""
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]   # noqa: E731
    _, _, s, _ = dims(model.graph.input[0])
    _, t, h = dims(model.graph.output[0])
    return VisionShape(s, t, h)


class Tensors:
    """Checkpoint tensors under one module prefix, found by probing the prefixes a family's
    checkpoints use (transformers' own save_pretrained names and the hub's older ones)."""

    def __init__(self, get: Getter, prefixes: list[str], probe: str):
        self._get = get
        for p in prefixes:
            try:
                get(p + probe)
            except (ConvertError, KeyError):
                continue
            self.prefix = p
            return
        raise ConvertError(f"checkpoint has no tensor '{prefixes[0] + probe}' (nor under {', '.join(prefixes[1:])})")

    def __call__(self, name: str) -> np.ndarray:
        return np.asarray(self._get(self.prefix + name), dtype=np.float32)

    def maybe(self, name: str) -> np.ndarray | None:
        try:
            return self(name)
        except (ConvertError, KeyError):
            return None


def setting(sub: dict, key: str, default):
    """A config value that may be missing from a hub config.json (transformers' class default)."""
    v = sub.get(key)
    return default if v is None else v


def square(value, what: str) -> int:
    """An image/patch size given as int or [h, w]; only square ones are supported."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConvertError(f"non-square {what} {list(value)} is not supported")
        value = value[0]
    return int(value)


def patch_embed(b: _Builder, x: str, weight: np.ndarray, bias: np.ndarray | None, patch: int) -> str:
    """Conv with kernel = stride = patch, flattened to [N, (S/patch)^2, D] in row-major order."""
    ins = [x, b.init(b.name("v.patch.weight"), weight)]
    if bias is not None:
        ins.append(b.init(b.name("v.patch.bias"), bias))
    y = b.node("Conv", ins, kernel_shape=[patch, patch], strides=[patch, patch])[0]
    y = b.node("Reshape", [y, b.i64("patch_flat", [0, weight.shape[0], -1])])[0]
    return b.node("Transpose", [y], perm=[0, 2, 1])[0]


def linear(b: _Builder, x: str, weight: np.ndarray, bias: np.ndarray | None, prefix: str) -> str:
    return b.linear(x, Linear(weight.shape[0], weight.shape[1], 0, weight=weight, bias=bias), prefix)


def layer_norm(b: _Builder, x: str, weight: np.ndarray, bias: np.ndarray | None, eps: float, prefix: str) -> str:
    ins = [x, b.init(prefix + ".weight", weight)]
    if bias is not None:
        ins.append(b.init(prefix + ".bias", bias))
    return b.node("LayerNormalization", ins, axis=-1, epsilon=float(eps))[0]


def rms_norm(b: _Builder, x: str, weight: np.ndarray, eps: float, prefix: str) -> str:
    """x / sqrt(mean(x^2) + eps) * weight in standard ops (onnxruntime fuses them)."""
    ms = b.node("ReduceMean", [b.node("Mul", [x, x])[0], b.i64("axis", [-1])], keepdims=1)[0]
    eps_c = b.init(b.name(prefix + ".eps"), np.array(eps, np.float32))
    inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [ms, eps_c])[0]])[0]])[0]
    return b.node("Mul", [b.node("Mul", [x, inv])[0], b.init(prefix + ".weight", weight)])[0]


def activation(b: _Builder, x: str, name: str) -> str:
    """transformers' ACT2FN names used by these towers and projectors."""
    if name == "gelu":
        return b.node("Gelu", [x], domain=MS)[0]
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):   # the tanh approximation
        return b.node("FastGelu", [x], domain=MS)[0]
    if name == "quick_gelu":
        return b.node("QuickGelu", [x], domain=MS, alpha=1.702)[0]
    if name in ("silu", "swish"):
        return b.node("QuickGelu", [x], domain=MS, alpha=1.0)[0]
    if name == "relu":
        return b.node("Relu", [x])[0]
    raise ConvertError(f"unsupported vision activation '{name}'")


@dataclass
class LayerParams:
    """One pre-norm transformer layer: x += attn(norm1(x)); x += mlp(norm2(x)). Norms are
    functions (builder, input, prefix) -> output so each family picks LayerNorm or RMSNorm."""
    norm1: Callable[[_Builder, str, str], str]
    norm2: Callable[[_Builder, str, str], str]
    q: tuple[np.ndarray, np.ndarray | None]
    k: tuple[np.ndarray, np.ndarray | None]
    v: tuple[np.ndarray, np.ndarray | None]
    o: tuple[np.ndarray, np.ndarray | None]
    fc1: tuple[np.ndarray, np.ndarray | None]
    fc2: tuple[np.ndarray, np.ndarray | None]
    heads: int
    act: str
    q_norm: Callable[[_Builder, str, str], str] | None = None    # applied to all of q (and k)
    k_norm: Callable[[_Builder, str, str], str] | None = None


def encoder_layer(b: _Builder, x: str, p: LayerParams, prefix: str) -> str:
    d = p.q[0].shape[0]
    h = p.norm1(b, x, prefix + ".norm1")
    qkv_w = np.concatenate([p.q[0], p.k[0], p.v[0]])
    biases = [p.q[1], p.k[1], p.v[1]]
    qkv_b = None if all(v is None for v in biases) else np.concatenate(
        [np.zeros(d, np.float32) if v is None else v for v in biases])
    qkv = linear(b, h, qkv_w, qkv_b, prefix + ".qkv")
    q, k, v = b.node("Split", [qkv, b.i64(prefix + ".split", [d, d, d])], 3, axis=-1)
    if p.q_norm is not None:
        q = p.q_norm(b, q, prefix + ".q_norm")
        k = p.k_norm(b, k, prefix + ".k_norm")
    a = b.node("MultiHeadAttention", [q, k, v], domain=MS, num_heads=p.heads,
               scale=float((d // p.heads) ** -0.5))[0]
    x = b.node("Add", [x, linear(b, a, *p.o, prefix + ".o")])[0]
    h = p.norm2(b, x, prefix + ".norm2")
    m = activation(b, linear(b, h, *p.fc1, prefix + ".fc1"), p.act)
    return b.node("Add", [x, linear(b, m, *p.fc2, prefix + ".fc2")])[0]


def pixel_shuffle(b: _Builder, x: str, side: int, dim: int, r: int) -> str:
    """[N, side*side, dim] -> [N, (side/r)^2, dim*r*r], ordered as both families' pixel_shuffle:
    r neighbours along a row merge into the channels, then r neighbours along a column, and the
    result is read row-major over the (side/r) x (side/r) grid."""
    if side % r:
        raise ConvertError(f"patch grid {side}x{side} is not divisible by the pixel-shuffle factor {r}")
    n = side // r
    y = b.node("Reshape", [x, b.i64("ps_rows", [-1, side, n, dim * r])])[0]           # [N, h, w/r, r*D]
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3])[0]                               # [N, w/r, h, r*D]
    y = b.node("Reshape", [y, b.i64("ps_cols", [-1, n, n, dim * r * r])])[0]         # [N, w/r, h/r, r*r*D]
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3])[0]                               # [N, h/r, w/r, r*r*D]
    return b.node("Reshape", [y, b.i64("ps_flat", [-1, n * n, dim * r * r])])[0]


def finish(b: _Builder, y: str, tile: int, tokens: int, hidden: int, name: str) -> onnx.ModelProto:
    f32 = TensorProto.FLOAT
    b.nodes.append(helper.make_node("Identity", [y], ["image_embeds"], name="image_embeds_out"))
    graph = helper.make_graph(
        b.nodes, name, [helper.make_tensor_value_info("pixel_values", f32, ["tiles", 3, tile, tile])],
        [helper.make_tensor_value_info("image_embeds", f32, ["tiles", tokens, hidden])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
                              producer_name="npuflow.convert")
    model.ir_version = 10
    return model
