"""The npuflow.v1.GenerationService servicer: thin, over the shared request path.

Each call converts its message at the edge (grpc_convert), then follows the same steps as the
HTTP handlers (generation.py): model known -> tokenize -> admit (queue, readiness, context) ->
metered stream; Embed the same path as /v1/embeddings (embeddings.py). Errors are raised as ApiError and mapped to a status by the ErrorInterceptor.

Streams are written with `context.write` from a coroutine (not an async generator) so that a
cancelled call - the caller cancels, its deadline passes, the server stops - raises
CancelledError right here, and leaving the `aclosing` block closes the delta stream, which
sends the worker its Abort.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from typing import Sequence

import grpc.aio

from npuflow.gateway import grpc_convert as convert
from npuflow.gateway.client import GenerateParams, ImageInput
from npuflow.gateway.embeddings import embed
from npuflow.gateway.errors import ApiError, bad_param
from npuflow.gateway.generation import Tally, admit, chat_prompt, check_model, check_prompt, deadline_unix_ms, metered
from npuflow.gateway.model_state import model_states
from npuflow.gateway.reasoning import Reasoning
from npuflow.gateway.sse import write_bound
from npuflow.gateway.state import GatewayState
from npuflow.gateway.structured import Structured
from npuflow.gateway.tool_calls import CallStream
from npuflow.gateway.validation import GenRequest
from npuflow.logs import get_logger
from npuflow.v1 import common_pb2, generation_service_pb2 as gs
from npuflow.v1 import generation_service_pb2_grpc as gs_grpc

Context = grpc.aio.ServicerContext
log = get_logger("gateway")


def _model_id(request) -> str:
    if not request.model:
        raise bad_param("model", "Missing required parameter: 'model'.", code="missing_required_parameter")
    return request.model


class GenerationServicer(gs_grpc.GenerationServiceServicer):
    def __init__(self, st: GatewayState):
        self.st = st

    async def Generate(self, request: gs.GenerateTextRequest, context: Context) -> None:
        arrived, now = time.perf_counter(), time.time()
        req, structured, prompt = convert.generate_request(request)
        check_model(self.st, req.model, kind="generate")
        deadline_ms = deadline_unix_ms(self.st, now, context.time_remaining())
        if isinstance(prompt, str):
            ids = await self.st.tokenizer.encode_text(req.model, prompt)
            check_prompt(ids, "prompt")
        else:
            ids = prompt
        await self._stream(context, req, structured, ids, "prompt", "gen-", deadline_ms, arrived)

    async def Chat(self, request: gs.ChatRequest, context: Context) -> None:
        arrived, now = time.perf_counter(), time.time()
        req = convert.chat_request(request, self.st.settings.server.max_image_bytes)
        check_model(self.st, req.model, kind="generate")
        deadline_ms = deadline_unix_ms(self.st, now, context.time_remaining())
        cp = await chat_prompt(self.st, req.model, req.messages, req.tools_json, req.template_kwargs_json)
        structured = dataclasses.replace(req.structured, grammar=cp.grammar(req.structured.grammar))
        await self._stream(context, req, structured, cp.token_ids, "messages", "chat-", deadline_ms, arrived,
                           cp.images, Reasoning(req.n, cp.opens_reasoning))

    async def Embed(self, request: gs.EmbedTextRequest, context: Context) -> gs.EmbedResponse:
        req = convert.embed_request(request)
        out = await embed(self.st, req, time.time(), context.time_remaining())
        return convert.embed_response(req.model, out)

    async def Tokenize(self, request: gs.TokenizeRequest, context: Context) -> gs.TokenizeResponse:
        model, what, add_special, tools = convert.tokenize_request(request, self.st.settings.server.max_image_bytes)
        check_model(self.st, model, load=False)
        tok = self.st.tokenizer
        if isinstance(what, str):
            ids = await tok.encode_text(model, what, add_special)
        else:
            ids = (await chat_prompt(self.st, model, what, tools)).token_ids
        info = next(m for m in self.st.models.models() if m.id == model)
        return gs.TokenizeResponse(token_ids=ids, context_length=info.context_length)

    async def ListModels(self, request: gs.ListModelsRequest, context: Context) -> gs.ListModelsResponse:
        cards = []
        for m in model_states(self.st):
            card = convert.model_card(m)
            card.vision = m.vision
            cards.append(card)
        return gs.ListModelsResponse(models=cards)

    async def LoadModel(self, request: gs.LoadModelRequest, context: Context) -> gs.ListModelsResponse.Model:
        timeout = min(self.st.settings.server.request_timeout_s, context.time_remaining() or float("inf"))
        info = await self.st.models.load(_model_id(request), timeout)
        return self._card(info.id)

    async def UnloadModel(self, request: gs.UnloadModelRequest, context: Context) -> gs.ListModelsResponse.Model:
        timeout = min(self.st.settings.server.request_timeout_s, context.time_remaining() or float("inf"))
        try:
            info = await self.st.models.unload(_model_id(request), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, f"The model '{request.model}' is still draining; it unloads once its running "
                                f"requests finish.", code="timeout") from None
        return self._card(info.id)

    def _card(self, model: str) -> gs.ListModelsResponse.Model:
        m = next(m for m in model_states(self.st) if m.id == model)
        card = convert.model_card(m)
        card.vision = m.vision
        return card

    async def _stream(self, context: Context, req: GenRequest, structured: Structured, ids: Sequence[int],
                      what: str, prefix: str, deadline_ms: int, arrived: float,
                      images: Sequence[ImageInput] = (), thinking: Reasoning | None = None) -> None:
        with await admit(self.st, req, [len(ids)], deadline_ms, what):
            await self._generate(context, req, structured, ids, prefix, deadline_ms, arrived, images, thinking)

    async def _generate(self, context: Context, req: GenRequest, structured: Structured, ids: Sequence[int],
                        prefix: str, deadline_ms: int, arrived: float, images: Sequence[ImageInput] = (),
                        thinking: Reasoning | None = None) -> None:
        st, n = self.st, req.n
        write = BoundedWrite(context, deadline_ms, st.settings.server.stream_write_timeout_s)
        params = GenerateParams(request_id=prefix + uuid.uuid4().hex, model=req.model, prompt_token_ids=ids,
                                sampling=req.sampling, n=n, deadline_unix_ms=deadline_ms,
                                grammar=structured.grammar, grammar_param=structured.grammar_param,
                                images=tuple(images))
        tally = Tally(n)
        readers = [CallStream(structured.names()) for _ in range(n)] if structured.parse_tool_calls else None
        async with contextlib.aclosing(metered(st, params, arrived)) as it:
            async for batch in it:
                out = gs.GenerateResponse(id=params.request_id, model=req.model)
                for d in batch:
                    i = d.index
                    if i >= n:
                        continue
                    tally.count(i, d)
                    if not d.finish and not d.text and not d.token_ids and not d.logprobs:
                        continue
                    thought, text, lps = "", d.text, d.logprobs
                    if thinking is not None:
                        thought, text, lps = thinking.feed(i, d.text, len(d.token_ids), d.logprobs, bool(d.finish))
                    if readers is None:
                        out.choices.append(convert.choice(d, text, reasoning=thought, logprobs=lps))
                        continue
                    # the text of a call goes out as tool_calls
                    text, calls, called = readers[i].step(text, bool(d.finish))
                    finish = common_pb2.FINISH_REASON_TOOL_CALLS if called else None
                    out.choices.append(convert.choice(d, text, calls, finish, thought, lps))
                if out.choices:
                    await write(out)
        prompt_tokens, completion_tokens = len(ids), tally.completion_tokens()
        usage = gs.GenerateResponse.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                          total_tokens=prompt_tokens + completion_tokens,
                                          cached_prompt_tokens=tally.cached_prompt_tokens(n),
                                          reasoning_tokens=sum(thinking.tokens) if thinking is not None else 0)
        await write(gs.GenerateResponse(id=params.request_id, model=req.model, usage=usage))


class BoundedWrite:
    """`context.write` that waits at most `server.stream_write_timeout_s` for a caller that stopped
    reading, and never past the request's deadline (plus a second, so a reading caller still gets
    the deadline's status); past that a timer cancels the handler (no task per message), the call
    ends cancelled, and leaving the delta stream sends the worker its Abort."""

    def __init__(self, context: Context, deadline_ms: int, timeout_s: float):
        self.context, self.deadline, self.timeout = context, deadline_ms / 1000.0, timeout_s
        self._fired = False

    def _fire(self, task: asyncio.Task) -> None:
        self._fired = True
        task.cancel()

    async def __call__(self, msg: gs.GenerateResponse) -> None:
        bound = write_bound(self.timeout, self.deadline)
        timer = asyncio.get_running_loop().call_later(bound, self._fire, asyncio.current_task())
        try:
            await self.context.write(msg)
        except asyncio.CancelledError:
            if self._fired:   # the write is still queued in grpc's core, so no status can follow it:
                log.info("caller stopped reading; call cancelled", waited_s=round(bound, 1))
            raise             # the handler ends as if the caller had cancelled
        finally:
            timer.cancel()
