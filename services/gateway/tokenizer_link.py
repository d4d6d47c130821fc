"""The gateway's connection to the tokenizer service: one DEALER, one receive loop, a probe loop.

Requests and answers are matched by request_id. The tokenizer is down when its connection
drops (its process died) or, for a hung one, when the liveness probe (`list_models` every
500 ms) has no answer for 1.5 s: pending calls fail with 503 and new calls wait (bounded) for it
to come back.

The model lists (`models`, `failed`, `vision`) are the tokenizer's word: each probe answer
replaces them, and a `load_model` answer (the tokenizer loads models not preloaded on demand)
updates its model at once, so that the gateway sees a model loaded (or failed) as soon as its
load returns, not a probe later.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Sequence

import zmq

from npuflow.config import Settings
from npuflow.gateway.client import ChatTokens, ChatTurn, ImagePart, ImageSpan
from npuflow.gateway.errors import ApiError, model_not_available
from npuflow.gateway.peer_watch import Dealer, watch_disconnects
from npuflow.logs import get_logger
from npuflow.transport import make_socket
from npuflow.v1 import tokenizer_pb2

log = get_logger("gateway")

PROBE_INTERVAL_S = 0.5
PROBE_INTERVAL_NOT_READY_S = 0.05   # find a (re)starting tokenizer quickly
DOWN_AFTER_S = 1.5


def _down_error() -> ApiError:
    return ApiError(503, "The tokenizer service is not available; try again later.", code="tokenizer_unavailable")


class TokenizerLink:
    """TokenizerClient over ZMQ."""

    def __init__(self, settings: Settings, ctx: zmq.Context, wait_s: float = 120.0):
        self.endpoint = settings.tokenizer.endpoint
        self.wait_s = min(wait_s, settings.server.request_timeout_s)
        self._ctx = ctx
        self.sock: zmq.Socket | None = None
        self.dealer: Dealer | None = None
        self.ready = False
        self._ready_evt = asyncio.Event()
        self.models: dict[str, int] = {}
        self.failed: dict[str, str] = {}   # model -> why its tokenizer could not be loaded
        self.vision: set[str] = set()      # models whose tokenizer places images (TokenizerModel.vision)
        self.last_rx = 0.0
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False)
        self.dealer = Dealer(self.sock)
        self._tasks = [asyncio.create_task(self._recv_loop(), name="recv_from_tokenizer"),
                       asyncio.create_task(self._probe_loop(), name="probe_tokenizer"),
                       asyncio.create_task(watch_disconnects(self.sock, lambda: self._down("disconnected")),
                                           name="watch_tokenizer")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_all()
        if self.sock is not None:
            self.sock.close(linger=0)

    async def _recv_loop(self) -> None:
        FromString = tokenizer_pb2.TokenizerResponse.FromString
        async for batch in self.dealer.batches():
            self.last_rx = time.monotonic()
            for data in batch:
                try:
                    resp = FromString(data)
                except Exception:
                    log.warning("undecodable frame from tokenizer", size=len(data))
                    continue
                if not self.ready:
                    self.ready = True
                    self._ready_evt.set()
                    log.info("tokenizer ready")
                if resp.WhichOneof("kind") == "models":
                    self._on_models(resp.models.models)
                    continue
                if resp.WhichOneof("kind") == "loaded":   # also a late one, its call timed out
                    self._on_loaded(resp.loaded)
                fut = self._pending.pop(resp.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp)

    def _on_models(self, models) -> None:
        failed = {m.model: m.failed_reason for m in models if m.failed_reason}
        for model, reason in failed.items():
            if self.failed.get(model) != reason:
                log.warning("model failed in the tokenizer", model=model, reason=reason)
        self.failed = failed
        self.models = {m.model: m.vocab_size for m in models if not m.failed_reason}
        self.vision = {m.model for m in models if m.vision and not m.failed_reason}

    def _on_loaded(self, m: tokenizer_pb2.TokenizerModel) -> None:
        """One model's state from a load_model answer (new dicts: readers may hold the old ones)."""
        failed, models, vision = dict(self.failed), dict(self.models), set(self.vision)
        if m.failed_reason:
            if failed.get(m.model) != m.failed_reason:
                log.warning("model failed in the tokenizer", model=m.model, reason=m.failed_reason)
            failed[m.model] = m.failed_reason
            models.pop(m.model, None)
            vision.discard(m.model)
        else:
            failed.pop(m.model, None)
            models[m.model] = m.vocab_size
            (vision.add if m.vision else vision.discard)(m.model)
        self.failed, self.models, self.vision = failed, models, vision

    async def _probe_loop(self) -> None:
        while True:
            req = tokenizer_pb2.TokenizerRequest(request_id=f"probe-{next(self._ids)}")
            req.list_models.SetInParent()
            self.dealer.send(req.SerializeToString())
            if self.ready and time.monotonic() - self.last_rx > DOWN_AFTER_S:
                self._down("not answering")
            await asyncio.sleep(PROBE_INTERVAL_S if self.ready else PROBE_INTERVAL_NOT_READY_S)

    def _down(self, why: str) -> None:
        """The tokenizer is gone: its pending calls fail, new ones wait for it to come back."""
        if not self.ready:
            return
        self.ready = False
        self._ready_evt.clear()
        log.warning("tokenizer down", why=why, pending=len(self._pending))
        self._fail_all()

    def _fail_all(self) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_down_error())

    async def _call(self, req: tokenizer_pb2.TokenizerRequest) -> tokenizer_pb2.TokenizerResponse:
        for attempt in range(2):
            if not self.ready:
                try:
                    await asyncio.wait_for(self._ready_evt.wait(), self.wait_s)
                except (asyncio.TimeoutError, TimeoutError):
                    raise _down_error() from None
            req.request_id = f"t{next(self._ids)}"
            fut = asyncio.get_running_loop().create_future()
            self._pending[req.request_id] = fut
            try:
                if self.dealer.send(req.SerializeToString()):
                    resp = await fut
                    break
                self._down("no connection")  # seen before the monitor or the probe saw it: wait, retry
                if attempt:
                    raise _down_error()
            finally:
                self._pending.pop(req.request_id, None)
        if resp.WhichOneof("kind") == "error":
            raise ApiError.from_code(resp.error.code, resp.error.message, resp.error.param)
        return resp

    async def encode_chat(self, model: str, messages: Sequence[ChatTurn], tools_json: str = "",
                          template_kwargs_json: str = "") -> ChatTokens:
        req = tokenizer_pb2.TokenizerRequest()
        enc = req.encode
        enc.model = model
        chat = enc.chat
        chat.add_generation_prompt = True
        chat.tools_json = tools_json
        chat.template_kwargs_json = template_kwargs_json
        for t in messages:
            m = chat.messages.add(role=t.role, content=t.content, name=t.name, tool_call_id=t.tool_call_id)
            for cid, ctype, fname, args in t.tool_calls:
                m.tool_calls.add(id=cid, type=ctype, function_name=fname, arguments=args)
            for p in t.parts:   # an image goes as its size only: the bytes go to the worker
                if isinstance(p, ImagePart):
                    m.parts.add().image.CopyFrom(tokenizer_pb2.ImageRef(width=p.width, height=p.height,
                                                                        detail=p.detail))
                else:
                    m.parts.add(text=p)
        out = (await self._call(req)).encoded
        return ChatTokens(list(out.token_ids), tuple(ImageSpan(s.start, s.end, s.placeholders) for s in out.images),
                          out.rendered, out.template_thinks)

    async def encode_text(self, model: str, text: str, add_special_tokens: bool = True) -> list[int]:
        req = tokenizer_pb2.TokenizerRequest()
        req.encode.model = model
        req.encode.text = text
        req.encode.add_special_tokens = add_special_tokens
        return list((await self._call(req)).encoded.token_ids)

    async def encode_embed(self, model: str, texts: Sequence[str], instruction: str = "") -> list[list[int]]:
        req = tokenizer_pb2.TokenizerRequest()
        req.encode.model = model
        req.encode.embed.texts.extend(texts)
        req.encode.embed.instruction = instruction
        req.encode.add_special_tokens = True
        encoded = (await self._call(req)).encoded
        if len(encoded.inputs) != len(texts):
            raise ApiError(500, f"The tokenizer encoded {len(encoded.inputs)} of {len(texts)} inputs.",
                           code="internal_error")
        return [list(x.ids) for x in encoded.inputs]

    async def decode(self, model: str, token_ids: Sequence[int]) -> str:
        req = tokenizer_pb2.TokenizerRequest()
        req.decode.model = model
        req.decode.token_ids.extend(token_ids)
        return (await self._call(req)).decoded.text

    async def load_model(self, model: str, timeout: float) -> None:
        """Have the tokenizer load the model's tokenizer (at once when it has it; a model that
        failed is tried again) and wait for it. Raises ApiError: 503 model_not_available with the
        reason when it cannot load, 404 model_not_found for an id the tokenizer does not know,
        503 tokenizer_unavailable when the tokenizer is down, 504 timeout after `timeout` s."""
        req = tokenizer_pb2.TokenizerRequest()
        req.load_model.model = model
        try:
            resp = await asyncio.wait_for(self._call(req), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, f"The tokenizer did not load the model '{model}' within {timeout:g} s.",
                           code="timeout") from None
        if resp.loaded.failed_reason:
            raise model_not_available(model, f"its tokenizer could not be loaded ({resp.loaded.failed_reason})")
