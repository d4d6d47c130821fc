"""InternVL (HF format) image layout, as transformers' GotOcr2ImageProcessorPil with InternVLProcessor's
crop_to_patches does it.

The grid (cols x rows of S x S tiles, min_patches <= cols * rows <= max_patches) is the one whose
aspect ratio is closest to the image's, candidates in order of tile count; on a tie the later
(larger) grid wins while the image's area exceeds half of the grid's. The image is resized to
(S * cols, S * rows) and cut row by row; when there is more than one tile, the whole image resized to
S x S (the thumbnail) follows. Detail "low" (or no crop_to_patches, or max_patches 1): the image
resized to S x S, one tile.
"""
from __future__ import annotations

from functools import lru_cache

from PIL import Image


@lru_cache(maxsize=16)
def _arrangements(least: int, most: int) -> tuple[tuple[int, int], ...]:
    found = [(c, r) for c in range(1, most + 1) for r in range(1, most + 1) if least <= c * r <= most]
    return tuple(sorted(found, key=lambda g: g[0] * g[1]))


def best_grid(width: int, height: int, side: int, least: int, most: int) -> tuple[int, int]:
    """(cols, rows)."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _arrangements(least, most):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * side * side * cols * rows:
            best = (cols, rows)
    return best


def _tiled(processor: dict, detail: str) -> bool:
    return detail != "low" and bool(processor.get("crop_to_patches", True)) and int(processor["max_patches"]) > 1


def grid(spec, width: int, height: int, detail: str) -> tuple[int, int]:
    """(cols, rows) of the tiles; (1, 1) for a single tile."""
    p = spec.processor
    if not _tiled(p, detail):
        return 1, 1
    return best_grid(width, height, int(p["size"]), int(p["min_patches"]), int(p["max_patches"]))


def tile_count(spec, width: int, height: int, detail: str) -> int:
    cols, rows = grid(spec, width, height, detail)
    return cols * rows + 1 if cols * rows > 1 else 1


def prompt(spec, width: int, height: int, detail: str) -> str:
    run = spec.image_token * (spec.tokens_per_tile * tile_count(spec, width, height, detail))
    return f"{spec.tokens['start']}{run}{spec.tokens['end']}"


def tiles(spec, image: Image.Image, detail: str) -> list[Image.Image]:
    """The encoder's input images in prompt order: the tiles row by row, then the thumbnail."""
    p = spec.processor
    side, resample = int(p["size"]), int(p["resample"])
    if not _tiled(p, detail):
        return [image.resize((side, side), resample=resample) if p.get("do_resize", True) else image]
    cols, rows = grid(spec, image.width, image.height, detail)
    canvas = image.resize((side * cols, side * rows), resample=resample)
    out = [canvas.crop((c * side, r * side, (c + 1) * side, (r + 1) * side)) for r in range(rows) for c in range(cols)]
    if len(out) > 1:
        out.append(image.resize((side, side), resample=resample))
    return out
