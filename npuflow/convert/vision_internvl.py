"""InternVL (transformers' InternVLForConditionalGeneration) vision graph: InternVLVisionModel
(patch embeddings, CLS token, absolute position embeddings, pre-norm layers with layer scale,
LayerNorm or RMSNorm, optional q/k RMSNorm), the vision_feature_layer selection, the CLS row
dropped ('default' strategy), pixel shuffle by downsample_ratio, and the multi_modal_projector
(LayerNorm, linear_1, act, linear_2).

Layer scale (lambda_1, lambda_2) is folded into the attention output projection and fc2.
Only the layers up to the selected feature layer are built.
"""
from __future__ import annotations

import onnx

from .graph import _Builder
from .spec import ConvertError
from .vision_graph import (Getter, LayerParams, Progress, Tensors, activation, encoder_layer, finish,
                           layer_norm, linear, patch_embed, pixel_shuffle, rms_norm, setting, square)

VISION_PREFIXES = ["vision_tower.", "model.vision_tower."]
PROJECTOR_PREFIXES = ["multi_modal_projector.", "model.multi_modal_projector."]
QK_NORM_EPS = 1e-6          # InternVLVisionRMSNorm's default; the config's eps is not passed to it
PROJECTOR_NORM_EPS = 1e-5   # the projector's nn.LayerNorm default


def build_internvl(cfg: dict, get: Getter, progress: Progress) -> onnx.ModelProto:
    vc = cfg.get("vision_config") or {}
    layers = int(setting(vc, "num_hidden_layers", 24))
    heads = int(setting(vc, "num_attention_heads", 16))
    tile = square(setting(vc, "image_size", 448), "image_size")
    patch = square(setting(vc, "patch_size", 14), "patch_size")
    eps = float(setting(vc, "layer_norm_eps", 1e-6))
    act = str(setting(vc, "hidden_act", "gelu"))
    norm_type = str(setting(vc, "norm_type", "layer_norm"))
    qk_norm = bool(setting(vc, "use_qk_norm", False))
    final_norm = not bool(setting(vc, "use_mean_pooling", True))
    ratio = float(setting(cfg, "downsample_ratio", 0.5))
    r = int(1 / ratio)
    if abs(r * ratio - 1.0) > 1e-9:
        raise ConvertError(f"downsample_ratio {ratio} is not 1/n")
    strategy = setting(cfg, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ConvertError(f"vision_feature_select_strategy '{strategy}' is not supported (only 'default')")
    feature_layer = setting(cfg, "vision_feature_layer", -1)
    if not isinstance(feature_layer, int):
        raise ConvertError(f"vision_feature_layer {feature_layer!r} is not supported (one layer index only)")
    if not -(layers + 1) <= feature_layer <= layers:
        raise ConvertError(f"vision_feature_layer {feature_layer} is out of range for {layers} layers")
    if feature_layer == -1:     # last_hidden_state: every layer, then the tower's final norm (if any)
        used = layers
    else:                       # hidden_states[k]: k = 0 is the embeddings, k = i the output of layer i
        used, final_norm = feature_layer % (layers + 1), False
    if norm_type not in ("layer_norm", "rms_norm"):
        raise ConvertError(f"vision norm_type '{norm_type}' is not supported")
    t = Tensors(get, VISION_PREFIXES, "embeddings.patch_embeddings.projection.weight")
    m = Tensors(get, PROJECTOR_PREFIXES, "linear_1.weight")

    b = _Builder()
    w = t("embeddings.patch_embeddings.projection.weight")
    dim, side = w.shape[0], tile // patch
    x = patch_embed(b, "pixel_values", w, t.maybe("embeddings.patch_embeddings.projection.bias"), patch)
    cls = t("embeddings.cls_token").reshape(1, 1, dim)
    batch = b.node("Shape", [x], start=0, end=1)[0]
    cls_shape = b.node("Concat", [batch, b.i64("cls_rest", [1, dim])], axis=0)[0]
    cls_rows = b.node("Expand", [b.init("v.cls", cls), cls_shape])[0]
    x = b.node("Concat", [cls_rows, x], axis=1)[0]                         # [N, 1 + P, D]
    if setting(vc, "use_absolute_position_embeddings", True):
        pos = t("embeddings.position_embeddings")
        if pos.size != (side * side + 1) * dim:
            raise ConvertError(f"position embeddings {list(pos.shape)} do not fit a {side}x{side} patch grid "
                               f"(interpolated position embeddings are not supported)")
        x = b.node("Add", [x, b.init("v.pos", pos.reshape(1, side * side + 1, dim))])[0]

    def norm(name: str):
        weight = t(name + ".weight")
        if norm_type == "rms_norm":
            return lambda bb, h, prefix: rms_norm(bb, h, weight, eps, prefix)
        bias = t.maybe(name + ".bias")
        return lambda bb, h, prefix: layer_norm(bb, h, weight, bias, eps, prefix)

    def head_norm(name: str):
        weight = t(name + ".weight")
        return lambda bb, h, prefix: rms_norm(bb, h, weight, QK_NORM_EPS, prefix)

    for i in range(used):
        progress(f"vision layer {i}", int(100 * i / max(used, 1)))
        p = f"encoder.layer.{i}."
        pair = lambda name: (t(p + name + ".weight"), t.maybe(p + name + ".bias"))   # noqa: E731
        lam1, lam2 = t(p + "lambda_1"), t(p + "lambda_2")
        ow, ob = pair("attention.projection_layer")
        fw, fb = pair("mlp.fc2")
        params = LayerParams(
            norm1=norm(p + "layernorm_before"), norm2=norm(p + "layernorm_after"),
            q=pair("attention.q_proj"), k=pair("attention.k_proj"), v=pair("attention.v_proj"),
            o=(ow * lam1[:, None], None if ob is None else ob * lam1),
            fc1=pair("mlp.fc1"), fc2=(fw * lam2[:, None], None if fb is None else fb * lam2),
            heads=heads, act=act,
            q_norm=head_norm(p + "attention.q_norm") if qk_norm else None,
            k_norm=head_norm(p + "attention.k_norm") if qk_norm else None)
        x = encoder_layer(b, x, params, f"v.l{i}")
    progress("vision projector", 100)
    if final_norm:             # always an nn.LayerNorm, whatever norm_type says
        x = layer_norm(b, x, t("layernorm.weight"), t.maybe("layernorm.bias"), eps, "v.final_norm")
    x = b.node("Slice", [x, b.i64("cls_end", [1]), b.i64("seq_end", [1 + side * side]), b.i64("seq_axis", [1])])[0]
    x = pixel_shuffle(b, x, side, dim, r)
    ln_w = m("layer_norm.weight")
    if ln_w.shape[0] != dim * r * r:
        raise ConvertError(f"projector takes {ln_w.shape[0]} features, pixel shuffle gives {dim * r * r}")
    x = layer_norm(b, x, ln_w, m.maybe("layer_norm.bias"), PROJECTOR_NORM_EPS, "v.mm_norm")
    x = linear(b, x, m("linear_1.weight"), m.maybe("linear_1.bias"), "v.mm1")
    x = activation(b, x, str(setting(cfg, "projector_hidden_act", "gelu")))
    w2 = m("linear_2.weight")
    y = linear(b, x, w2, m.maybe("linear_2.bias"), "v.mm2")
    return finish(b, y, tile, (side // r) ** 2, int(w2.shape[0]), "internvl_vision")
