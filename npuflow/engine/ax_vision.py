"""The vision encoder of an AX VLM package on pyaxengine (or its onnxruntime mirror on a PC).

The encoder graph is one session (one shape group). What it takes is read from the graph itself,
never assumed:
- NHWC uint8 [B, S, S, 3]: the ax-llm C++ runtime's encoders (resized RGB bytes; rescale and
  normalization are compiled into the graph by pulsar2 from its mean/std config).
- NCHW float32 [B, 3, S, S]: the vendor's Python demos (pixels already rescaled and normalized,
  as the Hugging Face processor makes them).
`encode` always takes what every npuflow encoder takes, float32 [N, 3, S, S] rescaled and
normalized by `npuflow.vision.preprocess`. For a uint8 encoder those floats are turned back into
the bytes they came from: byte = round((x * std + mean) / rescale). That is exact, not an
approximation, because the family processors resize in uint8 (Pillow) before rescaling, so every
value is one of 256 levels per channel; the round trip recovers the resized byte image, which is
what the C++ runtime would feed after its own resize. The mean, std and rescale factor come from
the encoder's "input" section when the package names them (npuflow's export writes them), else
from the family's processor settings. Tiles go through the graph B at a time (the vendor graphs
have B = 1; a last short group is padded and its padding rows dropped); the output, bf16 or
float32, [B, T, H] or [B*T, H], is returned as float32 [N*T, H].

simulate_timing (as the engine's, ax_timing.py) makes each tile take the vendor's published
encoder time per tile: AX650N 1830 ms for the 17 tiles of a 512x512 image through SmolVLM2-500M's
vision axmodel (SigLIP-B/16 at 512 px, the tower SmolVLM-256M shares; AXERA-TECH/SmolVLM2-500M-
Video-Instruct.axera README), i.e. 107.6 ms per 512-px tile. No AX630C figure is published; its
entry scales the AX650N one by the ratio of the two chips' published decode-layer times
(6.443 / 1.595 ms), an estimate.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..logs import get_logger
from ..models.package import ModelPackage, PackageError
from .ax_cmm import AXCL_SMI, CMM_INFO, check_fits
from .ax_runtime import SessionFactory, factory_for, release_session
from .ax_timing import DeviceClock, TimedSession, TimingProfile
from .base import EngineError

log = get_logger("engine.ax")

# what the family processors use when a package names no normalization (HF processor defaults)
VISION_TILE_S = {"ax650n": 1.830 / 17}
VISION_TILE_S["ax630c"] = VISION_TILE_S["ax650n"] * 6.443 / 1.595
VISION_TILE_S["ax650"] = VISION_TILE_S["ax8850"] = VISION_TILE_S["ax650n"]
VISION_TILE_S["ax620e"] = VISION_TILE_S["ax630c"]
_FAMILY_NORM = {"idefics3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                "internvl": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def graph_layout(shape: Sequence[int], dtype: np.dtype) -> tuple[str, int, int]:
    """(layout, batch, tile size) of an image input of this shape: NCHW [B,3,S,S] or NHWC [B,S,S,3].
    Raises EngineError for anything else."""
    shape = [int(d) for d in shape]
    if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3]:
        return "NCHW", shape[0], shape[2]
    if len(shape) == 4 and shape[3] == 3 and shape[1] == shape[2]:
        return "NHWC", shape[0], shape[1]
    raise EngineError(f"vision encoder input of shape {shape} ({np.dtype(dtype).name}) is neither NCHW "
                      f"[B,3,S,S] nor NHWC [B,S,S,3]; npuflow feeds square image tiles only")


def normalization(section: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean [3], std [3], rescale factor) that turn bytes into the encoder's float pixels."""
    inp, proc = section.get("input") or {}, section.get("processor") or {}
    fam_mean, fam_std = _FAMILY_NORM.get(str(section.get("family")), (None, None))
    mean = inp.get("mean", proc.get("image_mean", fam_mean))
    std = inp.get("std", proc.get("image_std", fam_std))
    scale = inp.get("rescale_factor", proc.get("rescale_factor", 1 / 255))
    if mean is None or std is None:
        raise PackageError(f"vision encoder takes uint8 pixels, but the package names no image mean/std "
                           f"(family {section.get('family')!r})")
    mean, std = np.broadcast_to(np.asarray(mean, np.float64), (3,)), np.broadcast_to(np.asarray(std, np.float64), (3,))
    return mean, std, float(scale)


def to_bytes(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float, layout: str) -> np.ndarray:
    """Normalized float pixels [N,3,S,S] back to the uint8 image they were made from (NHWC or NCHW)."""
    x = pixels.astype(np.float64) * std[None, :, None, None] + mean[None, :, None, None]
    raw = np.clip(np.rint(x / scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(raw.transpose(0, 2, 3, 1) if layout == "NHWC" else raw)


class AxVisionEncoder:
    """open_vision_encoder's AX implementation: encode(pixels [N,3,S,S] float32) -> [N*T, H]."""

    def __init__(self, package: ModelPackage, *, threads: int = 2, session_factory: SessionFactory | None = None,
                 device_id: int | None = None, provider: str = "", cmm_info: str = CMM_INFO,
                 axcl_smi: str | Sequence[str] = AXCL_SMI, check_memory: bool = True, simulate_timing: str = ""):
        section = package.extra.get("vision")
        ax = package.extra.get("ax") or {}
        if not section or not ax.get("vision_file"):
            raise PackageError(f"model '{package.id}' has no vision encoder (no vision axmodel in {package.path})")
        path = package.path / ax["vision_file"]
        factory = session_factory or factory_for(path, device_id=device_id, provider=provider, threads=threads)
        if check_memory:
            check_fits(int(ax.get("vision_kb") or path.stat().st_size // 1024), "the vision encoder", cmm_info,
                       estimated=True, provider=getattr(factory, "provider", ""),
                       device_id=getattr(factory, "device_id", device_id), smi=axcl_smi)
        if simulate_timing and simulate_timing.lower() not in VISION_TILE_S:
            raise ValueError(f"unknown simulate_timing '{simulate_timing}' (one of {', '.join(sorted(VISION_TILE_S))})")
        self.package = package
        self.clock = DeviceClock()
        self._sess: Any = factory(path)
        self._closed = False
        try:
            ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
            if len(ins) != 1:
                raise EngineError(f"{path.name}: the vision encoder has {len(ins)} inputs ({[a.name for a in ins]}); "
                                  f"npuflow feeds one image input")
            arg = ins[0]
            self._in_name, self._in_dtype, self._in_shape = arg.name, np.dtype(arg.dtype), tuple(int(d) for d in arg.shape)
            self.layout, self._batch, self.tile_size = graph_layout(self._in_shape, self._in_dtype)
            if self._in_dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
                raise EngineError(f"{path.name}: vision encoder input dtype {self._in_dtype.name}; npuflow feeds "
                                  f"uint8 (raw RGB) or float32 (normalized) pixels")
            out_shape = [int(d) for d in outs[0].shape]
            self.hidden = out_shape[-1]
            self.tokens_per_tile = int(np.prod(out_shape[:-1])) // self._batch
            section = dict(section)
            section["input"] = {**(section.get("input") or {}), "name": self._in_name, "layout": self.layout,
                                "dtype": self._in_dtype.name}
            want = {"tile_size": self.tile_size, "tokens_per_tile": self.tokens_per_tile, "hidden": self.hidden}
            for key, got in want.items():
                if section.get(key) and int(section[key]) != got:
                    raise EngineError(f"{path.name}: the vision encoder graph has {key} {got}, the package says "
                                      f"{section[key]}")
            section.update(want)
            if package.dims.hidden and package.dims.hidden != self.hidden:
                raise EngineError(f"{path.name}: vision encoder rows have {self.hidden} values, the text model's "
                                  f"hidden size is {package.dims.hidden}")
            self._norm = normalization(section) if self._in_dtype == np.uint8 else None
            self.section = section
            if simulate_timing:
                tile_s = VISION_TILE_S[simulate_timing.lower()] * self._batch
                self._sess = TimedSession(self._sess, TimingProfile(simulate_timing, 0.0, tile_s, 0.0), post=True,
                                          clock=self.clock)
            from ..vision import VisionSpec  # noqa: PLC0415 - the shared spec type (npuflow/vision)
            self.spec = VisionSpec.from_manifest(section)
        except BaseException:
            self.close()
            raise
        log.info("ax vision encoder ready", model=package.id, file=path.name, layout=self.layout,
                 dtype=self._in_dtype.name, tile=self.tile_size, tokens_per_tile=self.tokens_per_tile,
                 batch=self._batch, provider=getattr(factory, "provider", None))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [N, 3, S, S] (npuflow.vision.preprocess) -> float32 [N * T, H]."""
        if self._closed:
            raise EngineError("the vision encoder is closed")
        px = np.asarray(pixels)
        S = self.tile_size
        if px.ndim != 4 or px.shape[1:] != (3, S, S) or len(px) == 0:
            raise EngineError(f"vision encoder takes pixels [N, 3, {S}, {S}], got {list(px.shape)}")
        if self._norm is not None:
            feed = to_bytes(px, *self._norm, self.layout)
        else:
            feed = px.astype(np.float32, copy=False)
            if self.layout == "NHWC":
                feed = feed.transpose(0, 2, 3, 1)
        feed = np.ascontiguousarray(feed)
        out = np.empty((len(px) * self.tokens_per_tile, self.hidden), np.float32)
        B, T = self._batch, self.tokens_per_tile
        for lo in range(0, len(px), B):
            part = feed[lo:lo + B]
            n = len(part)
            if n < B:
                part = np.concatenate([part, np.zeros((B - n, *part.shape[1:]), part.dtype)])
            res = self._sess.run(None, {self._in_name: part})[0]
            out[lo * T:(lo + n) * T] = np.asarray(res, dtype=np.float32).reshape(B * T, self.hidden)[:n * T]
        return out

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if getattr(self, "_sess", None) is not None:
            release_session(self._sess)
        self._sess = None
