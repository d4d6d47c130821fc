"""Build the AX engine for a configured model (what the worker calls for engine = "ax")."""
from __future__ import annotations

from typing import Any

from ..models.package import ModelPackage, PackageError
from .ax import AxEngine
from .ax_cmm import CMM_INFO, CmmError
from .ax_runtime import AxRuntimeError, AxRuntimeMissing, factory_for
from .ax_vision import AxVisionEncoder
from .base import EngineError

# errors that mean "this model cannot start here"; their messages are one line. AxRuntimeError
# covers a missing runtime (AxRuntimeMissing, also an ImportError) and graphs the runtime cannot load.
AX_START_ERRORS = (AxRuntimeMissing, AxRuntimeError, CmmError, PackageError, EngineError)


def build_ax_engine(package: ModelPackage, model: Any, *, cmm_info: str = CMM_INFO) -> AxEngine:
    """model: ModelSettings (engine, max_batch, threads, device_id, ax_provider, simulate_timing)."""
    ax = package.extra.get("ax")
    if package.engine != "ax" or not ax:
        raise PackageError(f"{package.path}: engine \"ax\" needs a pulsar2 or StackFlow model directory "
                           f"(*.axmodel files with config.json or mode_<id>.json), not a {package.engine} package")
    device_id = getattr(model, "device_id", -1)
    factory = factory_for(package.path / ax["layer_files"][0], device_id=None if device_id < 0 else device_id,
                          provider=getattr(model, "ax_provider", ""), threads=model.threads)
    return AxEngine(package, max_slots=model.max_batch, context_length=package.context_length,
                    session_factory=factory, simulate_timing=getattr(model, "simulate_timing", ""),
                    cmm_info=cmm_info)


def build_ax_vision(package: ModelPackage, model: Any, *, cmm_info: str = CMM_INFO) -> AxVisionEncoder | None:
    """The package's vision encoder on the same runtime, provider and card as its LLM graphs
    (None for a text-only package); raises what build_ax_engine raises (AX_START_ERRORS)."""
    ax = package.extra.get("ax") or {}
    if not package.extra.get("vision") or not ax.get("vision_file"):
        return None
    device_id = getattr(model, "device_id", -1)
    factory = factory_for(package.path / ax["vision_file"], device_id=None if device_id < 0 else device_id,
                          provider=getattr(model, "ax_provider", ""), threads=model.threads)
    return AxVisionEncoder(package, session_factory=factory, cmm_info=cmm_info,
                           simulate_timing=getattr(model, "simulate_timing", ""))
