"""POST /v1/responses/compact (`client.responses.compact(...)`): a conversation made short.

The conversation is the request's `input` after the one its `previous_response_id` continues,
with `instructions` as a system turn. The model writes a summary of it, asked by a last user turn
(PROMPT), greedily and with thinking off, in at most SUMMARY_TOKENS tokens (a quarter of the
context on a smaller model). The answer keeps the conversation's user messages as they were and
puts one compaction item (responses_compaction.py) after them in place of everything else:
assistant turns, tool calls and their results, reasoning, earlier compaction items. Sent back as
a later request's `input`, with the next turn after it, that output continues the conversation
from the summary. A conversation over the model's context is cut from its start as
`truncation: "auto"` cuts one, so the summary covers the turns that fit. Nothing is stored.
"""
from __future__ import annotations

import base64
import time

from aiohttp import web

from npuflow.gateway.client import ChatTurn, ImagePart
from npuflow.gateway.errors import bad_param
from npuflow.gateway.generation import check_model, deadline_unix_ms
from npuflow.gateway.openai_responses import generate, prepared
from npuflow.gateway.responses_compaction import compaction_item
from npuflow.gateway.responses_output import item_id
from npuflow.gateway.responses_prompt import context_of, history_of
from npuflow.gateway.responses_request import MIN_OUTPUT_TOKENS, parse_responses
from npuflow.gateway.state import STATE
from npuflow.gateway.validation import read_json

SUMMARY_TOKENS = 512
PROMPT = ("Summarize the conversation above for someone who will continue it without seeing it: the user's "
          "goals, what has been decided, found or done (with names, numbers and code), and what is still open. "
          "Reply with the summary only.")
PASSED = ("model", "input", "previous_response_id", "instructions")      # what the summary is made from
ACCEPTED = PASSED + ("prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier")


async def compact_response(request: web.Request) -> web.Response:
    st = request.app[STATE]
    arrived, now = time.perf_counter(), time.time()
    body = await read_json(request)
    unknown = next((k for k in body if k not in ACCEPTED), None)
    if unknown is not None:
        raise bad_param(unknown, f"Unknown parameter: '{unknown[:60]}'.", code="unknown_parameter")
    req = parse_responses({**{k: body[k] for k in PASSED if k in body}, "store": False, "truncation": "auto",
                           "temperature": 0, "reasoning": {"effort": "none"}}, st.settings.server.max_image_bytes)
    check_model(st, req.chat.model, kind="generate")
    history = history_of(st, req)
    kept = [_user_item(t) for t in history + tuple(req.chat.messages) if t.role == "user"]
    req.chat.messages = list(req.chat.messages) + [ChatTurn(role="user", content=PROMPT)]
    context = context_of(st, req.chat.model)
    req.chat.max_tokens = min(SUMMARY_TOKENS, max(MIN_OUTPUT_TOKENS, context // 4)) if context else SUMMARY_TOKENS
    answer, params, ticket = await prepared(st, req, history, now, deadline_unix_ms(st, now))
    with ticket:
        await generate(st, answer, params, arrived)
    answer.out.finish("completed")
    usage = answer.body("completed")["usage"]
    return web.json_response({"id": answer.id, "object": "response.compaction", "created_at": int(now),
                              "output": kept + [compaction_item(answer.out.text().strip())], "usage": usage})


def _user_item(turn: ChatTurn) -> dict:
    parts = turn.parts or (turn.content,)
    return {"id": item_id("msg"), "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": p} if isinstance(p, str) else _image(p) for p in parts]}


def _image(p: ImagePart) -> dict:
    url = p.url or f"data:{p.mime_type or 'image/png'};base64,{base64.b64encode(p.data).decode()}"
    return {"type": "input_image", "image_url": url, "detail": p.detail}
