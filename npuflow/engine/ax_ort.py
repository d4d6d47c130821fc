"""pyaxengine's public API on onnxruntime, for running AX-layout graphs on a PC (the mirror).

`InferenceSession(path_or_bytes, sess_options=None, providers=None, provider_options=None)` is
built like `axengine.InferenceSession` (axengine/_session.py): it picks a provider and wraps the
provider's session in `_sess` (ax_ort_providers.AXEngineSession or AXCLRTSession), which holds
the shape groups (`_shape_count`, `_inputs`, `_outputs`); the public object only forwards
get_inputs / get_outputs / run, and has get_providers() (the chosen provider's name),
get_session_options() and a `with` form whose exit frees nothing. It has no close(): a session
is freed when the last reference to it goes (see ax_runtime.release_session).

Provider choice, as pyaxengine makes it: None takes the first available provider; a str must be
available (else ValueError); a list takes its first available entry, each entry a str or a
(name, options) tuple (anything else fails an assert), and raises ValueError when none is
available; any other type finds no provider (ValueError). The options dict of a tuple is kept
but not passed on: only provider_options reaches the provider session. The mirror offers both
providers, on-board first, as pyaxengine does on a host without /dev/axcl_host.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .ax_ort_providers import (CAUSAL_MASK_KEY, SHAPE_GROUPS_KEY, AXCLRTSession, AXEngineSession,  # noqa: F401
                               NodeArg, check_causal_mask)

axengine_provider_name = "AxEngineExecutionProvider"
axclrt_provider_name = "AXCLRTExecutionProvider"
_providers = [axengine_provider_name, axclrt_provider_name]


def get_all_providers() -> list[str]:
    return [axengine_provider_name, axclrt_provider_name]


def get_available_providers() -> list[str]:
    return _providers


class SessionOptions:
    pass


class InferenceSession:
    def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any) -> None:
        self._sess: Any = None
        self._sess_options = sess_options
        self._provider: str | None = None
        self._provider_options: Any = None
        self._available_providers = get_available_providers()
        self._provider = self._choose(providers)
        if self._provider is None:
            raise ValueError(f"No available provider found in {providers}.")
        kind = {axclrt_provider_name: AXCLRTSession, axengine_provider_name: AXEngineSession}.get(self._provider)
        if kind is not None:
            self._sess = kind(path_or_bytes, sess_options, provider_options, **kwargs)
        if self._sess is None:
            raise RuntimeError(f"Create session failed with provider: {self._provider}")

    def _choose(self, providers: Any) -> str | None:
        have = self._available_providers
        if providers is None:
            return have[0]
        if isinstance(providers, str):
            if providers not in have:
                raise ValueError(f"Selected provider: '{providers}' is not available.")
            return providers
        if not isinstance(providers, list):
            return None
        chosen, missing = None, []
        for p in providers:
            assert isinstance(p, (str, tuple)), f"Invalid provider type: {type(p)}. Must be str or tuple."
            if isinstance(p, tuple):
                assert len(p) == 2, f"Invalid provider type: {p}. Must be tuple with 2 elements."
                assert isinstance(p[0], str), f"Invalid provider type: {type(p[0])}. Must be str."
                assert isinstance(p[1], dict), f"Invalid provider type: {type(p[1])}. Must be dict."
            name = p if isinstance(p, str) else p[0]
            if name not in have:
                missing.append(name)
            elif chosen is None:
                chosen = name
                if isinstance(p, tuple):
                    self._provider_options = p[1]
        if missing and chosen is None:
            raise ValueError(f"Selected provider(s): {missing} is(are) not available.")
        return chosen

    def __enter__(self) -> "InferenceSession":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        return False

    def get_session_options(self) -> Any:
        return self._sess_options

    def get_providers(self) -> str | None:
        return self._provider

    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._sess.get_inputs(shape_group)

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        return self._sess.get_outputs(shape_group)

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options: Any = None,
            shape_group: int = 0) -> list[np.ndarray]:
        return self._sess.run(output_names, input_feed, run_options, shape_group)
