"""POST /v1/completions (the legacy text endpoint): one or many prompts, streamed and not."""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from aiohttp import web

from npuflow.gateway.client import GenerateParams
from npuflow.gateway.errors import ApiError
from npuflow.gateway.generation import (FINISH_NAMES, Collected, Tally, admit, check_model, check_prompt,
                                        deadline_unix_ms, merge_streams, metered)
from npuflow.gateway.openai_chat import usage
from npuflow.gateway.sse import ChunkWriter, ClientStalled, open_stream
from npuflow.gateway.state import STATE, GatewayState
from npuflow.gateway.validation import CompletionRequest, parse_completion, read_json

class _Logprobs:
    """The legacy logprobs object of one choice, built as tokens arrive."""

    def __init__(self, offset: int):
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []
        self.offset = offset

    def add(self, lps: list) -> None:
        for lp in lps:
            tok = lp.token_bytes.decode("utf-8", errors="replace")
            self.tokens.append(tok)
            self.token_logprobs.append(lp.logprob)
            self.top_logprobs.append({t.token_bytes.decode("utf-8", errors="replace"): t.logprob for t in lp.top})
            self.text_offset.append(self.offset)
            self.offset += len(tok)

    def body(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


async def completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    arrived, now = time.perf_counter(), time.time()
    req = parse_completion(await read_json(request))
    check_model(st, req.model, kind="generate")
    deadline_ms = deadline_unix_ms(st, now)
    tok = st.tokenizer
    prompts = await asyncio.gather(*(tok.encode_text(req.model, p) if isinstance(p, str) else _ids(p)
                                     for p in req.prompts))
    for ids in prompts:
        check_prompt(ids)
    echo_texts = [""] * len(prompts)
    if req.echo:
        echo_texts = list(await asyncio.gather(*(_text(p) if isinstance(p, str) else tok.decode(req.model, p)
                                                 for p in req.prompts)))
    with await admit(st, req, [len(p) for p in prompts], deadline_ms, "prompt"):
        rid = "cmpl-" + uuid.uuid4().hex
        params = [GenerateParams(request_id=rid if len(prompts) == 1 else f"{rid}-{k}", model=req.model,
                                 prompt_token_ids=ids, sampling=req.sampling, n=req.n, deadline_unix_ms=deadline_ms)
                  for k, ids in enumerate(prompts)]
        if req.stream:
            return await _stream(request, st, req, rid, params, echo_texts, arrived, int(now))
        return await _whole(st, req, rid, params, echo_texts, arrived, int(now))


async def _ids(p: list[int]) -> list[int]:
    return p


async def _text(s: str) -> str:
    return s


def _streams(st: GatewayState, params: list[GenerateParams], arrived: float):
    return merge_streams([metered(st, p, arrived) for p in params])


async def _whole(st: GatewayState, req: CompletionRequest, rid: str, params: list[GenerateParams],
                 echo: list[str], arrived: float, created: int) -> web.Response:
    n, total = req.n, req.n * len(params)
    got = Collected(total, [echo[c // n] for c in range(total)])
    async with contextlib.aclosing(_streams(st, params, arrived)) as it:
        async for k, batch in it:
            for d in batch:
                if d.index < n:
                    got.add(k * n + d.index, d)
    choices = []
    for c in range(total):
        lps = _Logprobs(len(echo[c // n]))
        lps.add(got.logprobs[c])
        choices.append({"text": got.text(c), "index": c, "logprobs": lps.body() if req.logprobs else None,
                        "finish_reason": "stop" if got.finish[c] == "tool_calls" else got.finish[c]})
    prompt_tokens = sum(len(p.prompt_token_ids) for p in params)
    return web.json_response({"id": rid, "object": "text_completion", "created": created, "model": req.model,
                              "choices": choices, "usage": usage(prompt_tokens, got.completion_tokens(),
                                                                 got.cached_prompt_tokens(n))})


async def _stream(request: web.Request, st: GatewayState, req: CompletionRequest, rid: str,
                  params: list[GenerateParams], echo: list[str], arrived: float, created: int) -> web.StreamResponse:
    resp = await open_stream(request)
    w = ChunkWriter(request, resp, rid, "text_completion", created, req.model, usage_null=False,
                    deadline_unix_ms=params[0].deadline_unix_ms,
                    write_timeout_s=st.settings.server.stream_write_timeout_s)
    try:
        await _send(w, st, req, params, echo, arrived)
    except ClientStalled:   # the connection is gone; leaving _send aborted the request
        pass
    return resp


async def _send(w: ChunkWriter, st: GatewayState, req: CompletionRequest, params: list[GenerateParams],
                echo: list[str], arrived: float) -> None:
    n, total = req.n, req.n * len(params)
    tally = Tally(total)
    if req.echo:
        await w.choices([{"text": echo[c // n], "index": c, "logprobs": None, "finish_reason": None}
                         for c in range(total)])
    try:
        async with contextlib.aclosing(_streams(st, params, arrived)) as it:
            async for k, batch in it:
                for d in batch:
                    if d.index >= n:
                        continue
                    c = k * n + d.index
                    tally.count(c, d)
                    if not d.finish and not d.text and not d.logprobs:
                        continue
                    lp = None
                    if req.logprobs and d.logprobs:
                        lp = _Logprobs(0)
                        lp.add(d.logprobs)
                        lp = lp.body()
                    reason = FINISH_NAMES.get(d.finish, "stop") if d.finish else None
                    await w.choices([{"text": d.text, "index": c, "logprobs": lp,
                                      "finish_reason": "stop" if reason == "tool_calls" else reason}])
    except ApiError as e:
        await w.error_and_done(e)
        return
    if req.include_usage:
        await w.usage(usage(sum(len(p.prompt_token_ids) for p in params), tally.completion_tokens(),
                            tally.cached_prompt_tokens(n)))
    await w.done()
