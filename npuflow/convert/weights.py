"""Weights in the form the ONNX graph consumes, and conversions from GGUF quant blocks.

A `Linear` is one projection W[N, K] (output = x @ W^T), either quantized for com.microsoft
MatMulNBits (blocks along K, w = (q - zero_point) * scale) or float32.

GGUF block layouts (one block of 32 weights along K):
  Q4_0: f16 d, 16 bytes: low nibbles x[0..15], high nibbles x[16..31];  w = d * (x - 8)
  Q4_1: f16 d, f16 m, 16 bytes as Q4_0;                                  w = d * x + m
  Q8_0: f16 d, 32 int8;                                                  w = d * x
MatMulNBits packs two 4-bit values per byte as (x[2i] | x[2i+1] << 4); its default zero point
is 8 for 4 bits and 128 for 8 bits, so Q4_0 and Q8_0 need no zero-point input and Q4_1 gets a
float zero point -m/d (exact up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32
# Bump when the converted graph or weight layout changes: cached packages of another version are
# converted again (npuflow.models.resolve).
CONVERTER_VERSION = 4


@dataclass
class Linear:
    n: int                              # output features (rows of W)
    k: int                              # input features
    bits: int = 0                       # 0 = float, else 4 or 8
    packed: np.ndarray | None = None    # uint8 [N, K/BLOCK, BLOCK*bits/8]
    scales: np.ndarray | None = None    # float32 [N, K/BLOCK]
    zero_points: np.ndarray | None = None  # float32 [N, K/BLOCK] or None (default zero point)
    weight: np.ndarray | None = None    # float32 [N, K] when bits == 0
    bias: np.ndarray | None = None      # float32 [N]

    @property
    def quantized(self) -> bool:
        return self.bits != 0

    def float_zero_points(self) -> np.ndarray:
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 8.0 if self.bits == 4 else 128.0, np.float32)

    def dequantize(self) -> np.ndarray:
        """float32 W[N, K] (used for embedding tables and tests)."""
        if not self.quantized:
            return self.weight
        q = unpack(self.packed, self.bits).astype(np.float32)          # [N, nb, 32]
        zp = self.float_zero_points()[..., None]
        return ((q - zp) * self.scales[..., None]).reshape(self.n, self.k)

    @property
    def nbytes(self) -> int:
        arrays = (self.packed, self.scales, self.zero_points, self.weight, self.bias)
        return sum(a.nbytes for a in arrays if a is not None)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits blobs [..., blob] -> uint8 values [..., BLOCK]."""
    if bits == 8:
        return packed
    lo = packed & 0x0F
    hi = packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pack4(values: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] [..., 2m] -> MatMulNBits bytes [..., m]."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _blocks(raw: np.ndarray, n: int, k: int, block_bytes: int) -> np.ndarray:
    if k % BLOCK:
        raise ValueError(f"row length {k} is not a multiple of {BLOCK}")
    return np.ascontiguousarray(raw).view(np.uint8).reshape(n, k // BLOCK, block_bytes)


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _gguf_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF 16-byte nibble field -> 32 uint8 values in element order."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def from_q4_0(raw: np.ndarray, n: int, k: int) -> Linear:
    b = _blocks(raw, n, k, 18)
    scales = _f16(b[..., 0:2])
    return Linear(n, k, 4, pack4(_gguf_nibbles(b[..., 2:])), scales, None)


def from_q4_1(raw: np.ndarray, n: int, k: int) -> Linear:
    b = _blocks(raw, n, k, 20)
    d = _f16(b[..., 0:2])
    m = _f16(b[..., 2:4])
    safe = np.where(d == 0, 1.0, d)
    # w = d*x + m = (x - zp) * d with zp = -m/d. A block with d == 0 is the constant m:
    # written as x = 0, zp = -1, scale = m.
    zp = np.where(d == 0, -1.0, -m / safe).astype(np.float32)
    scales = np.where(d == 0, m, d).astype(np.float32)
    x = _gguf_nibbles(b[..., 4:])
    if np.any(d == 0):
        x = np.where((d == 0)[..., None], 0, x).astype(np.uint8)
    return Linear(n, k, 4, pack4(x), scales, zp)


def from_q8_0(raw: np.ndarray, n: int, k: int) -> Linear:
    b = _blocks(raw, n, k, 34)
    scales = _f16(b[..., 0:2])
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8)
    return Linear(n, k, 8, (q.astype(np.int16) + 128).astype(np.uint8), scales, None)


def from_float(w: np.ndarray) -> Linear:
    w = np.ascontiguousarray(w, dtype=np.float32)
    return Linear(w.shape[0], w.shape[1], 0, weight=w)


def concat(parts: list[Linear]) -> Linear | None:
    """Stack projections along N (q|k|v, gate|up) when they share one kernel form, else None."""
    first = parts[0]
    if any(p.bits != first.bits or p.k != first.k for p in parts):
        return None
    n = sum(p.n for p in parts)
    bias = None
    if any(p.bias is not None for p in parts):
        bias = np.concatenate([p.bias if p.bias is not None else np.zeros(p.n, np.float32) for p in parts])
    if not first.quantized:
        return Linear(n, first.k, 0, weight=np.concatenate([p.weight for p in parts]), bias=bias)
    zp = None
    if any(p.zero_points is not None for p in parts):
        zp = np.concatenate([p.float_zero_points() for p in parts])
    return Linear(n, first.k, first.bits, np.concatenate([p.packed for p in parts]),
                  np.concatenate([p.scales for p in parts]), zp, bias=bias)


def integer_zero_points(lin: Linear) -> np.ndarray | None:
    """lin's zero points as uint8 when they are whole numbers within the value range of its bits
    (MatMulNBits then keeps its int8 kernel), else None."""
    zp = lin.zero_points
    if zp is None or not lin.quantized:
        return None
    top = (1 << lin.bits) - 1
    if np.any(zp != np.round(zp)) or zp.min() < 0 or zp.max() > top:
        return None
    return zp.astype(np.uint8)


def widen_to_8bit(lin: Linear, max_mult: int = 17) -> Linear:
    """A 4-bit Linear with float zero points (Q4_1) as an 8-bit one with whole-number zero points.

    A block (q - zp) * s, q in 0..15, is written as (m*q - round(m*zp)) * (s / m) with the
    multiplier m in 1..max_mult that makes m*zp closest to a whole number (absolute error, in
    weight units, |m*zp - round(m*zp)| * s / m <= s / (2 * max_mult)); the values m*q stay exact.
    Blocks whose zero point lies outside 0..15 are first shifted by whole steps."""
    if lin.bits != 4 or lin.zero_points is None:
        return lin
    q = unpack(lin.packed, 4).astype(np.int32)                       # [N, nb, 32]
    zp = lin.zero_points.astype(np.float64)
    lo = np.minimum(0.0, np.floor(zp))                                # shift so that zp - lo >= 0
    span = np.maximum(15.0, np.ceil(zp)) - lo
    if np.any(span * 1 > 255):
        raise ValueError("zero point too far outside the 4-bit range to widen")
    mults = np.arange(1, max_mult + 1, dtype=np.float64)
    zs = (zp - lo)[..., None] * mults                                 # [N, nb, M]
    err = np.abs(zs - np.round(zs)) / mults
    err[(span[..., None] * mults) > 255] = np.inf
    best = np.argmin(err, axis=-1)
    m = mults[best]
    z = np.round(np.take_along_axis(zs, best[..., None], -1)[..., 0])
    q8 = ((q - lo[..., None].astype(np.int32)) * m[..., None].astype(np.int32)).astype(np.uint8)
    scales = (lin.scales / m).astype(np.float32)
    return Linear(lin.n, lin.k, 8, q8, scales, z.astype(np.float32), bias=lin.bias)


