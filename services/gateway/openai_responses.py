"""The Responses API: POST /v1/responses (whole, or streamed as typed events), GET (with
`stream=true`, a background response's events) and DELETE /v1/responses/{id}, GET
/v1/responses/{id}/input_items, POST /v1/responses/input_tokens and POST
/v1/responses/{id}/cancel (background responses: responses_background.py).

A response is a chat generation underneath (responses_answer.py): its instructions (a system
turn), the conversation of its `previous_response_id` (from the store: that response's input and
output, not its instructions) or of its `conversation` (conversations.py), then its own input,
rendered by the model's chat template (responses_prompt.py, which also truncates;
responses_context.py compacts it first under `context_management`). So a continuation re-sends a
prompt that starts the way the previous one did, and the worker's prefix cache computes only the
new turns. Errors before generation starts are HTTP errors as on every endpoint; a failure while
streaming ends the stream with `response.failed`.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Coroutine

from aiohttp import web

from npuflow.gateway.client import ChatTurn, GenerateParams
from npuflow.gateway.errors import ApiError, bad_param
from npuflow.gateway.generation import ChatPrompt, check_model, deadline_unix_ms
from npuflow.gateway.item_pages import item_page
from npuflow.gateway.model_state import model_states
from npuflow.gateway.responses_answer import Answer, generate, prepared
from npuflow.gateway.responses_background import STREAMABLE_S, EventLog
from npuflow.gateway.responses_context import compact, over_threshold
from npuflow.gateway.responses_prompt import context_of, encode, fits, history_of, truncated
from npuflow.gateway.responses_request import ResponsesRequest, parse_responses
from npuflow.gateway.sse import BoundedWriter, ClientStalled, open_stream
from npuflow.gateway.state import STATE, GatewayState
from npuflow.gateway.validation import read_json


class EventWriter(BoundedWriter):
    """`event: <type>` / `data: <json>` pairs, numbered by sequence_number from 0."""
    seq = 0

    async def send(self, events: list[dict], numbered: bool = False) -> None:
        """Write events, numbering them unless they are `numbered` already (a background run's log)."""
        if not events:
            return
        chunks = []
        for ev in events:
            if not numbered:
                ev["sequence_number"] = self.seq
                self.seq += 1
            chunks.append(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n")
        await self.write("".join(chunks).encode())


def _last_event(body: dict) -> list[dict]:
    """The event that ends a response's stream: none for a cancelled one (the API has no such event)."""
    kind = {"completed": "response.completed", "incomplete": "response.incomplete",
            "failed": "response.failed"}.get(body["status"])
    return [{"type": kind, "response": body}] if kind else []


async def create_response(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    arrived, now = time.perf_counter(), time.time()
    req = parse_responses(await read_json(request), st.settings.server.max_image_bytes)
    chat = req.chat
    check_model(st, chat.model)
    history = history_of(st, req)
    conv = st.conversations.get(req.conversation) if req.conversation is not None else None
    if conv is not None and not st.conversations.fits(conv, req.input_items):
        raise bad_param("conversation", f"Conversation '{req.conversation[:80]}' is full: with this input its items "
                                        "would be over the server's conversations_max_bytes; start a new "
                                        "conversation (POST /v1/responses/compact can summarize this one).",
                        code="conversation_full")
    to_compact, encoded = await over_threshold(st, req, history)
    deadline_ms = deadline_unix_ms(st, now)
    if req.background:
        ticket = None
        if to_compact:      # the summary is made in the run: the request is answered `queued` at once
            answer = Answer(req, history, int(now), 0, False)
            make = _made(st, req, history, now, arrived, deadline_ms, True, None, answer.id)
        else:
            answer, params, ticket = await prepared(st, req, history, now, deadline_ms, encoded)
            make = _ready(answer, params, ticket)
        queued = answer.body("queued")
        if not st.responses.put(queued, (), tuple(req.input_items)):
            make.close()
            if ticket is not None:
                ticket.release()
            raise bad_param("background", "This background response cannot be stored (the server's response store "
                                          "is off, or the input is larger than it holds), so it could not be "
                                          "retrieved: send it without 'background'.", code="invalid_value")
        events = st.background.start(
            answer.id, lambda log: _in_background(st, answer, make, arrived, log, working=to_compact),
            [{"type": "response.created", "response": queued}, {"type": "response.queued", "response": queued}],
            deadline_ms)
        if chat.stream:
            return await _follow(request, st, events, -1)
        return web.json_response(queued)
    answer, params, ticket = await _made(st, req, history, now, arrived, deadline_ms, to_compact, encoded)
    with ticket:
        if chat.stream:
            return await _stream(request, st, answer, params, arrived)
        await generate(st, answer, params, arrived)
        return web.json_response(answer.done(st))


async def _ready(answer: Answer, params: GenerateParams, ticket):
    """A background run's `make` when its prompt was prepared (and admitted) before the reply."""
    return answer, params, ticket


async def _made(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...], now: float, arrived: float,
                deadline_ms: int, to_compact: bool, encoded: ChatPrompt | None, rid: str | None = None):
    """`prepared` (with the id `rid` when given), after compacting the context first when
    over_threshold said `to_compact` (the compaction item then leads the answer's output)."""
    if not to_compact:
        return await prepared(st, req, history, now, deadline_ms, encoded, rid)
    history, compaction = await compact(st, req, history, now, arrived)
    answer, params, ticket = await prepared(st, req, history, now, deadline_ms, rid=rid)
    answer.compacted(compaction.item, compaction.usage)
    return answer, params, ticket


async def _in_background(st: GatewayState, answer: Answer, make: Coroutine, arrived: float, log: EventLog,
                         working: bool) -> None:
    """A background response's run: `make` gives (the answer to make, its worker request, its
    queue ticket), after a compaction when there is one to make. Stored `in_progress` at its first
    tokens (at once when it starts `working` on a summary), then as it ended; its stream events
    go to its log."""
    started = False

    async def progress(events: list[dict]) -> None:
        nonlocal started
        if not started:
            started = True
            running = answer.body("in_progress")
            st.responses.put(running, (), tuple(answer.req.input_items))
            events = [{"type": "response.in_progress", "response": running}] + events
        log.add(events)

    def ended(body: dict) -> None:
        log.add(answer.out.take_events() + _last_event(body))

    try:
        if working:
            await progress([])
        answer, params, ticket = await make
        with ticket:
            await generate(st, answer, params, arrived, progress)
    except asyncio.CancelledError:
        ended(answer.done(st, cancelled=True))
        raise
    except ApiError as e:
        ended(answer.done(st, e))
    except Exception as e:  # noqa: BLE001 (the run has no request to fail: its stored state says it)
        ended(answer.done(st, ApiError(500, f"The response failed: {type(e).__name__}.", code="server_error")))
        raise
    else:
        ended(answer.done(st))


async def _follow(request: web.Request, st: GatewayState, log: EventLog, after: int) -> web.StreamResponse:
    """Stream a background run's events after sequence number `after` until it ends. A client
    that leaves only stops its own stream: the run goes on."""
    resp = await open_stream(request)
    w = EventWriter(request, resp, deadline_unix_ms=log.deadline_unix_ms,
                    write_timeout_s=st.settings.server.stream_write_timeout_s)
    try:
        async for events in log.follow(after):
            await w.send(events, numbered=True)
        await w.end()
    except ClientStalled:
        pass
    return resp


async def _stream(request: web.Request, st: GatewayState, answer: Answer, params: GenerateParams,
                  arrived: float) -> web.StreamResponse:
    resp = await open_stream(request)
    w = EventWriter(request, resp, deadline_unix_ms=params.deadline_unix_ms,
                    write_timeout_s=st.settings.server.stream_write_timeout_s)
    try:
        start = answer.body("in_progress")
        await w.send([{"type": "response.created", "response": start},
                      {"type": "response.in_progress", "response": start}])
        try:
            await generate(st, answer, params, arrived, w.send)
        except ApiError as e:
            body = answer.done(st, e)
            await w.send(answer.out.take_events() + _last_event(body))
        else:
            body = answer.done(st)
            await w.send(answer.out.take_events() + _last_event(body))
        await w.end()
    except ClientStalled:   # the connection is gone; leaving the generation aborted the request
        pass
    return resp


async def count_input_tokens(request: web.Request) -> web.Response:
    """POST /v1/responses/input_tokens: the input tokens a response to this body would start from
    (instructions, the previous response's conversation, the input; truncated with "auto" once
    the model's context is known). `model` may be left out when one language model is served."""
    st = request.app[STATE]
    body = await read_json(request)
    if body.get("model") is None:
        body = dict(body, model=_only_language_model(st))
    req = parse_responses(body, st.settings.server.max_image_bytes)
    check_model(st, req.chat.model, load=False, kind="generate")
    history = history_of(st, req)
    cp = await encode(st, req, history)
    context = context_of(st, req.chat.model)
    if req.truncate and context and not fits(cp, context, req.chat.max_tokens):
        cp = await truncated(st, req, history, context, ApiError(
            400, f"The input ({len(cp.token_ids)} tokens) exceeds the context window of this model "
                 f"({context} tokens) even with only its last item.", param="input", code="context_length_exceeded"))
    return web.json_response({"object": "response.input_tokens", "input_tokens": len(cp.token_ids)})


def _only_language_model(st: GatewayState) -> str:
    names = [m.id for m in model_states(st) if not m.embedding]
    if len(names) != 1:
        raise ApiError(400, "Missing required parameter: 'model' (this server serves "
                            f"{len(names)} language models: {', '.join(names)[:200]}).",
                       param="model", code="missing_required_parameter")
    return names[0]


async def cancel_response(request: web.Request) -> web.Response:
    """POST /v1/responses/{id}/cancel: a background response still running stops and is stored
    `cancelled`; one already cancelled is returned as it is. Any other is a 400: a response
    made in the foreground ends with its request, and one that has ended cannot be cancelled."""
    st = request.app[STATE]
    rid, stored = _stored(request)
    if not stored.response.get("background"):
        raise ApiError(400, f"Response '{rid[:80]}' cannot be cancelled: only background responses can be (close the "
                            "request to stop a response made in the foreground).",
                       param="response_id", code="response_not_cancellable")
    if await st.background.cancel(rid):
        stored = st.responses.get(rid) or stored
    elif stored.response["status"] != "cancelled":
        raise ApiError(400, f"Response '{rid[:80]}' cannot be cancelled: it has already ended "
                            f"({stored.response['status']}).", param="response_id", code="response_not_cancellable")
    return web.json_response(stored.response)


def _stored(request: web.Request):
    rid = request.match_info["response_id"]
    stored = request.app[STATE].responses.get(rid)
    if stored is None:
        raise ApiError(404, f"No response found with id '{rid[:80]}'.", param="response_id", code="not_found")
    return rid, stored


async def get_response(request: web.Request) -> web.StreamResponse:
    """A stored response; with `stream=true`, a background response's stream events (after
    `starting_after`), live until it ends."""
    rid, stored = _stored(request)
    q = request.query
    if q.get("stream", "false").lower() not in ("true", "1"):
        return web.json_response(stored.response)
    if not stored.response.get("background"):
        raise bad_param("stream", f"Response '{rid[:80]}' cannot be streamed: only background responses can be "
                                  "streamed again (GET it without 'stream').", code="invalid_value")
    try:
        after = int(q.get("starting_after", "-1"))
    except ValueError:
        raise bad_param("starting_after", "Invalid 'starting_after': expected an integer.") from None
    log = request.app[STATE].background.events(rid)
    if log is None:
        raise bad_param("stream", f"Response '{rid[:80]}' can no longer be streamed: its events are held for "
                                  f"{STREAMABLE_S / 60:g} minutes after it was created (GET it without 'stream').",
                        code="invalid_value")
    return await _follow(request, request.app[STATE], log, after)


async def delete_response(request: web.Request) -> web.Response:
    """Forget a stored response; a background one still running is cancelled first."""
    rid, _ = _stored(request)
    await request.app[STATE].background.cancel(rid)
    request.app[STATE].background.forget(rid)
    request.app[STATE].responses.delete(rid)
    return web.json_response({"id": rid, "object": "response", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    """A stored response's own input items, a page at a time (item_pages.py)."""
    _, stored = _stored(request)
    return web.json_response(item_page(stored.input_items, request.query, "in this response's input"))
