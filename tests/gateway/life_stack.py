"""A gateway under a fake supervisor (fake_supervisor.py) with three models, A, B and C, each of
the same footprint, and a memory budget that holds `fits` of them; A is preloaded (its worker
runs before the gateway starts, as `npuflow serve` does), B and C load on demand."""
from __future__ import annotations

import asyncio
import os
import pathlib
import threading

import zmq.asyncio

from npuflow.config import ModelSettings, ServerSettings, Settings, TokenizerSettings
from npuflow.models.footprint import footprint

from gw_stack import Stack
from fake_supervisor import FakeSupervisor
from gw_fakes import KEY, FakeTokenizer

MODELS = ("model-a", "model-b", "model-c")


class LifeStack(Stack):
    def __init__(self, tmp: pathlib.Path, fits: float = 2.5, keep_alive: str = "forever", preload_a: bool = True,
                 request_timeout_s: float = 10.0, start_delay: float = 0.0, cache_dir: str = "",
                 started: bool = True):
        models = tuple(ModelSettings(id=m, endpoint=f"ipc://{tmp}/w-{m}.sock", max_batch=2, max_queue=4,
                                     preload=(m == MODELS[0] and preload_a),
                                     keep_alive="" if m == MODELS[0] else keep_alive)
                       for m in MODELS)
        cache = cache_dir or os.path.expanduser("~/.cache/npuflow")
        self.footprint = footprint(models[0], cache)
        budget = str(int(self.footprint.bytes * fits)) if fits else ""
        self.settings = Settings(
            server=ServerSettings(host="127.0.0.1", port=8000, api_keys=(KEY,), max_body_bytes=65536,
                                  request_timeout_s=request_timeout_s, run_dir=str(tmp), memory_budget=budget,
                                  cache_dir=cache),
            tokenizer=TokenizerSettings(endpoint=f"ipc://{tmp}/tok.sock"), models=models)
        self.control = f"ipc://{tmp}/supervisor.sock"
        self.start_delay = start_delay
        self.preload_a = preload_a
        self.started = started     # the supervisor started A before the gateway came (it fit the budget)
        self.context_length, self.vision, self.key = 64, False, KEY
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._env = {k: os.environ.get(k) for k in ("NPUFLOW_SUPERVISED", "NPUFLOW_CONTROL_ENDPOINT")}
        os.environ.update(NPUFLOW_SUPERVISED="1", NPUFLOW_CONTROL_ENDPOINT=self.control)
        try:
            self.call(self._start())
        finally:
            for k, v in self._env.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    async def _start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.tokenizer = FakeTokenizer(self.ctx, self.settings.tokenizer.endpoint, list(MODELS))
        self.sup = FakeSupervisor(self.ctx, self.control, {m.id: m.endpoint for m in self.settings.models})
        self.sup.start_delay = self.start_delay
        if self.preload_a and self.started:
            self.sup.preload(MODELS[0])
        await self._serve_app()

    async def _stop_peers(self) -> None:
        await self.sup.close()
        await self.tokenizer.close()

    def app_manager(self):
        from npuflow.gateway.state import STATE
        return self.app[STATE].models

    def states(self) -> dict[str, str]:
        _, _, body = self.request("GET", "/v1/models")
        return {m["id"]: m["status"]["state"] for m in body["data"]}

    def chat(self, model: str, **kw):
        return self.request("POST", "/v1/chat/completions",
                            {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw})
