"""A tiny AX package on the onnxruntime mirror, no model download: H = D = 4, KV cache 8,
prefill chunks of 4, so three shape groups (decode, first chunk, second chunk), two layers.
Every layer passes its input through (output = K_cache_out = V_cache_out = input); the post
graph multiplies by a fixed [H, V] matrix. Enough to drive the AX engine's host side."""
import json
import pathlib

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper

from npuflow.engine.ax_ort import SHAPE_GROUPS_KEY

H, C, P, V, LAYERS = 4, 8, 4, 6, 2
BF16 = np.dtype(ml_dtypes.bfloat16)
CFG = {"model_type": "qwen2", "hidden_size": H, "num_attention_heads": 1, "num_key_value_heads": 1,
       "vocab_size": V, "eos_token_id": 5, "max_position_embeddings": C}


def _groups() -> dict:
    ins, outs = [], []
    for kv, s in ((C, 1), (1, P), (P, P)):                 # decode, first chunk (dummy K/V), second chunk
        width = C + 1 if s == 1 else (P if kv == 1 else kv + P)
        ins.append([{"name": "K_cache", "shape": [1, kv, H]}, {"name": "V_cache", "shape": [1, kv, H]},
                    {"name": "indices", "shape": [1, s]}, {"name": "input", "shape": [1, s, H]},
                    {"name": "mask", "shape": [1, s, width]}])
        outs.append([{"name": n, "shape": [1, s, H]} for n in ("K_cache_out", "V_cache_out", "output")])
    return {"inputs": ins, "outputs": outs}


def _save(nodes, inputs, outputs, path: pathlib.Path, groups=None, inits=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    if groups:
        meta = model.metadata_props.add()
        meta.key, meta.value = SHAPE_GROUPS_KEY, json.dumps(groups)
    onnx.save(model, str(path))


def write_tiny(root: pathlib.Path) -> pathlib.Path:
    root.mkdir(parents=True)
    bf = TensorProto.BFLOAT16
    vi = helper.make_tensor_value_info
    ins = [vi("K_cache", bf, [1, "k", H]), vi("V_cache", bf, [1, "k", H]),
           vi("indices", TensorProto.UINT32, [1, "s"]), vi("input", bf, [1, "s", H]), vi("mask", bf, [1, "s", "w"])]
    outs = [vi(n, bf, [1, "s", H]) for n in ("K_cache_out", "V_cache_out", "output")]
    nodes = [helper.make_node("Identity", ["input"], [n]) for n in ("K_cache_out", "V_cache_out", "output")]
    for i in range(LAYERS):
        _save(nodes, ins, outs, root / f"qwen2_p{P}_l{i}_together.onnx", _groups())
    w = helper.make_tensor("w", TensorProto.FLOAT, [H, V], (np.arange(H * V) % 7 - 3).astype(np.float32).tolist())
    post = [helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["xf", "w"], ["logits"])]
    _save(post, [vi("input", bf, [1, 1, H])], [vi("logits", TensorProto.FLOAT, [1, 1, V])],
          root / "qwen2_post.onnx", inits=[w])
    emb = (np.arange(V * H, dtype=np.float32).reshape(V, H) / 8).astype(BF16)
    emb.tofile(root / "model.embed_tokens.weight.bfloat16.bin")
    (root / "config.json").write_text(json.dumps(CFG))
    (root / "tokenizer.json").write_text("{}")
    return root
