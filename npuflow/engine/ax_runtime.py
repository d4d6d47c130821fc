"""Where AX sessions come from: pyaxengine on a board, the onnxruntime mirror on a PC.

A session factory maps a graph file to a session with pyaxengine's API. `axengine` is imported
only when a factory for real NPU files is built, so hosts without the NPU libraries never touch it.
Both runtimes get the same treatment: the provider is chosen up front (as pyaxengine would: the
first available one, unless the model names one), sessions are made with providers=[that one],
and what the runtime raises while loading a graph becomes a one-line AxRuntimeError.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any, Callable

SessionFactory = Callable[[pathlib.Path], Any]
AXENGINE = "AxEngineExecutionProvider"
AXCLRT = "AXCLRTExecutionProvider"
PROVIDERS = (AXENGINE, AXCLRT)
# what pyaxengine raises while loading a graph: RuntimeError (load, init, allocation), ValueError
# (provider, model type), AssertionError (a library missing), OSError (dlopen), TypeError
_LOAD_ERRORS = (RuntimeError, ValueError, AssertionError, OSError, TypeError)


class AxRuntimeError(Exception):
    """The AX runtime cannot be used on this host, or cannot load a graph; one line."""


class AxRuntimeMissing(AxRuntimeError, ImportError):
    """The runtime (pyaxengine, or onnxruntime for the mirror) cannot be imported; one line."""


@dataclass(frozen=True)
class Sessions:
    """A session factory that also says where its sessions run (the CMM check reads that)."""
    make: SessionFactory
    provider: str
    device_id: int | None = None

    def __call__(self, path: pathlib.Path) -> Any:
        return self.make(path)


def load_axengine():
    try:
        import axengine  # noqa: PLC0415 - imported only when an AX model is configured
    except ImportError as e:
        raise AxRuntimeMissing(f"pyaxengine (import axengine) is not usable on this host ({_line(e)}); install "
                               f"the axengine wheel on the board (deploy/README.md) or serve the model with "
                               f"engine = \"cpu\"") from None
    except OSError as e:  # a library that exists but cannot be loaded
        raise AxRuntimeError(f"pyaxengine cannot load the NPU libraries ({_line(e)})") from None
    return axengine


def axengine_factory(device_id: int | None = None, provider: str = "") -> Sessions:
    """Sessions on the NPU. device_id selects a card (AXCL); provider forces one of PROVIDERS."""
    return _sessions(load_axengine(), "pyaxengine", device_id, provider)


def ort_factory(threads: int = 1, device_id: int | None = None, provider: str = "") -> Sessions:
    """Sessions on onnxruntime for the .onnx files of `npuflow convert --layout ax`."""
    try:
        from . import ax_ort  # noqa: PLC0415
    except ImportError as e:
        raise AxRuntimeMissing(f"the onnxruntime mirror of pyaxengine cannot be imported ({_line(e)}); "
                               f".onnx AX graphs need onnxruntime, onnx and ml-dtypes") from None
    return _sessions(ax_ort, "the onnxruntime mirror", device_id, provider, threads=threads)


def factory_for(graph_file: pathlib.Path, *, device_id: int | None = None, provider: str = "",
                threads: int = 1) -> Sessions:
    """The factory that runs graph_file's kind: .onnx on onnxruntime, anything else on the NPU."""
    if graph_file.suffix == ".onnx":
        return ort_factory(threads, device_id, provider)
    return axengine_factory(device_id, provider)


def _sessions(ax: Any, runtime: str, device_id: int | None, provider: str, **kwargs: Any) -> Sessions:
    if provider and provider not in PROVIDERS:
        raise AxRuntimeError(f"unknown AX provider '{provider}' (one of {', '.join(PROVIDERS)})")
    available = list(ax.get_available_providers())
    if provider and provider not in available:
        raise AxRuntimeError(f"AX provider {provider} is not available on this host ({runtime} found "
                             f"{', '.join(available) or 'none'})")
    chosen = provider or available[0]
    options = None if device_id is None else [{"device_id": int(device_id)}]

    def make(path: pathlib.Path) -> Any:
        try:
            return ax.InferenceSession(str(path), providers=[chosen], provider_options=options, **kwargs)
        except _LOAD_ERRORS as e:
            raise AxRuntimeError(f"{path.name}: {runtime} cannot load it on {chosen} "
                                 f"({type(e).__name__}: {_line(e)})") from None
    return Sessions(make, chosen, device_id)


def release_session(sess: Any) -> None:
    """Free a session's NPU memory as far as pyaxengine lets a caller: pyaxengine has no close().
    Its on-board session (AXEngineSession) destroys its handle in __del__, so the caller frees it
    by dropping every reference; nothing is called here (a second destroy would get a NULL
    handle). Its card session (AXCLRTSession) is also held in the module's list of instances until
    exit, so its __del__ never comes: it is unloaded here (device buffers and model; pyaxengine's
    _unload may run again at exit). Wrappers (TimedSession) name their session in `.wrapped`.
    The on-board session's input/output buffers in CMM are not freed by pyaxengine at all (it
    allocates them and never calls AX_SYS_MemFree); they stay until the process exits."""
    while hasattr(sess, "wrapped"):
        sess = sess.wrapped
    get = getattr(sess, "get_providers", None)
    inner = getattr(sess, "_sess", None)
    try:
        if callable(get) and get() == AXCLRT and callable(getattr(inner, "_unload", None)):
            inner._unload()
    except Exception:  # noqa: BLE001 - releasing must never raise on an exit path
        pass


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
