"""Token embedding lookup done on the host: rows are dequantized on demand from the package's
quantized table (memory-mapped), so the full float32 table never sits in memory."""
from __future__ import annotations

import pathlib

import numpy as np


class EmbeddingTable:
    """Files (all .npy): "weight" float32 [V, H], or "packed" uint8 [V, K/32, blob] + "scales"
    float32 [V, K/32] (+ "zero_points" float32 [V, K/32]) with bits 4 or 8 as in MatMulNBits."""

    def __init__(self, files: dict[str, pathlib.Path], bits: int):
        self.bits = bits
        load = lambda key: np.load(files[key], mmap_mode="r") if key in files else None  # noqa: E731
        self.weight = load("weight")
        self.packed = load("packed")
        self.scales = load("scales")
        self.zero_points = load("zero_points")
        self.vocab = (self.weight if self.weight is not None else self.packed).shape[0]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), hidden] for int ids already checked to be < vocab."""
        if self.weight is not None:
            return np.asarray(self.weight[ids], dtype=np.float32)
        q = np.asarray(self.packed[ids])
        if self.bits == 4:
            q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(*q.shape[:-1], q.shape[-1] * 2)
        s = np.asarray(self.scales[ids], dtype=np.float32)[..., None]
        if self.zero_points is not None:
            zp = np.asarray(self.zero_points[ids], dtype=np.float32)[..., None]
        else:
            zp = np.float32(8.0 if self.bits == 4 else 128.0)
        return ((q.astype(np.float32) - zp) * s).reshape(len(ids), -1)
