"""Read a Hugging Face embedding checkpoint folder into an EmbedSpec.

Two families:
- **BERT-family sentence encoders** (`model_type` bert): word + position + token-type embeddings,
  a post-LayerNorm encoder with GELU and bidirectional attention. Tensors may sit under `bert.`
  (a BertForMaskedLM / BertForPreTraining checkpoint) or at the top (BertModel).
- **Qwen3-Embedding** (`model_type` qwen3 with a sentence-transformers `modules.json`): the qwen3
  decoder run without a KV cache, causal, pooled at the last token.

Pooling and normalisation come from sentence-transformers' files when the folder has them:
`modules.json` lists the modules in order (Transformer, Pooling, Normalize); the Pooling
module's `config.json` (usually `1_Pooling/config.json`) says `pooling_mode_cls_token`,
`pooling_mode_mean_tokens` or `pooling_mode_lasttoken`. Without them a BERT folder is mean-pooled
(sentence-transformers' own default for a bare transformers checkpoint) and not normalised, a
qwen3 folder last-token pooled and normalised (its model card's recipe).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .spec import ConvertError

POOLINGS = ("mean", "cls", "last")
# Qwen3-Embedding's model card: a query is "Instruct: {task}\nQuery:{query}", a document plain.
QWEN3_QUERY_FORMAT = "Instruct: {instruction}\nQuery:{text}"
_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_lasttoken": "last"}


@dataclass
class EmbedSpec:
    architecture: str                  # "bert" or "qwen3"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context_length: int
    eps: float                         # LayerNorm (bert) or RMSNorm (qwen3) epsilon
    pooling: str                       # mean | cls | last
    normalize: bool                    # L2-normalise the pooled vector
    get: Callable[[str], np.ndarray]   # tensor by its name in the checkpoint (prefix included)
    prefix: str                        # where the model's tensors are, e.g. "bert." or ""
    tokenizer_json: str
    rope_theta: float = 10000.0
    matryoshka: bool = False           # truncating the vector (then re-normalising) keeps it useful
    query_format: str = ""             # how an instruction and a query are written ("" = none)
    name: str = ""
    extra: dict = field(default_factory=dict)

    def dims(self) -> dict[str, int]:
        return {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "ffn": self.ffn, "vocab": self.vocab}


def _json(path: pathlib.Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def sentence_modules(folder: pathlib.Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) as the folder's sentence-transformers modules say; None where they
    say nothing (no modules.json, or no Pooling module)."""
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list):
        return None, None
    pooling, normalize = None, False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _json(folder / str(m.get("path", "")) / "config.json") or {}
            modes = [v for k, v in _POOLING_KEYS.items() if cfg.get(k)]
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_KEYS]
            if other or len(modes) != 1:
                raise ConvertError(f"{folder}: unsupported sentence-transformers pooling "
                                   f"{sorted(k for k, v in cfg.items() if k.startswith('pooling_mode_') and v)} "
                                   f"(supported: exactly one of cls_token, mean_tokens, lasttoken)")
            pooling = modes[0]
        elif kind.endswith("Normalize"):
            normalize = True
        elif kind and not kind.endswith("Transformer"):
            raise ConvertError(f"{folder}: unsupported sentence-transformers module {kind} "
                               f"(supported: Transformer, Pooling, Normalize)")
    return pooling, normalize


def is_embedding_folder(folder: pathlib.Path) -> bool:
    """Whether an HF folder holds an embedding model: a BERT-family encoder, or any supported
    checkpoint that sentence-transformers' modules.json pools."""
    cfg = _json(folder / "config.json")
    if not isinstance(cfg, dict):
        return False
    if cfg.get("model_type") == "bert":
        return True
    modules = _json(folder / "modules.json")
    return isinstance(modules, list) and any(str(m.get("type", "")).endswith("Pooling") for m in modules)


def read_embed_hf(folder: pathlib.Path) -> EmbedSpec:
    from .hf_source import _rope_theta, _SafeTensors

    cfg = _json(folder / "config.json")
    arch = cfg.get("model_type")
    if arch not in ("bert", "qwen3"):
        raise ConvertError(f"{folder}: unsupported embedding architecture '{arch}' (supported: bert, qwen3)")
    if not (folder / "tokenizer.json").is_file():
        raise ConvertError(f"{folder}: no tokenizer.json")
    pooling, normalize = sentence_modules(folder)
    st = _SafeTensors(folder)
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    common = dict(hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
                  ffn=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
                  context_length=int(cfg.get("max_position_embeddings", 512)), get=st.get,
                  tokenizer_json=(folder / "tokenizer.json").read_text(encoding="utf-8"), name=folder.name)
    if arch == "bert":
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConvertError(f"{folder}: unsupported activation '{act}' (supported: gelu)")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ConvertError(f"{folder}: unsupported position_embedding_type '{cfg['position_embedding_type']}'")
        prefix = "bert." if st.has("bert.embeddings.word_embeddings.weight") else ""
        return EmbedSpec(architecture="bert", kv_heads=heads, head_dim=hidden // heads,
                         eps=float(cfg.get("layer_norm_eps", 1e-12)), pooling=pooling or "mean",
                         normalize=bool(normalize), prefix=prefix, **common)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{folder}: unsupported activation '{cfg.get('hidden_act')}'")
    prefix = "model." if st.has("model.embed_tokens.weight") else ""
    return EmbedSpec(architecture="qwen3", kv_heads=int(cfg.get("num_key_value_heads") or heads),
                     head_dim=int(cfg.get("head_dim") or hidden // heads), eps=float(cfg.get("rms_norm_eps", 1e-6)),
                     pooling=pooling or "last", normalize=True if normalize is None else normalize,
                     prefix=prefix, rope_theta=_rope_theta(cfg), matryoshka=True,
                     query_format=QWEN3_QUERY_FORMAT, **common)
