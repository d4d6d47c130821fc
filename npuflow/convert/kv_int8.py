"""An int8 KV cache for the decoder graph: GroupQueryAttention keeps K and V as int8 with one
float scale per (kv head, channel), fixed when the package is made.

onnxruntime's CPU GroupQueryAttention stores K (after rotary) and V quantized with static
per-channel scales (k_quant_type / v_quant_type PER_CHANNEL, scales [1, kv_heads, 1, head_dim])
and attends over them directly; measured here it runs faster than the float32 cache (at 1,500
positions 2.0x per layer, 2.1x for 8 rows) besides taking a quarter of the memory, where a
float16 cache runs slower than float32 (a conversion each step).

The scales come from the model itself: the float32 graph prefills a calibration text and the
largest |K| and |V| each channel reaches sets its scale, with headroom (HEADROOM) for inputs that
reach further. Rotary turns K's channel pairs into each other as positions change, so both
channels of a pair get the pair's largest norm, which no position can exceed. The calibration
prefill runs its MatMulNBits in float32 (accuracy_level 0): with the int8 activations of the
serving graph, onnxruntime 1.23 and 1.32 measured scales up to 7 % apart, which changed the int8
cache's greedy tokens; in float32 they agree within 3e-6.
"""
from __future__ import annotations

import contextlib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HEADROOM = 1.25       # scale = HEADROOM * max|x| / 127: values up to 1.25x the calibration's still fit
GQA_K_SCALE = 12      # GroupQueryAttention's input index of k_scale (v_scale follows)

CALIBRATION_TEXT = """The history of the printing press begins in the fifteenth century, when Johannes Gutenberg
combined movable metal type, oil-based ink and a wooden press. Within fifty years, printing shops had
opened in more than two hundred cities across Europe.
Q: What is the capital of France? A: Paris. Q: How many legs does a spider have? A: Eight.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;
{"id": 42, "tags": ["red", "green"], "price": 19.99, "in_stock": true}
1 + 1 = 2, 12 * 12 = 144, 3.14159, 2026-12-03 10:45:00, +49 30 1234567, 0x7fffffff.
Der schnelle braune Fuchs springt über den faulen Hund. Le vif renard brun saute par-dessus le chien
paresseux. El rápido zorro marrón salta sobre el perro perezoso. 素早い茶色の狐。快速的棕色狐狸。
- buy milk
- call Anna at 5 pm
Dear team, thank you for your patience while we moved the servers; everything is back online now.
"""


def calibration_ids(tokenizer_json: str, chat_template: str = "") -> list[int]:
    """Token ids of the calibration text, rendered as a conversation by the model's chat template
    when it has one (so the template's own tokens, which often reach the largest K and V, are
    among those measured)."""
    from tokenizers import Tokenizer
    text = CALIBRATION_TEXT
    if chat_template:
        from ..tokenizer.chat_template import ChatTemplate, MessageIn, TemplateError
        try:
            text = ChatTemplate(chat_template).render(
                [MessageIn(role="system", content="You are a helpful assistant."),
                 MessageIn(role="user", content=text),
                 MessageIn(role="assistant", content="Here is a summary of what you wrote.")],
                add_generation_prompt=False)
        except TemplateError:
            pass
    return Tokenizer.from_str(tokenizer_json).encode(text, add_special_tokens=True).ids


def channel_scales(k: np.ndarray, v: np.ndarray, interleaved: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel scales [1, kv_heads, 1, head_dim] from K and V [kv_heads, positions, head_dim]."""
    hd = k.shape[-1]
    if interleaved:
        pairs = np.sqrt(k[..., 0::2] ** 2 + k[..., 1::2] ** 2).max(axis=1)      # [kv, hd/2]
        kmax = np.repeat(pairs, 2, axis=-1)
    else:
        half = hd // 2
        pairs = np.sqrt(k[..., :half] ** 2 + k[..., half:] ** 2).max(axis=1)
        kmax = np.concatenate([pairs, pairs], axis=-1)
    vmax = np.abs(v).max(axis=1)
    return tuple(np.maximum(HEADROOM * m / 127.0, 1e-6).astype(np.float32)[None, :, None, :]
                 for m in (kmax, vmax))


@contextlib.contextmanager
def float_matmuls(model: onnx.ModelProto):
    """Within the block, every MatMulNBits of model computes in float32 (accuracy_level 0)."""
    levels = [a for n in model.graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"]
    saved = [a.i for a in levels]
    for a in levels:
        a.i = 0
    try:
        yield
    finally:
        for a, i in zip(levels, saved):
            a.i = i


def calibrate(model: onnx.ModelProto, embed, ids: list[int], *, kv_heads: int, head_dim: int,
              rope_theta: float, interleaved: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run the float32-cache graph over ids (one prefill) and return each layer's (k, v) scales.
    embed(ids) -> [n, hidden] float32 embeddings."""
    import onnxruntime as ort

    from ..engine.cpu import rotary_tables
    from ..engine.ort_options import session_options
    n = len(ids)
    layers = sum(1 for i in model.graph.input if i.name.startswith("past_key."))
    with float_matmuls(model):
        blob = model.SerializeToString()
    sess = ort.InferenceSession(blob, session_options(2), providers=["CPUExecutionProvider"])
    cos, sin = rotary_tables(n + 1, head_dim, rope_theta)
    feeds = {"inputs_embeds": np.asarray(embed(ids), np.float32)[None], "seqlens_k": np.array([n - 1], np.int32),
             "total_seq_len": np.array(n, np.int32), "cos_cache": cos, "sin_cache": sin,
             "logit_index": np.array([n - 1], np.int64)}
    for i in range(layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}.{i}"] = np.zeros((1, kv_heads, n, head_dim), np.float32)
    names = [f"present_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    outs = sess.run(names, feeds)
    return [channel_scales(outs[2 * i][0], outs[2 * i + 1][0], interleaved) for i in range(layers)]


def apply_int8_kv(model: onnx.ModelProto, scales: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Turn the graph's KV inputs and outputs to int8 and give every GroupQueryAttention its
    layer's scales (in place)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name.startswith(("past_key.", "past_value.", "present_key.", "present_value.")):
            vi.type.tensor_type.elem_type = TensorProto.INT8
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        layer = int(node.input[3].split(".")[1])           # past_key.{i}
        ks, vs = scales[layer]
        model.graph.initializer.extend([numpy_helper.from_array(ks, f"l{layer}.k_scale"),
                                        numpy_helper.from_array(vs, f"l{layer}.v_scale")])
        while len(node.input) < GQA_K_SCALE:
            node.input.append("")
        node.input.extend([f"l{layer}.k_scale", f"l{layer}.v_scale"])
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
