"""A response being made: the Answer (its output items, token accounting, the response body and
what is stored when it ends), its prompt prepared and admitted into the model's queue
(`prepared`), and its generation (`generate`). openai_responses.py serves it whole, streamed or in
the background; responses_context.py and the compact endpoint make summaries with it.
"""
from __future__ import annotations

import contextlib
import time
from typing import Awaitable, Callable

from npuflow.gateway.client import ChatTurn, GenerateParams
from npuflow.gateway.errors import ApiError
from npuflow.gateway.generation import FINISH_NAMES, ChatPrompt, Tally, admit, metered
from npuflow.gateway.reasoning import Reasoning
from npuflow.gateway.responses_output import OutputItems, item_id
from npuflow.gateway.responses_prompt import context_of, encode, truncated
from npuflow.gateway.responses_request import ResponsesRequest
from npuflow.gateway.state import GatewayState
from npuflow.logs import get_logger

log = get_logger("gateway")


def _error_code(e: ApiError) -> str:
    """A Responses error code (the API's short list) for e; e's own code goes in the message."""
    if e.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if e.status < 500 else "server_error"


class Answer:
    """One response being made: its request, ids, output items and token accounting."""

    def __init__(self, req: ResponsesRequest, history: tuple[ChatTurn, ...], created: int, prompt_tokens: int,
                 opens_reasoning: bool, rid: str | None = None):
        self.req = req
        self.id = rid or item_id("resp")
        self.created = created
        self.history = history
        self.prompt_tokens = prompt_tokens
        s = req.chat.structured
        self.out = OutputItems(s.names() if s.parse_tool_calls else None, req.chat.logprobs)
        self.thinking = Reasoning(1, opens_reasoning)
        self.tally = Tally(1)
        self.finish = "stop"
        self.more_usage: dict | None = None   # a context_management summary's, made before this answer

    def compacted(self, item: dict, usage: dict) -> None:
        """The compaction item (responses_context.py) as the first output item; its usage counted."""
        self.out.add_done(item)
        self.more_usage = usage

    def feed(self, d) -> None:
        self.tally.count(0, d)
        thought, text, lps = self.thinking.feed(0, d.text, len(d.token_ids), d.logprobs, bool(d.finish))
        self.out.feed(thought, text, lps, bool(d.finish))
        if d.finish:
            self.finish = FINISH_NAMES.get(d.finish, "stop")

    def body(self, status: str, error: ApiError | None = None) -> dict:
        r = self.req
        extra = {}   # no usage while running (the specification does not allow a null one)
        running = status in ("queued", "in_progress")
        if not running:
            out_tokens, cached = self.tally.completion_tokens(), self.tally.cached_prompt_tokens(1)
            # the prompt tokens computed now stay in the worker's KV slot for a prompt that starts the same way
            extra["usage"] = {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": self.prompt_tokens - cached},
                "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": sum(self.thinking.tokens)},
                "total_tokens": self.prompt_tokens + out_tokens}
            if self.more_usage is not None:
                u, more = extra["usage"], self.more_usage
                u["input_tokens"] += more["input_tokens"]
                u["output_tokens"] += more["output_tokens"]
                u["total_tokens"] += more["total_tokens"]
                for k in ("cached_tokens", "cache_write_tokens"):
                    u["input_tokens_details"][k] += more["input_tokens_details"][k]
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "background": r.background, "completed_at": int(time.time()) if status == "completed" else None,
                "error": {"code": _error_code(error), "message": error.message} if error is not None else None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": r.instructions, "metadata": r.metadata, "model": r.chat.model,
                "output": [] if running else self.out.items,
                "previous_response_id": r.previous_response_id, "service_tier": "default", "store": r.store,
                **({"conversation": {"id": r.conversation}} if r.conversation else {}), **r.echo, **extra}

    def done(self, st: GatewayState, error: ApiError | None = None, cancelled: bool = False) -> dict:
        """Close the output, store the response (with its conversation) when asked, and return it."""
        status = "failed" if error is not None else ("incomplete" if self.finish == "length" else "completed")
        if cancelled:
            status = "cancelled"
        self.out.finish("incomplete" if status != "completed" else "completed")
        body = self.body(status, error)
        if self.req.conversation is not None and status in ("completed", "incomplete"):
            if not st.conversations.add(self.req.conversation, list(self.req.input_items) + body["output"]):
                log.warning("response not added to its conversation (gone, or over conversations_max_bytes)",
                            response=self.id, conversation=self.req.conversation)
        if self.req.store:
            reply = ChatTurn(role="assistant", content=self.out.text(), tool_calls=tuple(self.out.calls_made()))
            st.responses.put(body, self.history + tuple(self.req.chat.messages) + (reply,),
                             tuple(self.req.input_items))
        return body


async def prepared(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...], now: float,
                   deadline_ms: int, encoded: ChatPrompt | None = None, rid: str | None = None):
    """The prompt encoded (or `encoded`, when the caller has encoded this history and request
    already; truncated to fit with `truncation: "auto"`) and admitted into the model's queue: the
    response to make (with the id `rid` when given), its worker request, and the queue ticket it
    holds."""
    chat = req.chat
    cp = encoded if encoded is not None else await encode(st, req, history)
    try:
        ticket = await admit(st, chat, [len(cp.token_ids)], deadline_ms, "input")
    except ApiError as e:
        if not (req.truncate and e.code == "context_length_exceeded"):
            raise
        cp = await truncated(st, req, history, context_of(st, chat.model), e)
        ticket = await admit(st, chat, [len(cp.token_ids)], deadline_ms, "input")
    answer = Answer(req, history, int(now), len(cp.token_ids), cp.opens_reasoning, rid)
    params = GenerateParams(request_id=answer.id, model=chat.model, prompt_token_ids=cp.token_ids,
                            sampling=chat.sampling, n=1, deadline_unix_ms=deadline_ms,
                            grammar=cp.grammar(chat.structured.grammar),
                            grammar_param=chat.structured.grammar_param, images=cp.images)
    return answer, params, ticket


async def generate(st: GatewayState, answer: Answer, params: GenerateParams, arrived: float,
                    emit: Callable[[list[dict]], Awaitable[None]] | None = None) -> None:
    async with contextlib.aclosing(metered(st, params, arrived)) as it:
        async for batch in it:
            for d in batch:
                if d.index == 0:
                    answer.feed(d)
            if emit is not None:
                await emit(answer.out.take_events())
