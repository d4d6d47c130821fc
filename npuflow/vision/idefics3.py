"""Idefics3 / SmolVLM image layout, as transformers' Idefics3ImageProcessorPil and Idefics3Processor do it.

1. Resize so the longest edge is `longest_edge` (up or down), the other edge int(edge / aspect)
   rounded up to even, then capped at 4096 keeping the aspect.
2. With splitting: resize again so both edges are multiples of the tile side M (the longest edge
   ceil'd to a multiple of M, the other int(long / aspect) ceil'd to a multiple of M); if either edge
   exceeds M, cut M x M tiles row by row and append the whole image resized to M x M (the global
   image); otherwise the image is the single tile.
   Without splitting (detail "low"): the image resized to M x M.
Every resize is Pillow's with the processor's filter on the uint8 RGB image, as the processor's.
"""
from __future__ import annotations

import math

from PIL import Image

MAX_IMAGE_SIZE = 4096


def _fit_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        width, height = int(longest * aspect), longest
        width += width % 2
    return max(width, 1), max(height, 1)


def _cap(width: int, height: int, cap: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > cap:
        width, height = cap, int(cap / aspect)
    elif height > width and height > cap:
        width, height = int(cap * aspect), cap
    return max(width, 1), max(height, 1)


def _multiples(width: int, height: int, side: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width = math.ceil(width / side) * side
        height = math.ceil(int(width / aspect) / side) * side
    else:
        height = math.ceil(height / side) * side
        width = math.ceil(int(height * aspect) / side) * side
    return width, height


def _plan(processor: dict, width: int, height: int, detail: str) -> tuple[list[tuple[int, int]], int, int]:
    """The successive resize targets (width, height) and the tile grid (rows, cols; 0, 0 = one tile)."""
    side = int(processor["max_image_size"])
    steps = []
    if processor.get("do_resize", True):
        width, height = _cap(*_fit_longest(width, height, int(processor["longest_edge"])), MAX_IMAGE_SIZE)
        steps.append((width, height))
    if detail == "low" or not processor.get("do_image_splitting", True):
        return steps + [(side, side)], 0, 0
    width, height = _multiples(width, height, side)
    steps.append((width, height))
    if width > side or height > side:
        return steps, (height - side) // side + 1, (width - side) // side + 1
    return steps, 0, 0


def grid(spec, width: int, height: int, detail: str) -> tuple[int, int]:
    _, rows, cols = _plan(spec.processor, width, height, detail)
    return rows, cols


def tile_count(spec, width: int, height: int, detail: str) -> int:
    rows, cols = grid(spec, width, height, detail)
    return rows * cols + 1 if rows or cols else 1


def prompt(spec, width: int, height: int, detail: str) -> str:
    rows, cols = grid(spec, width, height, detail)
    fake, glob = spec.tokens["fake_image"], spec.tokens["global_image"]
    run = spec.image_token * spec.tokens_per_tile
    whole = f"{fake}{glob}{run}{fake}"
    if not rows and not cols:
        return whole
    lines = "".join("".join(f"{fake}<row_{r + 1}_col_{c + 1}>{run}" for c in range(cols)) + "\n"
                    for r in range(rows))
    return f"{lines}\n{whole}"


def tiles(spec, image: Image.Image, detail: str) -> list[Image.Image]:
    """The encoder's input images in prompt order: the tiles row by row, then the global image."""
    processor = spec.processor
    resample = int(processor["resample"])
    steps, rows, cols = _plan(processor, image.width, image.height, detail)
    for size in steps:
        image = image.resize(size, resample=resample)
    if not rows and not cols:
        return [image]
    side = int(processor["max_image_size"])
    out = [image.crop((c * side, r * side, (c + 1) * side, (r + 1) * side)) for r in range(rows) for c in range(cols)]
    return out + [image.resize((side, side), resample=resample)]
