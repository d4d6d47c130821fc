"""Read a Hugging Face safetensors checkpoint folder (llama, qwen2, qwen3) into a ModelSpec.

Vision-language folders (idefics3 / SmolVLM, internvl in the HF layout) give the ModelSpec of their
text model (`text_config`, tensors under `model.text_model.` / `model.language_model.`, `lm_head`)
and, in `spec.extra["vision"]`, what the converter needs to write the vision encoder: the family,
the full config, a tensor getter and the manifest's "vision" section (npuflow.vision.settings).

The safetensors header is parsed here and tensors are memory-mapped, so F32, F16 and BF16 all
load without torch. Float weights stay float32 in the graph (no requantization).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import struct

import numpy as np

from . import weights as W
from .spec import ARCHITECTURES, ConvertError, LayerWeights, ModelSpec
from .tokenizer import CHAT_STOP_TOKENS

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_DIGEST_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "modules.json", "1_Pooling/config.json",   # sentence-transformers: an embedding model's pooling
                 "chat_template.jinja", "preprocessor_config.json", "processor_config.json")
# where each family keeps its text model: transformers 5's names, then the older hub layout
# (llava-style checkpoints saved before the rename: language_model.model.*, language_model.lm_head)
VISION_FAMILIES = {"idefics3": ("model.text_model.", "text_model."),
                   "internvl": ("model.language_model.", "language_model.model.")}
_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


def folder_digest(path: pathlib.Path) -> str:
    """SHA-256 over the checkpoint's files (names and contents) that conversion reads."""
    h = hashlib.sha256()
    names = sorted([p.name for p in path.glob("*.safetensors")] + [n for n in _DIGEST_FILES if (path / n).is_file()])
    for name in names:
        h.update(name.encode() + b"\0")
        with open(path / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class _SafeTensors:
    def __init__(self, folder: pathlib.Path):
        self.where: dict[str, tuple[pathlib.Path, dict, int]] = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"{folder}: no *.safetensors files")
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (f, info, 8 + n)

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise ConvertError(f"checkpoint has no tensor '{name}'")
        f, info, base = self.where[name]
        dtype = info["dtype"]
        if dtype not in _DTYPES:
            raise ConvertError(f"tensor '{name}' has unsupported dtype {dtype} (supported: F32, F16, BF16)")
        lo, hi = info["data_offsets"]
        raw = np.memmap(f, dtype=np.uint8, mode="r", offset=base + lo, shape=(hi - lo,))
        arr = raw.view(_DTYPES[dtype]).reshape(info["shape"])
        if dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32)


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    if kind != "default":
        raise ConvertError(f"rope scaling '{kind}' is not supported")
    return float(cfg.get("rope_theta", params.get("rope_theta", 10000.0)))


def read_hf(folder: pathlib.Path) -> ModelSpec:
    from tokenizers import Tokenizer

    top = json.loads((folder / "config.json").read_text())
    family = top.get("model_type")
    prefix = "model."
    cfg = top
    if family in VISION_FAMILIES:
        cfg = top.get("text_config")
        if not isinstance(cfg, dict):
            raise ConvertError(f"{folder}: {family} config.json has no text_config")
        prefix = VISION_FAMILIES[family][0]
    arch = cfg.get("model_type")
    if arch not in ARCHITECTURES:
        what = f"{family} text model" if family in VISION_FAMILIES else "architecture"
        supported = ", ".join(ARCHITECTURES + (() if family in VISION_FAMILIES else tuple(VISION_FAMILIES)))
        raise ConvertError(f"{folder}: unsupported {what} '{arch}' (supported: {supported})")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{folder}: unsupported activation '{cfg.get('hidden_act')}'")
    if not (folder / "tokenizer.json").is_file():
        raise ConvertError(f"{folder}: no tokenizer.json")
    st = _SafeTensors(folder)
    if family in VISION_FAMILIES:
        prefix = next((p for p in VISION_FAMILIES[family] if st.has(p + "embed_tokens.weight")), prefix)
    head = next((h for h in _HEADS if st.has(h)), None)
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    tied = head is None
    tok_text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    tok = Tokenizer.from_str(tok_text)
    tcfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").is_file() else {}
    gcfg = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").is_file() else {}
    template = tcfg.get("chat_template") or ""
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), "")

    eos: list[int] = []
    for src in (gcfg.get("eos_token_id"), cfg.get("eos_token_id"), top.get("eos_token_id") if top is not cfg else None):
        eos += [src] if isinstance(src, int) else list(src or [])
    eos_tok = tcfg.get("eos_token")
    if isinstance(eos_tok, dict):
        eos_tok = eos_tok.get("content")
    if isinstance(eos_tok, str) and tok.token_to_id(eos_tok) is not None:
        eos.append(tok.token_to_id(eos_tok))
    if template:
        eos += [tok.token_to_id(t) for t in CHAT_STOP_TOKENS if tok.token_to_id(t) is not None]
    with_special = tok.encode("a", add_special_tokens=True).ids
    plain = tok.encode("a", add_special_tokens=False).ids
    bos = with_special[0] if len(with_special) > len(plain) and with_special[1:] == plain else None

    def lin(name: str, bias: str | None = None) -> W.Linear:
        out = W.from_float(st.get(name))
        if bias and st.has(bias):
            out.bias = st.get(bias)
        return out

    def layer(i: int) -> LayerWeights:
        p = f"{prefix}layers.{i}."
        a = p + "self_attn."
        return LayerWeights(
            attn_norm=st.get(p + "input_layernorm.weight"),
            q=lin(a + "q_proj.weight", a + "q_proj.bias"), k=lin(a + "k_proj.weight", a + "k_proj.bias"),
            v=lin(a + "v_proj.weight", a + "v_proj.bias"), o=lin(a + "o_proj.weight", a + "o_proj.bias"),
            ffn_norm=st.get(p + "post_attention_layernorm.weight"),
            gate=lin(p + "mlp.gate_proj.weight"), up=lin(p + "mlp.up_proj.weight"), down=lin(p + "mlp.down_proj.weight"),
            q_norm=st.get(a + "q_norm.weight") if arch == "qwen3" else None,
            k_norm=st.get(a + "k_norm.weight") if arch == "qwen3" else None)

    extra = {}
    if family in VISION_FAMILIES:
        from ..vision.settings import read_hf_vision
        extra["vision"] = {"family": family, "config": top, "get": st.get, "has": st.has,
                           "section": read_hf_vision(folder, top, tok)}
    embed = prefix + "embed_tokens.weight"
    return ModelSpec(
        architecture=arch, hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim,
        ffn=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
        context_length=int(cfg.get("max_position_embeddings", 2048)), rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(cfg), rotary_interleaved=False,
        embedding=lambda: lin(embed),
        output=lambda: lin(embed if tied else head),
        final_norm=lambda: st.get(prefix + "norm.weight"), layer=layer, tokenizer_json=tok_text,
        eos_token_ids=list(dict.fromkeys(eos)), bos_token_id=bos, chat_template=template,
        name=folder.name, tied=tied, extra=extra)
