"""What every front door shares (OpenAI chat and completions over HTTP, the gRPC service):
admission, the deadline, the context check, a metered delta stream.

Order of one request: model known (404; an unloaded model starts loading now, lifecycle.py) ->
images resolved (chat: images.py, 400 naming the part) -> tokenize -> queue room (429,
admission.py) -> worker ready (bounded wait for its load, 503) -> prompt + max_tokens within the
context (400) -> generate.

A chat's images (`chat_prompt`): the tokenizer gets each one's size and detail and places its
tokens (prompt_token_ids hold every image token, so the context check and usage.prompt_tokens
count them, as OpenAI's do); the worker gets each file once, with its span, in
GenerateParams.images.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, NamedTuple, Sequence

from npuflow.gateway.admission import Ticket
from npuflow.gateway.client import ChatTurn, Delta, GenerateParams, ImageInput, ImagePart, ModelInfo
from npuflow.gateway.errors import ApiError, model_not_available, model_not_found
from npuflow.gateway.images import resolve_images
from npuflow.gateway.model_state import model_states
from npuflow.gateway.reasoning import may_think, opens_reasoning
from npuflow.gateway.state import GatewayState
from npuflow.gateway.structured import after_thinking
from npuflow.gateway.validation import GenRequest
from npuflow.v1 import common_pb2

FR = common_pb2.FinishReason
READY_WAIT_MAX_S = 120.0

FAILED = (FR.FINISH_REASON_ERROR, FR.FINISH_REASON_ABORT)
FINISH_NAMES = {FR.FINISH_REASON_STOP: "stop", FR.FINISH_REASON_LENGTH: "length",
                FR.FINISH_REASON_TOOL_CALLS: "tool_calls"}


class Tally:
    """The token accounting of an answer's choices, streamed or not: tokens seen, completion
    tokens and cached prompt tokens as each choice's last delta reports them."""

    def __init__(self, choices: int):
        self.counted = [0] * choices
        self.completion = [0] * choices
        self.cached = [0] * choices

    def count(self, c: int, d: Delta) -> None:
        """Account delta d to choice c; a failed choice raises its client-facing ApiError."""
        if d.finish in FAILED:
            raise delta_error(d)
        self.counted[c] += len(d.token_ids)
        if d.finish:
            self.completion[c] = d.completion_tokens or self.counted[c]
            self.cached[c] = d.cached_tokens

    def completion_tokens(self) -> int:
        return sum(self.completion)

    def cached_prompt_tokens(self, n: int) -> int:
        """Over prompts of n choices each (in order): a prompt counts once, as its best choice."""
        return sum(max(self.cached[k:k + n]) for k in range(0, len(self.cached), n))


class Collected(Tally):
    """What a non-streamed answer gathers per choice: text, logprobs, tokens, finish reason."""

    def __init__(self, choices: int, prefixes: Sequence[str] | None = None):
        super().__init__(choices)
        self.texts = [[p] for p in prefixes] if prefixes is not None else [[] for _ in range(choices)]
        self.logprobs: list[list] = [[] for _ in range(choices)]
        self.finish = ["stop"] * choices

    def add(self, c: int, d: Delta) -> None:
        """Merge delta d into choice c; a failed choice raises its client-facing ApiError."""
        self.count(c, d)
        self.texts[c].append(d.text)
        self.logprobs[c].extend(d.logprobs)
        if d.finish:
            self.finish[c] = FINISH_NAMES.get(d.finish, "stop")

    def text(self, c: int) -> str:
        return "".join(self.texts[c])


def check_model(st: GatewayState, model: str, load: bool = True, kind: str = "") -> None:
    """404 for an unknown model; 503 model_not_available at once for one that failed to start.
    With `load`, a model that is not loaded starts loading now (while its request is tokenized),
    or is refused at once when it can never fit the memory budget (model_too_large_for_budget).
    `kind` "generate" (chat, completions) refuses an embedding model, "embed" a language model:
    400 naming `model` (model_not_generative, model_not_embedding)."""
    touch = getattr(st.models, "touch", None) if load else None
    if touch is not None:
        touch(model)
    info = next((m for m in model_states(st) if m.id == model), None)
    if info is None:
        raise model_not_found(model)
    if info.status == "failed":
        raise model_not_available(model, info.reason)
    check_kind(info, kind)


def check_kind(info: ModelInfo, kind: str) -> None:
    if kind == "generate" and info.embedding:
        raise ApiError(400, f"The model '{info.id}' is an embedding model: it does not generate text. Use it "
                            f"with /v1/embeddings.", param="model", code="model_not_generative")
    if kind == "embed" and not info.embedding:
        raise ApiError(400, f"The model '{info.id}' is not an embedding model: /v1/embeddings needs one "
                            f"(see GET /v1/models, \"embedding\").", param="model", code="model_not_embedding")


def model_takes_images(st: GatewayState, model: str) -> bool:
    return any(m.vision for m in model_states(st) if m.id == model)


class ChatPrompt(NamedTuple):
    token_ids: list[int]
    images: tuple[ImageInput, ...]
    opens_reasoning: bool = False    # the template's generation prompt opened a <think> block
    may_think: bool = False          # or the model may open one itself (reasoning.may_think)

    def grammar(self, grammar: str) -> str:
        """A request's grammar, applied to the answer only when the model thinks first."""
        if grammar and (self.opens_reasoning or self.may_think):
            return after_thinking(grammar, self.opens_reasoning)
        return grammar


async def chat_prompt(st: GatewayState, model: str, turns: Sequence[ChatTurn], tools_json: str = "",
                      template_kwargs_json: str = "") -> ChatPrompt:
    """A conversation's prompt token ids and its images for the worker: images resolved and
    checked (images.resolve_images), the conversation encoded with their spans."""
    turns = await resolve_images(turns, st.settings, vision=model_takes_images(st, model), model=model,
                                 fetcher=st.image_fetcher)
    enc = await st.tokenizer.encode_chat(model, turns, tools_json, template_kwargs_json)
    parts = [p for t in turns for p in t.parts if isinstance(p, ImagePart)]
    if len(parts) != len(enc.images):
        raise ApiError(500, f"The tokenizer placed {len(enc.images)} images of {len(parts)}.", code="internal_error")
    return ChatPrompt(enc.token_ids, tuple(ImageInput(data=p.data, detail=p.detail, start=s.start, end=s.end,
                                                      param=p.param) for p, s in zip(parts, enc.images)),
                      opens_reasoning(enc.rendered), may_think(enc.rendered, enc.template_thinks))


def deadline_unix_ms(st: GatewayState, arrived: float, remaining_s: float | None = None) -> int:
    """The request's deadline (unix ms): server.request_timeout_s after `arrived` (time.time()), or the
    caller's own deadline (`remaining_s` from now) when that is sooner."""
    timeout = st.settings.server.request_timeout_s
    if remaining_s is not None:
        timeout = min(timeout, max(remaining_s, 0.0) + (time.time() - arrived))
    return int((arrived + timeout) * 1000)


def check_prompt(token_ids: Sequence[int], param: str = "prompt") -> None:
    if not token_ids:
        raise ApiError(400, "The prompt is empty.", param=param, code="empty_prompt")


async def admit(st: GatewayState, req: GenRequest, prompt_lens: Sequence[int], deadline_ms: int,
                what: str) -> Ticket:
    """Queue room (admission.py: one sequence per choice of each prompt), worker readiness and
    the context check; raises ApiError (QueueFull with its Retry-After). The caller holds the
    returned Ticket until it is done with the request (`with ticket:`)."""
    ms = getattr(st.models, "model_settings", st.settings.model)(req.model)
    info = next((m for m in st.models.models() if m.id == req.model), None)
    sequences = len(prompt_lens) * max(1, req.n)
    ticket = st.admission.take(req.model, sequences,
                               info.max_batch if info and info.max_batch else ms.max_batch, ms.max_queue,
                               requests=len(prompt_lens))
    try:
        wait = min(READY_WAIT_MAX_S, deadline_ms / 1000.0 - time.time())
        if info is not None and (info.status == "unloaded" or (info.status == "loading" and not info.required)):
            wait = deadline_ms / 1000.0 - time.time()   # a load on demand may take its whole deadline
        info = await st.models.wait_ready(req.model, wait, sequences)
        for plen in prompt_lens:
            check_context(info.context_length, plen, req.max_tokens, what)
    except BaseException:
        ticket.release()
        raise
    return ticket


def check_context(context_length: int, prompt_len: int, max_tokens: int | None, what: str) -> None:
    completion = max_tokens or 0
    if prompt_len + completion <= context_length and prompt_len < context_length:
        return
    total = prompt_len + completion
    if what == "input":     # the Responses API's words
        msg = (f"Your input exceeds the context window of this model ({context_length} tokens): {prompt_len} "
               f"input tokens and {completion} output tokens requested. Please adjust your input or "
               f"max_output_tokens and try again.")
    elif what == "messages":
        msg = (f"This model's maximum context length is {context_length} tokens. However, you requested {total} "
               f"tokens ({prompt_len} in the messages, {completion} in the completion). Please reduce the length "
               f"of the messages or completion.")
    else:
        msg = (f"This model's maximum context length is {context_length} tokens, however you requested {total} "
               f"tokens ({prompt_len} in your prompt; {completion} for the completion). Please reduce your "
               f"prompt; or completion length.")
    raise ApiError(400, msg, param=what, code="context_length_exceeded")


def delta_error(d: Delta) -> ApiError:
    """The client-facing error of a choice that ended with ERROR or ABORT."""
    if d.error is not None:
        return ApiError.from_code(*d.error)
    return ApiError(500, "The request was aborted by the worker.", code="aborted")


async def metered(st: GatewayState, params: GenerateParams, arrived: float) -> AsyncIterator[list[Delta]]:
    """The model client's stream plus TTFT, inter-token and token metrics. Closing it aborts."""
    m = st.metrics
    model = params.model
    ttft, itl, tokens = m.ttft.labels(model), m.itl.labels(model), m.tokens.labels(model)
    m.prompt_tokens.labels(model).inc(len(params.prompt_token_ids))
    cached, counted_cache = m.cached_prompt_tokens.labels(model), False
    last = first = 0.0
    try:
        async with contextlib.aclosing(st.models.generate(params)) as it:
            async for batch in it:
                now = time.perf_counter()
                ntok = sum(len(d.token_ids) for d in batch)
                if ntok:
                    if last:
                        itl.observe((now - last) / ntok)
                    else:
                        ttft.observe(now - arrived)
                        first = now
                    last = now
                    tokens.inc(ntok)
                if not counted_cache:                 # once per request: its first choice to finish
                    hit = next((d.cached_tokens for d in batch if d.finish), None)
                    if hit is not None:
                        cached.inc(hit)
                        counted_cache = True
                yield batch
    finally:   # how long its sequences held their slots, however it ended: Retry-After's measure
        if first:
            st.admission.record(model, time.perf_counter() - first)


async def merge_streams(streams: list[AsyncIterator[list[Delta]]]) -> AsyncIterator[tuple[int, list[Delta]]]:
    """Interleave several delta streams as (stream number, batch); closing it closes them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as it:
            async for batch in it:
                yield 0, batch
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, it: AsyncIterator[list[Delta]]) -> None:
        try:
            async with contextlib.aclosing(it):
                async for batch in it:
                    await queue.put((k, batch, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((k, None, e))
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        await queue.put((k, None, None))

    tasks = [asyncio.create_task(pump(k, it)) for k, it in enumerate(streams)]
    open_ = len(tasks)
    try:
        while open_:
            k, batch, err = await queue.get()
            if batch is not None:
                yield k, batch
                continue
            open_ -= 1
            if err is not None and not isinstance(err, asyncio.CancelledError):
                raise err
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
