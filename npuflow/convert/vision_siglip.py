"""Idefics3 / SmolVLM vision graph: the SigLIP tower as Idefics3VisionTransformer computes it for
full tiles, then the connector (pixel shuffle by scale_factor, modality_projection.proj without bias).

Position ids of a full tile are 0..P-1 (P = (S/patch)^2). transformers derives them through
bucketize over float32 fractional coordinates, which for a few grid sizes (19, 25, 29 patches per
side, ...) rounds some ids one down; the usual grids (32 for 512/16, 26 for 364/14, 27 for 384/14)
give exactly 0..P-1, and so does this graph for every grid.
"""
from __future__ import annotations

import onnx

from .graph import _Builder
from .spec import ConvertError
from .vision_graph import (Getter, LayerParams, Progress, Tensors, encoder_layer, finish, layer_norm,
                           linear, patch_embed, pixel_shuffle, setting, square)

VISION_PREFIXES = ["model.vision_model.", "vision_model."]
CONNECTOR_PREFIXES = ["model.connector.", "connector."]


def build_idefics3(cfg: dict, get: Getter, progress: Progress) -> onnx.ModelProto:
    vc = cfg.get("vision_config") or {}
    layers = int(setting(vc, "num_hidden_layers", 12))
    heads = int(setting(vc, "num_attention_heads", 16))
    tile = square(setting(vc, "image_size", 224), "image_size")
    patch = square(setting(vc, "patch_size", 32), "patch_size")
    eps = float(setting(vc, "layer_norm_eps", 1e-6))
    act = str(setting(vc, "hidden_act", "gelu_pytorch_tanh"))
    r = int(setting(cfg, "scale_factor", 2))
    t = Tensors(get, VISION_PREFIXES, "embeddings.patch_embedding.weight")
    c = Tensors(get, CONNECTOR_PREFIXES, "modality_projection.proj.weight")

    b = _Builder()
    w = t("embeddings.patch_embedding.weight")
    dim, side = w.shape[0], tile // patch
    x = patch_embed(b, "pixel_values", w, t.maybe("embeddings.patch_embedding.bias"), patch)
    pos = t("embeddings.position_embedding.weight")
    if pos.shape != (side * side, dim):
        raise ConvertError(f"position embeddings {list(pos.shape)} do not fit a {side}x{side} patch grid of width {dim}")
    x = b.node("Add", [x, b.init("v.pos", pos[None])])[0]

    def ln(name: str):
        weight, bias = t(name + ".weight"), t.maybe(name + ".bias")
        return lambda bb, h, prefix: layer_norm(bb, h, weight, bias, eps, prefix)

    for i in range(layers):
        progress(f"vision layer {i}", int(100 * i / layers))
        p = f"encoder.layers.{i}."
        pair = lambda name: (t(p + name + ".weight"), t.maybe(p + name + ".bias"))   # noqa: E731
        params = LayerParams(
            norm1=ln(p + "layer_norm1"), norm2=ln(p + "layer_norm2"),
            q=pair("self_attn.q_proj"), k=pair("self_attn.k_proj"), v=pair("self_attn.v_proj"),
            o=pair("self_attn.out_proj"), fc1=pair("mlp.fc1"), fc2=pair("mlp.fc2"), heads=heads, act=act)
        x = encoder_layer(b, x, params, f"v.l{i}")
    progress("vision connector", 100)
    x = ln("post_layernorm")(b, x, "v.post_norm")
    x = pixel_shuffle(b, x, side, dim, r)
    proj = c("modality_projection.proj.weight")
    if proj.shape[1] != dim * r * r:
        raise ConvertError(f"modality projection takes {proj.shape[1]} features, pixel shuffle gives {dim * r * r}")
    y = linear(b, x, proj, c.maybe("modality_projection.proj.bias"), "v.proj")
    return finish(b, y, tile, (side // r) ** 2, int(proj.shape[0]), "idefics3_vision")
