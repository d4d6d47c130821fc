"""uint8 RGB tiles -> float32 NCHW, rescaled and normalized with the same float steps as transformers'
numpy image transforms (rescale: float64 product cast to float32; normalize: float32 (x - mean) / std)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_pixels(tiles: list[Image.Image], processor: dict) -> np.ndarray:
    sizes = {t.size for t in tiles}
    if len(sizes) != 1:
        raise ValueError(f"tiles of different sizes {sorted(sizes)}")
    x = np.stack([np.asarray(t, dtype=np.uint8) for t in tiles]).transpose(0, 3, 1, 2)
    if processor.get("do_rescale", True):
        x = (x.astype(np.float64) * float(processor["rescale_factor"])).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if processor.get("do_normalize", True):
        mean = np.asarray(processor["image_mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(processor["image_std"], dtype=np.float32).reshape(1, 3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)
