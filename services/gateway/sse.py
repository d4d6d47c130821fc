"""Server-sent events: chat and completions send `data: <json>\\n\\n` ... `data: [DONE]\\n\\n`, the
Responses API typed events (`event: <type>` lines, openai_responses.py).

A client that stops reading must not hold its request (and the model's queue room and KV slot)
forever. Each stream's transport buffers at most STREAM_BUFFER_BYTES, and its socket
STREAM_SOCKET_BUFFER_BYTES, before a write waits for the client (aiohttp's write awaits the
transport's drain above its high-water mark), and every
write, the end of the body included, may wait at most `server.stream_write_timeout_s`, and never
past the request's deadline (plus DEADLINE_GRACE_S, so a reading client still gets the deadline's
error event). A write that waits longer drops the connection and raises ClientStalled; the
handler then leaves its delta stream, which sends the worker its Abort.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

from aiohttp import web

from npuflow.gateway.errors import ApiError
from npuflow.logs import get_logger

log = get_logger("gateway")

DONE = b"data: [DONE]\n\n"
STREAM_BUFFER_BYTES = 64 * 1024   # the transport's write-buffer high-water mark per stream
STREAM_SOCKET_BUFFER_BYTES = 128 * 1024   # the kernel's send buffer of a stream's socket (no autotuning
                                          # to megabytes; ample for token rates at any round trip)
DEADLINE_GRACE_S = 1.0


class ClientStalled(Exception):
    """A write to the client waited past its bound; the connection was dropped."""


def write_bound(timeout_s: float, deadline_s: float) -> float:
    """How long one write to a client may wait: `timeout_s`, and never past `deadline_s` (unix
    seconds, 0 = none) plus DEADLINE_GRACE_S. The HTTP and gRPC streams share it."""
    if not deadline_s:
        return timeout_s
    return min(timeout_s, max(deadline_s - time.time(), 0.0) + DEADLINE_GRACE_S)


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    transport = request.transport
    if transport is not None:
        transport.set_write_buffer_limits(high=STREAM_BUFFER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SOCKET_BUFFER_BYTES)
    await resp.prepare(request)
    return resp


def event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


class BoundedWriter:
    """Writes one stream's bytes with the time bound above (every write, and the end of the body)."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, *, deadline_unix_ms: int = 0,
                 write_timeout_s: float = 30.0):
        self.request = request
        self.resp = resp
        self._deadline = deadline_unix_ms / 1000.0 if deadline_unix_ms else 0.0
        self._write_timeout = write_timeout_s
        self._stalled = False

    def _stall(self) -> None:
        self._stalled = True
        log.info("client stopped reading; connection closed", write_timeout_s=self._write_timeout)
        transport = self.request.transport
        if transport is not None:
            transport.abort()   # buffered bytes dropped; the waiting write fails with ConnectionError

    async def _bounded(self, write) -> None:
        if self._stalled:
            raise ClientStalled()
        # a timer, not wait_for: no task per chunk; it fires only when the write really waits
        timer = asyncio.get_running_loop().call_later(write_bound(self._write_timeout, self._deadline), self._stall)
        try:
            await write
        except ConnectionError:
            if self._stalled:
                raise ClientStalled() from None
            raise
        finally:
            timer.cancel()
        if self._stalled:
            raise ClientStalled()

    async def write(self, data: bytes) -> None:
        await self._bounded(self.resp.write(data))

    async def end(self) -> None:
        """The end of the body (its flush is bounded too)."""
        await self._bounded(self.resp.write_eof())


class ChunkWriter(BoundedWriter):
    """Chat and completion chunks. Builds chunk JSON cheaply: the fields every chunk shares are
    serialized once."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, id_: str, object_: str, created: int,
                 model: str, usage_null: bool, *, deadline_unix_ms: int = 0, write_timeout_s: float = 30.0):
        super().__init__(request, resp, deadline_unix_ms=deadline_unix_ms, write_timeout_s=write_timeout_s)
        self._head = (f'{{"id":{json.dumps(id_)},"object":"{object_}","created":{created},'
                      f'"model":{json.dumps(model)},"choices":')
        self._tail = ',"usage":null}' if usage_null else "}"

    async def choices(self, choices: list[dict]) -> None:
        await self.write(event(self._head + json.dumps(choices) + self._tail))

    async def usage(self, usage: dict) -> None:
        await self.write(event(self._head + '[],"usage":' + json.dumps(usage) + "}"))

    async def done(self) -> None:
        """[DONE] and the end of the body (whose flush is bounded too)."""
        await self.write(DONE)
        await self.end()

    async def error_and_done(self, err: ApiError) -> None:
        """A failure after the headers went out: an error event, then [DONE]."""
        await self.write(event(json.dumps(err.body())))
        await self.done()
