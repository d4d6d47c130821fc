"""Read a Hugging Face VLM folder's vision settings into the manifest's "vision" section.

Idefics3 / SmolVLM: config.json model_type "idefics3"; tokens per tile =
(image_size / patch_size)^2 / scale_factor^2. InternVL (HF format, model_type "internvl"):
(image_size / patch_size)^2 * downsample_ratio^2. The image processor's settings come from
preprocessor_config.json (flat) or processor_config.json's "image_processor" (transformers 5), with
the processor class's defaults for absent keys; processor_config.json's image_seq_len /
image_seq_length, when given, must agree with the computed tokens per tile.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from npuflow.convert.spec import ConvertError

LANCZOS, BICUBIC = 1, 3
_IDEFICS3_DEFAULTS = {"do_resize": True, "longest_edge": 4 * 364, "max_image_size": 364, "do_image_splitting": True,
                      "resample": LANCZOS, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
                      "do_pad": True}
_INTERNVL_DEFAULTS = {"do_resize": True, "size": 384, "crop_to_patches": True, "min_patches": 1, "max_patches": 12,
                      "resample": BICUBIC, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                      "image_mean": [0.48145466, 0.4578275, 0.40821073],
                      "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}


def _json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: not readable JSON ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return data


def _processor_files(folder: pathlib.Path) -> tuple[dict, dict]:
    """(image processor settings, processor settings)."""
    proc = _json(folder / "processor_config.json")
    image = _json(folder / "preprocessor_config.json") or proc.get("image_processor") or {}
    if not image and not proc:
        raise ConvertError(f"{folder}: no preprocessor_config.json or processor_config.json")
    if not isinstance(image, dict):
        raise ConvertError(f"{folder}: processor_config.json image_processor is not an object")
    return image, proc


def _side(value: Any, key: str, where: str) -> int:
    """An edge length from a size dict ({"longest_edge": n} or {"height": n, "width": n}) or an int."""
    if isinstance(value, dict):
        if key in value:
            value = value[key]
        elif "height" in value and value.get("height") == value.get("width"):
            value = value["height"]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConvertError(f"{where}: unsupported size {value!r} (expected one positive square side)")
    return value


def _settings(image: dict, defaults: dict, where: str) -> dict:
    out = dict(defaults)
    for key in defaults:
        if key in image and image[key] is not None:
            out[key] = image[key]
    for key in ("image_mean", "image_std"):
        v = out[key]
        v = [v] * 3 if isinstance(v, (int, float)) else v
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ConvertError(f"{where}: {key} must be three numbers, got {out[key]!r}")
        out[key] = [float(x) for x in v]
    if not isinstance(out["resample"], int) or out["resample"] not in range(6):
        raise ConvertError(f"{where}: unsupported resample filter {out['resample']!r}")
    out["rescale_factor"] = float(out["rescale_factor"])
    return out


def _token_id(tokenizer, text: str, where: str) -> int | None:
    if tokenizer is None:
        return None
    tid = tokenizer.token_to_id(text)
    if tid is None:
        raise ConvertError(f"{where}: the tokenizer has no token '{text}'")
    return tid


def _int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConvertError(f"{where}: {key} is missing or not a positive integer ({value!r})")
    return value


def _grid_tokens(vision: dict, where: str, factor: float) -> tuple[int, int]:
    image_size, patch = _int(vision, "image_size", where), _int(vision, "patch_size", where)
    if image_size % patch:
        raise ConvertError(f"{where}: image_size {image_size} is not a multiple of patch_size {patch}")
    tokens = (image_size // patch) ** 2 * factor
    if tokens != int(tokens) or tokens < 1:
        raise ConvertError(f"{where}: {(image_size // patch) ** 2} patches do not shuffle into whole tokens")
    return image_size, int(tokens)


def _check_seq_len(proc: dict, key: str, tokens: int, where: str) -> None:
    if proc.get(key) is not None and proc[key] != tokens:
        raise ConvertError(f"{where}: processor_config.json {key} is {proc[key]}, config.json gives {tokens} tokens per tile")


def _idefics3(folder: pathlib.Path, cfg: dict, tokenizer) -> dict:
    where = str(folder / "config.json")
    vision, text = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    scale = cfg.get("scale_factor", 2)
    if not isinstance(scale, int) or scale <= 0:
        raise ConvertError(f"{where}: scale_factor {scale!r} is not a positive integer")
    image_size, tokens = _grid_tokens(vision, where, 1 / scale ** 2)
    image, proc = _processor_files(folder)
    settings = _settings({**image, "longest_edge": _side(image.get("size", {"longest_edge": 4 * 364}),
                                                         "longest_edge", where),
                          "max_image_size": _side(image.get("max_image_size", {"longest_edge": 364}),
                                                  "longest_edge", where)}, _IDEFICS3_DEFAULTS, where)
    if settings["max_image_size"] != image_size:
        raise ConvertError(f"{where}: max_image_size {settings['max_image_size']} != vision image_size {image_size}")
    _check_seq_len(proc, "image_seq_len", tokens, where)
    tokens_map = {"fake_image": "<fake_token_around_image>", "global_image": "<global-img>"}
    return _section("idefics3", "<image>", cfg, tokenizer, where, image_size, tokens,
                    _int(text, "hidden_size", where + " text_config"), settings, tokens_map)


def _special(tcfg: dict, key: str, default: str) -> str:
    for holder in (tcfg, tcfg.get("extra_special_tokens") or {}, tcfg.get("model_specific_special_tokens") or {}):
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            return holder[key]
    return default


def _internvl(folder: pathlib.Path, cfg: dict, tokenizer) -> dict:
    where = str(folder / "config.json")
    vision, text = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    ratio = cfg.get("downsample_ratio", 0.5)
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConvertError(f"{where}: downsample_ratio {ratio!r} is not in (0, 1]")
    image_size, tokens = _grid_tokens(vision, where, ratio ** 2)
    image, proc = _processor_files(folder)
    # InternVLProcessor passes crop_to_patches=True to its image processor whatever the file says.
    settings = _settings({**image, "size": _side(image.get("size", 384), "height", where), "crop_to_patches": True},
                         _INTERNVL_DEFAULTS, where)
    if settings["size"] != image_size:
        raise ConvertError(f"{where}: image processor size {settings['size']} != vision image_size {image_size}")
    _check_seq_len(proc, "image_seq_length", tokens, where)
    tcfg = _json(folder / "tokenizer_config.json")
    context = _special(tcfg, "context_image_token", "<IMG_CONTEXT>")
    tokens_map = {"start": _special(tcfg, "start_image_token", "<img>"),
                  "end": _special(tcfg, "end_image_token", "</img>")}
    return _section("internvl", context, cfg, tokenizer, where, image_size, tokens,
                    _int(text, "hidden_size", where + " text_config"), settings, tokens_map)


def _section(family: str, image_token: str, cfg: dict, tokenizer, where: str, tile: int, tokens: int,
             hidden: int, settings: dict, tokens_map: dict) -> dict:
    tid = cfg.get("image_token_id", cfg.get("image_token_index"))
    if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
        raise ConvertError(f"{where}: image_token_id is missing")
    found = _token_id(tokenizer, image_token, where)
    if found is not None and found != tid:
        raise ConvertError(f"{where}: image_token_id {tid} but the tokenizer's '{image_token}' is {found}")
    for text in tokens_map.values():
        _token_id(tokenizer, text, where)
    return {"family": family, "image_token": image_token, "image_token_id": tid, "tile_size": tile,
            "tokens_per_tile": tokens, "hidden": hidden,
            "input": {"name": "pixel_values", "layout": "NCHW", "dtype": "float32"},
            "output": "image_embeds", "processor": settings, "tokens": tokens_map}


def read_hf_vision(folder: pathlib.Path, cfg: dict, tokenizer) -> dict:
    """The manifest "vision" section for an HF folder; `tokenizer` is a `tokenizers.Tokenizer` (or None)."""
    folder = pathlib.Path(folder)
    kind = cfg.get("model_type")
    if kind == "idefics3":
        return _idefics3(folder, cfg, tokenizer)
    if kind == "internvl":
        return _internvl(folder, cfg, tokenizer)
    raise ConvertError(f"{folder}: model_type '{kind}' has no vision support (supported: idefics3, internvl)")
