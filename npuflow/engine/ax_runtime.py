"""Where AX sessions come from: pyaxengine on a board, the onnxruntime mirror on a PC.

A session factory maps a graph file to a session with pyaxengine's API. `axengine` is imported
only when a factory for real NPU files is built, so hosts without the NPU libraries never touch it.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable

SessionFactory = Callable[[pathlib.Path], Any]
PROVIDERS = ("AxEngineExecutionProvider", "AXCLRTExecutionProvider")


class AxRuntimeError(Exception):
    """The AX runtime cannot be used on this host; one line."""


def load_axengine():
    try:
        import axengine  # noqa: PLC0415 - imported only when an AX model is configured
    except ImportError as e:
        raise AxRuntimeError(f"pyaxengine (import axengine) is not usable on this host ({e}); install the "
                             f"axengine wheel on the board (deploy/README.md) or serve the model with "
                             f"engine = \"cpu\"") from None
    except OSError as e:  # a library that exists but cannot be loaded
        raise AxRuntimeError(f"pyaxengine cannot load the NPU libraries ({e})") from None
    return axengine


def axengine_factory(device_id: int | None = None, provider: str = "") -> SessionFactory:
    """Sessions on the NPU. device_id selects a card (AXCL); provider forces one of PROVIDERS."""
    ax = load_axengine()
    if provider and provider not in PROVIDERS:
        raise AxRuntimeError(f"unknown AX provider '{provider}' (one of {', '.join(PROVIDERS)})")

    def make(path: pathlib.Path):
        kwargs: dict[str, Any] = {}
        if provider:
            kwargs["providers"] = [provider]
        if device_id is not None:
            kwargs["provider_options"] = [{"device_id": int(device_id)}]
        return ax.InferenceSession(str(path), **kwargs)
    return make


def ort_factory(threads: int = 1) -> SessionFactory:
    """Sessions on onnxruntime for the .onnx files of `npuflow convert --layout ax`."""
    from .ax_ort import OrtAxSession
    return lambda path: OrtAxSession(path, threads=threads)


def factory_for(graph_file: pathlib.Path, *, device_id: int | None = None, provider: str = "",
                threads: int = 1) -> SessionFactory:
    """The factory that runs graph_file's kind: .onnx on onnxruntime, anything else on the NPU."""
    if graph_file.suffix == ".onnx":
        return ort_factory(threads)
    return axengine_factory(device_id, provider)


def release_session(sess: Any) -> None:
    """Free a session's runtime handle now (pyaxengine frees in __del__ / __exit__ otherwise)."""
    for name in ("close", "_unload"):
        fn = getattr(sess, name, None)
        if callable(fn):
            try:
                fn()
            except Exception:  # noqa: BLE001 - releasing must never raise on an exit path
                pass
            return
