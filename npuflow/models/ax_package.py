"""Read AX model directories as ModelPackages (engine "ax"), as the vendors ship them.

Two layouts:
- pulsar2 output (`pulsar2 llm_build` + the files copied from the HF repo, or
  `npuflow convert --layout ax`): config.json (HF dims and/or the ax-llm keys
  template_filename_axmodel, axmodel_num, filename_post_axmodel, filename_tokens_embed),
  post_config.json (sampling defaults), tokenizer.json (+ tokenizer_config.json),
  {prefix}_p{P}_l{i}_together.axmodel, {prefix}_post.axmodel, model.embed_tokens.weight.bfloat16.bin.
- StackFlow (M5Stack, /opt/m5stack/data/<model id>/): the same graph files, described by
  mode_<model id>.json (in the directory or in ../models/) whose "mode_param" names the files and
  holds the sampling defaults and max_token_len; "cmm_size" (KB) is the NPU memory it needs.
StackFlow serves its tokenizer over HTTP from a script; npuflow needs the HF `tokenizer.json`
(and `tokenizer_config.json` for the chat template) of the base model in the model directory or
one level below (see deploy/README.md).

The package's extra["ax"] carries: layer_files, post_file, embed_file, prefill_len, kv_cache_len
(0 = read from the graphs), cmm_kb (the NPU memory the model needs: the mode json's cmm_size, else
an estimate, the size of the graph files, the vision encoder's included; cmm_estimated tells
which), layout, and for a VLM vision_file and vision_kb.

Vision-language packages: the vision encoder is a graph next to the LLM layers, named in
config.json / mode_param (ax-llm's filename_image_encoder_axmodel, its command line's spelling
filename_image_encoder_axmodedl, the older filename_vpm_resampler_axmodedl, or npuflow's
vision_model) or found by name (*vit*.axmodel, vision*.axmodel, *image_encoder*.axmodel, in the
directory or one folder below, as the vendor repos ship vit_axmodel/ and vit-models/). Its
"vision" section (extra["vision"], the shape of a CPU package's, see npuflow/vision) is
config.json's "vision" (npuflow's export), else read from the HF processor files of the base
model in the directory or one folder below (preprocessor_config.json / processor_config.json and
its config.json; npuflow.vision.settings), the placeholder token id from its tokenizer. The encoder's input layout and dtype (NHWC uint8 or
NCHW float32) are read from the graph when it is opened (engine/ax_vision.py).
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from .package import Dims, ModelPackage, PackageError

EMBED_DEFAULT = "model.embed_tokens.weight.bfloat16.bin"
VISION_KEYS = ("filename_image_encoder_axmodel", "filename_image_encoder_axmodedl", "filename_vpm_resampler_axmodedl",
               "vision_model")
_VISION_GLOBS = ("*vit*.axmodel", "vision*.axmodel", "*image_encoder*.axmodel", "*vit*.onnx", "vision*.onnx")
_LAYER_RE = re.compile(r"^(?P<prefix>.+?)_p(?P<p>\d+)_l(?P<i>\d+)_together\.(?P<ext>axmodel|onnx)$")


def is_ax_dir(path: pathlib.Path) -> bool:
    if not path.is_dir():
        return False
    if any(path.glob("*.axmodel")) or _mode_json(path) is not None:
        return True
    cfg = _json(path / "config.json")
    return bool(cfg and cfg.get("template_filename_axmodel"))


def read_ax_package(path: str | pathlib.Path, model_id: str | None = None) -> ModelPackage:
    """A ModelPackage for a pulsar2 or StackFlow directory. Raises PackageError naming what is
    missing."""
    root = pathlib.Path(path).expanduser().resolve()
    if not root.is_dir():
        raise PackageError(f"{root}: not a directory")
    mode_file = _mode_json(root)
    mode = _json(mode_file) if mode_file else None
    params: dict[str, Any] = dict((mode or {}).get("mode_param") or {})
    cfg = _json(root / "config.json") or {}
    text_cfg = cfg.get("text_config") or cfg.get("llm_config") or {}   # a VLM's HF config nests the text model's
    cfg = {**text_cfg, **{k: v for k, v in cfg.items() if k not in ("text_config", "llm_config")}} if text_cfg else cfg
    keys = {**cfg, **params}           # file names: the mode json wins
    layers, prefix_p = _layer_files(root, keys)
    post = keys.get("filename_post_axmodel") or _one(root, "*_post.axmodel", "*_post.onnx")
    embed = keys.get("filename_tokens_embed") or EMBED_DEFAULT
    vision_file = _vision_file(root, keys, {*layers, post})
    for name in [*layers, post, embed, *([vision_file] if vision_file else [])]:
        if not name or not (root / name).is_file():
            raise PackageError(f"{root}: graph file '{name}' is missing")
    tok = _find_tokenizer(root)
    tok_cfg = _json(tok.parent / "tokenizer_config.json") or {}
    gen_cfg = _json(root / "generation_config.json") or {}
    vocab = int(keys.get("tokens_embed_num") or cfg.get("vocab_size") or 0)
    hidden = int(keys.get("tokens_embed_size") or cfg.get("hidden_size") or 0)
    if not vocab or not hidden:
        size = (root / embed).stat().st_size
        raise PackageError(f"{root}: vocabulary and hidden size unknown (no tokens_embed_num / tokens_embed_size "
                           f"or vocab_size / hidden_size; the embedding file has {size} bytes)")
    heads = int(cfg.get("num_attention_heads") or 0)
    dims = Dims(hidden=hidden, layers=len(layers), heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or (hidden // heads if heads else 0)),
                ffn=int(cfg.get("intermediate_size") or 0), vocab=vocab)
    eos = _eos_ids(cfg, gen_cfg, tok_cfg, tok)
    if not eos:
        raise PackageError(f"{root}: no EOS token id (config.json eos_token_id, generation_config.json or "
                           f"tokenizer_config.json eos_token)")
    prefill = int(keys.get("prefill_len") or prefix_p or 0)
    kv_len = int(keys.get("kv_cache_len") or 0)
    context = kv_len or int(params.get("max_token_len") or 0) or int(cfg.get("max_position_embeddings") or 2048)
    cmm = (mode or {}).get("cmm_size") or params.get("cmm_size")
    vision_kb = (root / vision_file).stat().st_size // 1024 if vision_file else 0
    graph_kb = sum((root / f).stat().st_size for f in [*layers, post]) // 1024 + vision_kb
    bos = cfg.get("bos_token_id", gen_cfg.get("bos_token_id"))
    files = {"tokenizer": str(tok.relative_to(root)) if tok.is_relative_to(root) else str(tok),
             "post": post, "embed": embed, **{f"layer.{i}": f for i, f in enumerate(layers)}}
    extra: dict[str, Any] = {}
    if vision_file:
        files["vision_model"] = vision_file
        extra["vision"] = _vision_section(root, cfg, tok)
    return ModelPackage(
        path=root, id=model_id or str((mode or {}).get("mode") or root.name),
        architecture=str(cfg.get("model_type") or (mode or {}).get("type") or "unknown"), engine="ax",
        dims=dims, context_length=context, eos_token_ids=tuple(eos),
        bos_token_id=None if isinstance(bos, list) or bos is None else int(bos),
        chat_template=str(tok_cfg.get("chat_template") or ""), files=files,
        sampling_defaults=sampling_defaults({**(_json(root / "post_config.json") or {}), **params}),
        extra={"ax": {"layer_files": layers, "post_file": post, "embed_file": embed, "prefill_len": prefill,
                      "kv_cache_len": kv_len, "cmm_kb": int(cmm) if cmm else graph_kb, "cmm_estimated": not cmm,
                      "layout": "stackflow" if mode else "pulsar2",
                      "mode_json": str(mode_file) if mode_file else "", "vision_file": vision_file,
                      "vision_kb": vision_kb}, **extra})


def sampling_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """Vendor sampling settings (post_config.json / mode_param) as request defaults. The vendor
    runtime takes the argmax when neither top-k nor top-p is enabled; that is temperature 0."""
    out: dict[str, Any] = {}
    if not any(k.startswith("enable_") for k in cfg):
        return out
    if cfg.get("enable_temperature") and "temperature" in cfg:
        out["temperature"] = float(cfg["temperature"])
    if cfg.get("enable_top_k_sampling") and cfg.get("top_k"):
        out["top_k"] = int(cfg["top_k"])
    if cfg.get("enable_top_p_sampling") and "top_p" in cfg:
        out["top_p"] = float(cfg["top_p"])
    if cfg.get("enable_repetition_penalty") and "repetition_penalty" in cfg:
        out["repetition_penalty"] = float(cfg["repetition_penalty"])
    if "top_k" not in out and "top_p" not in out:
        out["temperature"] = 0.0
    return out


# -- helpers ------------------------------------------------------------------------------------
def _json(path: pathlib.Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def _mode_json(root: pathlib.Path) -> pathlib.Path | None:
    for cand in (root / f"mode_{root.name}.json", root.parent / "models" / f"mode_{root.name}.json"):
        if cand.is_file():
            return cand
    found = sorted(root.glob("mode_*.json"))
    return found[0] if len(found) == 1 else None


def _one(root: pathlib.Path, *patterns: str) -> str:
    for pat in patterns:
        found = sorted(root.glob(pat))
        if len(found) == 1:
            return found[0].name
        if len(found) > 1:
            raise PackageError(f"{root}: several files match {pat}; name one in config.json")
    return ""


def _layer_files(root: pathlib.Path, keys: dict[str, Any]) -> tuple[list[str], int]:
    template, n = keys.get("template_filename_axmodel"), keys.get("axmodel_num")
    if template and n:
        files = [template % i for i in range(int(n))]
    else:
        found = {}
        for f in root.iterdir():
            m = _LAYER_RE.match(f.name)
            if m:
                found[int(m["i"])] = f.name
        if not found:
            raise PackageError(f"{root}: no layer graphs (*_p<P>_l<i>_together.axmodel) and no "
                               f"template_filename_axmodel in config.json")
        files = [found.get(i, f"<layer {i}>") for i in range(max(found) + 1)]
    m = _LAYER_RE.match(pathlib.Path(files[0]).name)
    return files, int(m["p"]) if m else 0


def _vision_file(root: pathlib.Path, keys: dict[str, Any], taken: set[str]) -> str:
    """The vision encoder's file (relative to root), or "" for a text-only package."""
    for key in VISION_KEYS:
        if keys.get(key):
            name = str(keys[key])
            return str((root / name).resolve().relative_to(root)) if (root / name).is_file() else name
    for where in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for pat in _VISION_GLOBS:
            found = sorted(str(f.relative_to(root)) for f in where.glob(pat)
                           if f.is_file() and f.name not in taken and not _LAYER_RE.match(f.name))
            if len(found) > 1:
                raise PackageError(f"{root}: several vision encoder graphs ({', '.join(found)}); name one in "
                                   f"config.json (filename_image_encoder_axmodel)")
            if found:
                return found[0]
    return ""


def _vision_section(root: pathlib.Path, cfg: dict[str, Any], tok: pathlib.Path) -> dict[str, Any]:
    """The package's "vision" section: npuflow's (config.json "vision"), else from the HF processor
    files next to the tokenizer or in a folder below, else the family defaults of the config."""
    if isinstance(cfg.get("vision"), dict):
        return dict(cfg["vision"])
    hf = next((d for d in (root, tok.parent, *sorted(p for p in root.iterdir() if p.is_dir()))
               if (d / "preprocessor_config.json").is_file() or (d / "processor_config.json").is_file()), None)
    if hf is not None:
        from ..convert.spec import ConvertError  # noqa: PLC0415
        from ..vision.settings import read_hf_vision  # noqa: PLC0415 - only VLM packages need it
        from tokenizers import Tokenizer  # noqa: PLC0415
        hf_cfg = _json(hf / "config.json") or cfg
        try:
            return dict(read_hf_vision(hf, hf_cfg, Tokenizer.from_file(str(tok))))
        except (ConvertError, ValueError, KeyError, OSError) as e:
            raise PackageError(f"{hf}: cannot read the vision settings ({e})") from None
    raise PackageError(f"{root}: a vision encoder graph but no preprocessor_config.json / processor_config.json; copy "
                       f"the base model's processor files and config.json (its Hugging Face repo, transformers "
                       f"format) into this directory or a folder below it")


def _find_tokenizer(root: pathlib.Path) -> pathlib.Path:
    for cand in [root / "tokenizer.json", *sorted(root.glob("*/tokenizer.json"))]:
        if cand.is_file():
            return cand
    raise PackageError(f"{root}: no tokenizer.json; copy the base model's tokenizer.json and "
                       f"tokenizer_config.json (from its Hugging Face repo) into this directory")


def _eos_ids(cfg: dict, gen_cfg: dict, tok_cfg: dict, tok: pathlib.Path) -> list[int]:
    for src in (tok_cfg.get("eos_token_ids"), gen_cfg.get("eos_token_id"), cfg.get("eos_token_id")):
        if src is not None:
            return [int(i) for i in (src if isinstance(src, list) else [src])]
    name = tok_cfg.get("eos_token")
    if isinstance(name, dict):
        name = name.get("content")
    if name:
        added = (_json(tok) or {}).get("added_tokens") or []
        return [int(t["id"]) for t in added if t.get("content") == name]
    return []
