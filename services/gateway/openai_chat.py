"""POST /v1/chat/completions, streamed (SSE) and not."""
from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid

from aiohttp import web

from npuflow.gateway.client import GenerateParams
from npuflow.gateway.errors import ApiError
from npuflow.gateway.generation import (FINISH_NAMES, Collected, Tally, admit, chat_prompt, check_model,
                                        deadline_unix_ms, metered)
from npuflow.gateway.reasoning import Reasoning
from npuflow.gateway.sse import ChunkWriter, ClientStalled, open_stream
from npuflow.gateway.state import STATE, GatewayState
from npuflow.gateway.tool_calls import CallStream, parse_tool_calls
from npuflow.gateway.validation import ChatRequest, parse_chat, read_json

def _token_text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def chat_logprobs(lps: list) -> dict:
    return {"content": [{"token": _token_text(lp.token_bytes), "logprob": lp.logprob, "bytes": list(lp.token_bytes),
                         "top_logprobs": [{"token": _token_text(t.token_bytes), "logprob": t.logprob,
                                           "bytes": list(t.token_bytes)} for t in lp.top]}
                        for lp in lps],
            "refusal": None}


def usage(prompt: int, completion: int, cached: int = 0, **details) -> dict:
    """OpenAI's usage object; cached = prompt tokens not computed again (the worker's KV held them);
    details: completion_tokens_details for a thinking model (Reasoning.usage_details)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}, **details}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    arrived, now = time.perf_counter(), time.time()
    req = parse_chat(await read_json(request), st.settings.server.max_image_bytes)
    check_model(st, req.model, kind="generate")
    deadline_ms = deadline_unix_ms(st, now)
    cp = await chat_prompt(st, req.model, req.messages, req.tools_json, req.template_kwargs_json)
    with await admit(st, req, [len(cp.token_ids)], deadline_ms, "messages"):
        params = GenerateParams(request_id="chatcmpl-" + uuid.uuid4().hex, model=req.model,
                                prompt_token_ids=cp.token_ids, sampling=req.sampling, n=req.n,
                                deadline_unix_ms=deadline_ms, grammar=cp.grammar(req.structured.grammar),
                                grammar_param=req.structured.grammar_param, images=cp.images)
        thinking = Reasoning(req.n, cp.opens_reasoning)
        if req.stream:
            return await _stream(request, st, req, params, arrived, int(now), thinking)
        return await _whole(st, req, params, arrived, int(now), thinking)


async def _whole(st: GatewayState, req: ChatRequest, params: GenerateParams, arrived: float,
                 created: int, thinking: Reasoning) -> web.Response:
    n = req.n
    got = Collected(n)
    reasoning: list[list[str]] = [[] for _ in range(n)]
    async with contextlib.aclosing(metered(st, params, arrived)) as it:
        async for batch in it:
            for d in batch:
                if d.index >= n:
                    continue
                i = d.index
                r, c, lps = thinking.feed(i, d.text, len(d.token_ids), d.logprobs, bool(d.finish))
                reasoning[i].append(r)
                got.add(i, dataclasses.replace(d, text=c, logprobs=lps))
    choices = []
    for i in range(n):
        message = {"role": "assistant", "content": got.text(i), "refusal": None}
        if thinking.seen(i):
            message["reasoning_content"] = "".join(reasoning[i])
        finish = got.finish[i]
        if req.structured.parse_tool_calls:
            content, calls = parse_tool_calls(message["content"], req.structured.names())
            if calls:
                message["content"] = content or None
                message["tool_calls"] = [c.body() for c in calls]
                finish = "tool_calls"
        choices.append({"index": i, "message": message,
                        "logprobs": chat_logprobs(got.logprobs[i]) if req.logprobs else None, "finish_reason": finish})
    return web.json_response({"id": params.request_id, "object": "chat.completion", "created": created,
                              "model": req.model, "choices": choices,
                              "usage": usage(len(params.prompt_token_ids), got.completion_tokens(),
                                             got.cached_prompt_tokens(n), **thinking.usage_details())})


async def _stream(request: web.Request, st: GatewayState, req: ChatRequest, params: GenerateParams,
                  arrived: float, created: int, thinking: Reasoning) -> web.StreamResponse:
    resp = await open_stream(request)
    w = ChunkWriter(request, resp, params.request_id, "chat.completion.chunk", created, req.model, req.include_usage,
                    deadline_unix_ms=params.deadline_unix_ms,
                    write_timeout_s=st.settings.server.stream_write_timeout_s)
    try:
        await _send(w, st, req, params, arrived, thinking)
    except ClientStalled:   # the connection is gone; leaving _send aborted the request
        pass
    return resp


async def _send(w: ChunkWriter, st: GatewayState, req: ChatRequest, params: GenerateParams, arrived: float,
                thinking: Reasoning) -> None:
    await w.choices([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(req.n)])
    tally = Tally(req.n)
    calls = [CallStream(req.structured.names()) for _ in range(req.n)] if req.structured.parse_tool_calls else None
    held_lps: list[list] = [[] for _ in range(req.n)]
    try:
        async with contextlib.aclosing(metered(st, params, arrived)) as it:
            async for batch in it:
                for d in batch:
                    i = d.index
                    if i >= req.n:
                        continue
                    tally.count(i, d)
                    thought, text, lps = thinking.feed(i, d.text, len(d.token_ids), d.logprobs, bool(d.finish))
                    reason = FINISH_NAMES.get(d.finish, "stop")
                    delta: dict = {"reasoning_content": thought} if thought else {}
                    if calls is not None:  # text that may be a tool call is held, with its logprobs
                        text, call_deltas, called = calls[i].step(text, bool(d.finish))
                        held_lps[i].extend(lps)
                        if d.finish:
                            lps, held_lps[i] = held_lps[i], []
                        else:
                            lps, held_lps[i] = (held_lps[i], []) if text else ([], held_lps[i])
                        if called:
                            reason = "tool_calls"
                        if call_deltas:
                            delta["tool_calls"] = call_deltas
                    if text:
                        delta = {"content": text, **delta}
                    if not d.finish and not text and not lps and not delta:
                        continue
                    await w.choices([{
                        "index": i, "delta": delta,
                        "logprobs": chat_logprobs(lps) if req.logprobs and lps else None,
                        "finish_reason": reason if d.finish else None}])
    except ApiError as e:
        await w.error_and_done(e)
        return
    if req.include_usage:
        await w.usage(usage(len(params.prompt_token_ids), tally.completion_tokens(), tally.cached_prompt_tokens(req.n),
                            **thinking.usage_details()))
    await w.done()
