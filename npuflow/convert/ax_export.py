"""`npuflow convert --layout ax`: a ModelSpec as a pulsar2-style directory of per-layer ONNX graphs.

Layout (what `pulsar2 llm_build` writes, with .onnx where the board has .axmodel):
  {arch}_p{P}_l{i}_together.onnx   layer i, AX signature (ax_graph.py); shape groups in metadata
  {arch}_post.onnx                 final norm + lm_head
  model.embed_tokens.weight.bfloat16.bin   raw bf16 [vocab, hidden]
  config.json                      HF-style dims + the ax-llm keys (template_filename_axmodel,
                                   axmodel_num, filename_post_axmodel, filename_tokens_embed,
                                   tokens_embed_num, tokens_embed_size) + prefill_len, kv_cache_len
  post_config.json                 vendor sampling defaults
  tokenizer.json, tokenizer_config.json (chat_template, eos/bos)
  vision_model.onnx (+ .data)      a VLM's vision encoder with the vendor's signature
                                   (ax_vision_export.py); config.json then also holds
                                   filename_image_encoder_axmodel and the "vision" section

Convention for shape groups (ONNX has none): each layer file holds ONE graph with symbolic dims;
its metadata key `npuflow.ax.shape_groups` lists, per group, the concrete shapes (those of pulsar2 packages):
group 0 decode (K/V [1,C,D], S=1, mask [1,1,C+1]); group 1 first chunk (K/V a [1,1,D] dummy,
S=P, mask [1,P,P]); group g>=2 (K/V [1,(g-1)P,D], mask [1,P,gP]), for g up to C/P.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable

import ml_dtypes
import onnx

from ..engine.ax_ort import CAUSAL_MASK_KEY, SHAPE_GROUPS_KEY
from .ax_graph import build_layer_graph, build_post_graph
from .spec import ConvertError, ModelSpec

EMBED_FILE = "model.embed_tokens.weight.bfloat16.bin"
GRAPH_FORMAT = "onnx-ax-2"     # bumped whenever the exported graphs compute something different


def shape_groups(hidden: int, kv_dim: int, kv_len: int, prefill_len: int) -> dict:
    """The per-group input/output shapes of a layer graph."""
    C, P, H, D = kv_len, prefill_len, hidden, kv_dim
    ins, outs = [], []
    for g in range(C // P + 1):
        lk, s, m = (C, 1, C + 1) if g == 0 else ((1 if g == 1 else (g - 1) * P), P, (g - 1) * P + P)
        ins.append([{"name": "K_cache", "shape": [1, lk, D]}, {"name": "V_cache", "shape": [1, lk, D]},
                    {"name": "indices", "shape": [1, s]}, {"name": "input", "shape": [1, s, H]},
                    {"name": "mask", "shape": [1, s, m]}])
        outs.append([{"name": "K_cache_out", "shape": [1, s, D]}, {"name": "V_cache_out", "shape": [1, s, D]},
                     {"name": "output", "shape": [1, s, H]}])
    return {"inputs": ins, "outputs": outs}


def _save(model: onnx.ModelProto, path: pathlib.Path, groups: dict | None = None) -> None:
    if groups is not None:
        for key, value in ((SHAPE_GROUPS_KEY, json.dumps(groups)), (CAUSAL_MASK_KEY, "mask")):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))


def write_ax_layout(spec: ModelSpec, root: pathlib.Path, *, model_id: str, kv_len: int, prefill_len: int,
                    progress: Callable[[str, int], None] = lambda what, pct: None, accuracy_level: int = 4,
                    vision_input: str = "NHWC") -> None:
    """Fill the (empty) directory root; config.json goes last (a directory without it is unfinished)."""
    if prefill_len < 1 or kv_len < prefill_len or kv_len % prefill_len:
        raise ConvertError(f"kv_cache_len {kv_len} must be a positive multiple of prefill_len {prefill_len}")
    if kv_len > spec.context_length:
        raise ConvertError(f"kv_cache_len {kv_len} exceeds the model's context length {spec.context_length}")
    arch = spec.architecture
    template = f"{arch}_p{prefill_len}_l%d_together.onnx"
    post = f"{arch}_post.onnx"

    progress("embedding", 0)
    emb = spec.embedding().dequantize().astype(ml_dtypes.bfloat16)
    emb.tofile(root / EMBED_FILE)
    del emb

    groups = shape_groups(spec.hidden, spec.kv_heads * spec.head_dim, kv_len, prefill_len)
    for i, lw in spec.layers_iter():
        progress(f"layer {i}", int(100 * i / spec.layers))
        _save(build_layer_graph(spec, i, lw, kv_len + prefill_len, accuracy_level), root / (template % i), groups)
    progress("output head", 100)
    _save(build_post_graph(spec, accuracy_level), root / post)
    from .ax_vision_export import write_ax_vision
    vision = write_ax_vision(spec, root, progress, vision_input) or {}

    (root / "tokenizer.json").write_text(spec.tokenizer_json, encoding="utf-8")
    (root / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": spec.chat_template, "eos_token_ids": spec.eos_token_ids,
        "bos_token_id": spec.bos_token_id}, indent=2))
    (root / "post_config.json").write_text(json.dumps({
        "enable_temperature": True, "temperature": 1.0, "enable_repetition_penalty": False,
        "repetition_penalty": 1.0, "penalty_window": 20, "enable_top_p_sampling": True, "top_p": 1.0,
        "enable_top_k_sampling": False, "top_k": 1}, indent=2))
    config = {
        "model_type": arch, "hidden_size": spec.hidden, "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim,
        "intermediate_size": spec.ffn, "vocab_size": spec.vocab, "rms_norm_eps": spec.rms_eps,
        "rope_theta": spec.rope_theta, "max_position_embeddings": spec.context_length,
        "eos_token_id": spec.eos_token_ids, "bos_token_id": spec.bos_token_id, "tie_word_embeddings": spec.tied,
        "template_filename_axmodel": template, "axmodel_num": spec.layers, "filename_post_axmodel": post,
        "filename_tokens_embed": EMBED_FILE, "tokens_embed_num": spec.vocab, "tokens_embed_size": spec.hidden,
        "prefill_len": prefill_len, "kv_cache_len": kv_len, "model_name": model_id,
        "post_config_path": "post_config.json", "npuflow_graph_format": GRAPH_FORMAT, **vision,
    }
    tmp = root / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(root / "config.json")
