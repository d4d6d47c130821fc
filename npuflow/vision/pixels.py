"""uint8 RGB tiles -> float32 NCHW, rescaled and normalized with the same float results as
transformers' numpy image transforms (rescale: the float64 product cast to float32; normalize:
float32 (x - mean) / std).

The rescale runs in float32 when a float32 formula is checked to give transformers' value for all
256 uint8 values (x / 255 does for the usual factor 1/255); otherwise through a 256-entry table.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

_VALUES = np.arange(256, dtype=np.float32)


def _rescaler(factor: float):
    """A function rescaling a float32 array in place exactly as transformers would, uint8 values in it."""
    want = (np.arange(256, dtype=np.float64) * factor).astype(np.float32)
    if factor and np.array_equal(_VALUES / np.float32(1 / factor), want):
        divisor = np.float32(1 / factor)
        return lambda x: np.divide(x, divisor, out=x)
    if np.array_equal(_VALUES * np.float32(factor), want):
        return lambda x: np.multiply(x, np.float32(factor), out=x)

    def by_table(x):
        x[...] = want[x.astype(np.uint8)]
        return x
    return by_table


def to_pixels(tiles: list[Image.Image], processor: dict) -> np.ndarray:
    sizes = {t.size for t in tiles}
    if len(sizes) != 1:
        raise ValueError(f"tiles of different sizes {sorted(sizes)}")
    rgb = np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])
    x = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)
    if processor.get("do_rescale", True):
        _rescaler(float(processor["rescale_factor"]))(x)
    if processor.get("do_normalize", True):
        x -= np.asarray(processor["image_mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        x /= np.asarray(processor["image_std"], dtype=np.float32).reshape(1, 3, 1, 1)
    return x
