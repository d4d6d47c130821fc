"""Vision-language models: the manifest's "vision" section, image decoding and preprocessing.

`VisionSpec` is the parsed "vision" section of a package manifest (written by the converter from
`settings.read_hf_vision`, read by the tokenizer service and the worker). Its `processor` dict holds
the family's image-processing settings with the Hugging Face processor's names:
- idefics3: do_resize, longest_edge (size.longest_edge), max_image_size (max_image_size.longest_edge,
  the tile side), do_image_splitting, resample (PIL filter code), do_rescale, rescale_factor,
  do_normalize, image_mean, image_std, do_convert_rgb, do_pad
- internvl: do_resize, size (tile side), crop_to_patches, min_patches, max_patches, resample,
  do_rescale, rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("idefics3", "internvl")


class ImageError(ValueError):
    """An image cannot be used; the message is one line (e.g. "not an image", "truncated")."""


def _need(section: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    from npuflow.models.package import PackageError

    value = section.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise PackageError(f"manifest vision.{key} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True)
class VisionSpec:
    family: str
    image_token: str
    image_token_id: int
    tile_size: int
    tokens_per_tile: int
    hidden: int
    input: dict = field(default_factory=lambda: {"name": "pixel_values", "layout": "NCHW", "dtype": "float32"})
    output: str = "image_embeds"
    processor: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, section: dict) -> "VisionSpec":
        from npuflow.models.package import PackageError

        if not isinstance(section, dict):
            raise PackageError("manifest vision section is not an object")
        family = _need(section, "family", str)
        if family not in FAMILIES:
            raise PackageError(f"manifest vision.family '{family}' is not one of {', '.join(FAMILIES)}")
        spec = cls(family=family, image_token=_need(section, "image_token", str),
                   image_token_id=_need(section, "image_token_id", int),
                   tile_size=_need(section, "tile_size", int),
                   tokens_per_tile=_need(section, "tokens_per_tile", int),
                   hidden=_need(section, "hidden", int),
                   input=dict(section.get("input") or cls.__dataclass_fields__["input"].default_factory()),
                   output=str(section.get("output") or "image_embeds"),
                   processor=dict(_need(section, "processor", dict)),
                   tokens=dict(_need(section, "tokens", dict)))
        if min(spec.tile_size, spec.tokens_per_tile, spec.hidden) <= 0:
            raise PackageError("manifest vision: tile_size, tokens_per_tile and hidden must be positive")
        return spec

    def to_manifest(self) -> dict:
        return {"family": self.family, "image_token": self.image_token, "image_token_id": self.image_token_id,
                "tile_size": self.tile_size, "tokens_per_tile": self.tokens_per_tile, "hidden": self.hidden,
                "input": dict(self.input), "output": self.output, "processor": dict(self.processor),
                "tokens": dict(self.tokens)}


DETAILS = ("auto", "low", "high")


def _family(spec: VisionSpec):
    if spec.family == "idefics3":
        from . import idefics3 as module
    elif spec.family == "internvl":
        from . import internvl as module
    else:
        raise ValueError(f"unknown vision family '{spec.family}'")
    return module


def _detail(detail: str) -> str:
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    return detail


def image_prompt(spec: VisionSpec, width: int, height: int, detail: str) -> str:
    """The text that replaces one image placeholder, exactly as the family's HF processor expands it."""
    return _family(spec).prompt(spec, int(width), int(height), _detail(detail))


def tile_count(spec: VisionSpec, width: int, height: int, detail: str) -> int:
    """How many encoder tiles one image of this size takes (the global image / thumbnail included)."""
    return _family(spec).tile_count(spec, int(width), int(height), _detail(detail))


def image_tokens(spec: VisionSpec, width: int, height: int, detail: str) -> int:
    """Placeholders (image_token occurrences) for one image: tiles * tokens_per_tile."""
    return tile_count(spec, width, height, detail) * spec.tokens_per_tile


def preprocess(spec: VisionSpec, image, detail: str):
    """float32 [tiles, 3, S, S] for an RGB PIL image, in the order the placeholders take them."""
    from .pixels import to_pixels

    if image.mode != "RGB":
        raise ValueError(f"preprocess takes an RGB image (decode_image gives one), got mode {image.mode}")
    return to_pixels(_family(spec).tiles(spec, image, _detail(detail)), spec.processor)
