"""The vision encoder of a vision-language package: its vision graph (vision tower + connector,
npuflow/convert/vision_graph.py) on onnxruntime, pixels in, rows for the image placeholders out.

`open_vision_encoder(package)` gives None for a text-only package, the AX engine's encoder
(npuflow.engine.ax_vision) for an AX package and `VisionEncoder` (this module) otherwise. Both
answer `encode(pixels [N, 3, S, S] float32) -> [N * T, hidden] float32` and carry `.spec`
(npuflow.vision.VisionSpec). Tiles are independent, so a caller may encode them one at a time
(the worker does, to interleave encoding with running streams).
"""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from ..logs import get_logger
from ..models.package import ModelPackage, PackageError
from .base import EngineError
from .ort_options import session_options

log = get_logger("engine.vision")


def open_vision_encoder(package: ModelPackage, *, threads: int = 2):
    """The package's vision encoder, or None when the package has no vision section."""
    if not package.extra.get("vision"):
        return None
    if package.engine == "ax":
        from .ax_vision import AxVisionEncoder  # noqa: PLC0415 - pulls in the AX runtime
        return AxVisionEncoder(package, threads=threads)
    return VisionEncoder(package, threads=threads)


class VisionEncoder:
    """The CPU vision encoder: one onnxruntime session on package.file("vision_model")."""

    def __init__(self, package: ModelPackage, *, threads: int = 2):
        from ..vision import VisionSpec  # noqa: PLC0415

        started = time.monotonic()
        self.spec = VisionSpec.from_manifest(package.extra.get("vision"))
        path = package.file("vision_model")
        opts = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise PackageError(f"{path}: cannot load the vision encoder ({type(e).__name__}: {e})") from None
        self._in = self.spec.input.get("name", "pixel_values")
        self._out = self.spec.output
        self._check_graph(path.name)
        self._closed = False
        log.info("vision encoder ready", model=package.id, family=self.spec.family, file=path.name,
                 tile=self.spec.tile_size, tokens_per_tile=self.spec.tokens_per_tile, hidden=self.spec.hidden,
                 threads=threads, load_ms=round((time.monotonic() - started) * 1000))

    def _check_graph(self, name: str) -> None:
        ins = {a.name: a for a in self._sess.get_inputs()}
        outs = {a.name: a for a in self._sess.get_outputs()}
        if self._in not in ins or self._out not in outs:
            raise PackageError(f"{name}: the vision graph has inputs {sorted(ins)} and outputs {sorted(outs)}; "
                               f"the manifest names '{self._in}' and '{self._out}'")
        S, T, H = self.spec.tile_size, self.spec.tokens_per_tile, self.spec.hidden
        got_in, got_out = list(ins[self._in].shape)[1:], list(outs[self._out].shape)[1:]
        if got_in != [3, S, S] or got_out != [T, H]:
            raise PackageError(f"{name}: the vision graph maps [N, {', '.join(map(str, got_in))}] to "
                               f"[N, {', '.join(map(str, got_out))}]; the manifest says [N, 3, {S}, {S}] to [N, {T}, {H}]")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [N, 3, S, S] (npuflow.vision.preprocess) -> float32 [N * T, hidden]."""
        if self._closed:
            raise EngineError("the vision encoder is closed")
        px = np.asarray(pixels)
        S = self.spec.tile_size
        if px.ndim != 4 or px.shape[1:] != (3, S, S) or len(px) == 0:
            raise EngineError(f"vision encoder takes pixels [N, 3, {S}, {S}], got {list(px.shape)}")
        px = np.ascontiguousarray(px, dtype=np.float32)
        out = self._sess.run([self._out], {self._in: px})[0]
        return out.reshape(len(px) * self.spec.tokens_per_tile, self.spec.hidden)

    def close(self) -> None:
        self._closed = True
        self._sess = None
