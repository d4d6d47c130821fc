"""A gateway on a real TCP port with fake worker and tokenizer peers, all on one background
event loop, so tests can drive it with blocking clients (the official `openai` SDK, http.client).
Used by tests/gateway (through its conftest's fixtures) and tests/webui."""
from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import threading
import time

import zmq.asyncio
from aiohttp import web

from npuflow.config import ModelSettings, ServerSettings, Settings, TokenizerSettings
from npuflow.gateway import create_app

from gw_fakes import EMBED_MODEL, KEY, MODEL, FakeTokenizer, FakeWorker


class Stack:
    def __init__(self, tmp: pathlib.Path, api_keys=(KEY,), context_length: int = 64, max_queue: int = 4,
                 request_timeout_s: float = 30.0, stream_write_timeout_s: float = 30.0, vision: bool = False,
                 embed: bool = False, **server):
        self.settings = Settings(
            server=ServerSettings(host="127.0.0.1", port=8000, api_keys=tuple(api_keys), max_body_bytes=65536,
                                  request_timeout_s=request_timeout_s, stream_write_timeout_s=stream_write_timeout_s,
                                  run_dir=str(tmp), **server),
            tokenizer=TokenizerSettings(endpoint=f"ipc://{tmp}/tok.sock"),
            models=(ModelSettings(id=MODEL, endpoint=f"ipc://{tmp}/worker.sock", max_queue=max_queue,
                                  max_batch=2),)
            + ((ModelSettings(id=EMBED_MODEL, endpoint=f"ipc://{tmp}/embed.sock", max_queue=max_queue,
                              max_batch=1),) if embed else ()))
        self.embed = embed        # a second model, EMBED_MODEL, served by an embedding FakeWorker
        self.context_length = context_length
        self.vision = vision      # the fake peers say the model takes images
        self.key = api_keys[0] if api_keys else ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())
        self.wait_health(200)

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.tokenizer = FakeTokenizer(self.ctx, self.settings.tokenizer.endpoint,
                                       [MODEL, EMBED_MODEL] if self.embed else [MODEL],
                                       (MODEL,) if self.vision else ())
        self.worker = FakeWorker(self.ctx, self.settings.models[0].endpoint, MODEL, self.context_length, self.vision)
        self.embed_worker = FakeWorker(self.ctx, self.settings.models[1].endpoint, EMBED_MODEL, self.context_length,
                                       embedding=True) if self.embed else None
        await self._serve_app()

    async def _serve_app(self) -> None:
        """The gateway app of self.settings on a free loopback port (self.port)."""
        self.app = create_app(self.settings)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=2)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await self.site.start()
        self.port = self.runner.addresses[0][1]

    async def new_worker(self) -> FakeWorker:
        """Replace the worker by a new process (new worker_id) at the same endpoint."""
        await self.worker.close()
        self.worker = FakeWorker(self.ctx, self.settings.models[0].endpoint, MODEL, self.context_length, self.vision)
        return self.worker

    async def _stop_peers(self) -> None:
        await self.worker.close()
        if self.embed_worker is not None:
            await self.embed_worker.close()
        await self.tokenizer.close()

    def close(self) -> None:
        async def stop():
            await self.runner.cleanup()
            await self._stop_peers()
            self.ctx.term()
        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None,
                auth: bool = True, timeout: float = 10.0):
        """(status, headers, parsed JSON or text)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json"}
        if auth and self.key:
            h["Authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        try:
            return r.status, dict(r.getheaders()), json.loads(text)
        except ValueError:
            return r.status, dict(r.getheaders()), text

    def sse(self, path: str, body: dict, timeout: float = 10.0):
        """(status, content type, list of data payloads) of a streamed request."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("POST", path, body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, r.getheader("Content-Type"), json.loads(r.read())
        events = [line[5:].strip().decode() for line in r if line.startswith(b"data:")]
        c.close()
        return r.status, r.getheader("Content-Type"), events

    def wait_health(self, status: int, timeout: float = 5.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            st, _, body = self.request("GET", "/health")
            if st == status or time.monotonic() > end:
                assert st == status, body
                return body
            time.sleep(0.02)
