"""POST /v1/responses/compact (`client.responses.compact(...)`): a conversation made short.

The conversation is the request's `input` after the one its `previous_response_id` continues,
with `instructions` as a system turn. The model writes a summary of it (responses_summary.py).
The answer keeps the conversation's user messages as they were and
puts one compaction item (responses_compaction.py) after them in place of everything else:
assistant turns, tool calls and their results, reasoning, earlier compaction items. Sent back as
a later request's `input`, with the next turn after it, that output continues the conversation
from the summary. Nothing is stored.
"""
from __future__ import annotations

import base64
import time

from aiohttp import web

from npuflow.gateway.client import ChatTurn, ImagePart
from npuflow.gateway.errors import bad_param
from npuflow.gateway.generation import check_model
from npuflow.gateway.responses_compaction import compaction_item
from npuflow.gateway.responses_output import item_id
from npuflow.gateway.responses_prompt import history_of
from npuflow.gateway.responses_request import parse_responses
from npuflow.gateway.responses_summary import summarize
from npuflow.gateway.state import STATE
from npuflow.gateway.validation import read_json

PASSED = ("model", "input", "previous_response_id", "instructions")      # what the summary is made from
ACCEPTED = PASSED + ("prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier")


async def compact_response(request: web.Request) -> web.Response:
    st = request.app[STATE]
    arrived, now = time.perf_counter(), time.time()
    body = await read_json(request)
    unknown = next((k for k in body if k not in ACCEPTED), None)
    if unknown is not None:
        raise bad_param(unknown, f"Unknown parameter: '{unknown[:60]}'.", code="unknown_parameter")
    req = parse_responses({k: body[k] for k in PASSED if k in body}, st.settings.server.max_image_bytes)
    check_model(st, req.chat.model, kind="generate")
    turns = history_of(st, req) + tuple(req.chat.messages)
    kept = [_user_item(t) for t in turns if t.role == "user"]
    answer = await summarize(st, req.chat.model, req.instructions, turns, now, arrived)
    return web.json_response({"id": answer.id, "object": "response.compaction", "created_at": int(now),
                              "output": kept + [compaction_item(answer.out.text().strip())],
                              "usage": answer.body("completed")["usage"]})


def _user_item(turn: ChatTurn) -> dict:
    parts = turn.parts or (turn.content,)
    return {"id": item_id("msg"), "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": p} if isinstance(p, str) else _image(p) for p in parts]}


def _image(p: ImagePart) -> dict:
    url = p.url or f"data:{p.mime_type or 'image/png'};base64,{base64.b64encode(p.data).decode()}"
    return {"type": "input_image", "image_url": url, "detail": p.detail}
