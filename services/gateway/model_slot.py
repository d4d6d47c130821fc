"""One model's place in the lifecycle (lifecycle.py): its settings, footprint and state.

States: `unloaded` (no worker), `loading` (room is being made, or its worker is starting),
`loaded` (serving), `unloading` (draining, then its worker stops; clients see `loaded` until it
has stopped, and new requests wait for the reload), `failed` (its worker could not load it: the
reason is kept, requests get 503 at once, and a request retries only after a back-off).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from npuflow.config import ModelSettings
from npuflow.models.footprint import Footprint

FAILED_RETRY_S = 30.0        # a failed model is tried again by a request after this long ...
FAILED_RETRY_MAX_S = 600.0   # ... doubling per failure up to this
CRASH_BACKOFF_S = 0.5        # a preloaded model whose worker exited is reloaded after this ...
CRASH_BACKOFF_MAX_S = 10.0   # ... doubling per exit (reset after HEALTHY_AFTER_S up) up to this
HEALTHY_AFTER_S = 30.0


@dataclass
class ModelSlot:
    settings: ModelSettings
    footprint: Footprint
    keep_alive_s: float                 # math.inf = never unloaded for being idle
    state: str = "unloaded"
    reason: str = ""                    # why it failed, or why it was last unloaded
    reserved: bool = False              # its footprint counts against the budget
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    task: asyncio.Task | None = None    # the running load or unload
    failures: int = 0
    retry_at: float = 0.0               # failed: a request may try again from then (monotonic)
    crash_backoff: float = CRASH_BACKOFF_S
    waiters: int = 0                    # callers inside ensure() (waiting for the model)
    explicit: int = 0                   # POST /models/load callers waiting
    load_seconds: float = 0.0           # the last load, start to Hello
    worker_seconds: tuple[float, float] = (0.0, 0.0)   # its Hello's start_seconds, load_seconds
    vision: bool = False                # takes images (the package says, until its worker does)
    embedding: bool = False             # an embedding model (the package says, until its worker does)
    expected: bool = False              # should be loaded now: preloaded and not unloaded on purpose
                                        # (health is 503 while such a model is not loaded)
    created: int = field(default_factory=lambda: int(time.time()))
    context_length: int = 0             # what its worker's Hello said (0 = not known yet)
    max_batch: int = 0

    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def busy_task(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def public_state(self) -> str:
        return "loaded" if self.state == "unloading" else self.state

    def fail(self, reason: str) -> None:
        self.state, self.reason, self.reserved = "failed", reason, False
        self.failures += 1
        self.retry_at = time.monotonic() + min(FAILED_RETRY_MAX_S, FAILED_RETRY_S * 2 ** (self.failures - 1))

    def keep_alive_public(self) -> float | None:
        """keep_alive for clients: seconds, or None for "forever"."""
        return None if math.isinf(self.keep_alive_s) else self.keep_alive_s


def offline_vision(model: ModelSettings) -> bool:
    """Whether the model takes images, read from its package or checkpoint without loading it
    (a request with images for an unloaded vision model must not be refused)."""
    import json
    import pathlib
    if model.source == "default":
        return False
    path = pathlib.Path(model.source).expanduser()
    try:
        if path.is_dir() and (path / "manifest.json").is_file():
            return "vision" in json.loads((path / "manifest.json").read_text())
        if path.is_dir():
            from npuflow.models.ax_package import is_ax_dir, read_ax_package
            if is_ax_dir(path):
                return "vision" in read_ax_package(path, model.id).extra
            if (path / "config.json").is_file():
                return "vision_config" in json.loads((path / "config.json").read_text())
    except Exception:   # an unreadable package fails when it loads, with its reason
        return False
    return False


def offline_embedding(model: ModelSettings) -> bool:
    """Whether the model is an embedding model, read from its package or checkpoint without
    loading it (so a request to an unloaded model is told apart before it is loaded)."""
    import json
    import pathlib
    if model.source == "default":
        return False
    path = pathlib.Path(model.source).expanduser()
    try:
        if path.is_dir() and (path / "manifest.json").is_file():
            return isinstance(json.loads((path / "manifest.json").read_text()).get("embedding"), dict)
        if path.is_dir() and (path / "config.json").is_file():
            from npuflow.convert.embed_source import is_embedding_folder
            return is_embedding_folder(path)
    except Exception:   # an unreadable package fails when it loads, with its reason
        return False
    return False
