"""Server-sent events in the OpenAI flavour: `data: <json>\\n\\n` ... `data: [DONE]\\n\\n`."""
from __future__ import annotations

import json

from aiohttp import web

from npuflow.gateway.errors import ApiError

DONE = b"data: [DONE]\n\n"


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    return resp


def event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


async def send_error_and_done(resp: web.StreamResponse, err: ApiError) -> None:
    """A failure after the headers went out: an error event, then [DONE]."""
    await resp.write(event(json.dumps(err.body())) + DONE)


class ChunkWriter:
    """Builds chunk JSON cheaply: the fields every chunk shares are serialized once."""

    def __init__(self, resp: web.StreamResponse, id_: str, object_: str, created: int, model: str,
                 usage_null: bool):
        self.resp = resp
        self._head = (f'{{"id":{json.dumps(id_)},"object":"{object_}","created":{created},'
                      f'"model":{json.dumps(model)},"choices":')
        self._tail = ',"usage":null}' if usage_null else "}"

    async def choices(self, choices: list[dict]) -> None:
        await self.resp.write(event(self._head + json.dumps(choices) + self._tail))

    async def usage(self, usage: dict) -> None:
        await self.resp.write(event(self._head + '[],"usage":' + json.dumps(usage) + "}"))

    async def done(self) -> None:
        await self.resp.write(DONE)
