"""The prompt of a Responses request: its instructions (a system turn), the conversation of its
`previous_response_id` (from the store) or the items of its `conversation` (conversations.py),
then its own input, encoded by the model's chat template.

With `truncation: "auto"` a conversation over the model's context loses turns from its start
until it fits: system and developer turns stay, and a tool result whose call was dropped goes
with it. The fewest turns are dropped (a binary search over how many, one encoding per probe);
when even the last turn alone does not fit, the request is the usual 400. The stored
conversation stays whole, so a continuation is truncated again from the full history.
"""
from __future__ import annotations

from typing import Sequence

from npuflow.gateway.client import ChatTurn
from npuflow.gateway.conversations import Conversation
from npuflow.gateway.errors import ApiError
from npuflow.gateway.generation import ChatPrompt, chat_prompt, check_context
from npuflow.gateway.responses_request import KEPT, ResponsesRequest, parse_input
from npuflow.gateway.state import GatewayState
from npuflow.logs import get_logger

log = get_logger("gateway")


def history_of(st: GatewayState, req: ResponsesRequest) -> tuple[ChatTurn, ...]:
    """The conversation `previous_response_id` continues (400 for an unknown or evicted id, or one
    still being generated in the background), or the items of its `conversation` (404 unknown)."""
    if req.conversation is not None:
        return tuple(parse_input(conversation_of(st, req.conversation, "conversation").items,
                                 st.settings.server.max_image_bytes, "conversation.items"))
    if req.previous_response_id is None:
        return ()
    prev = st.responses.get(req.previous_response_id)
    if prev is None:
        raise ApiError(400, f"Previous response with id '{req.previous_response_id[:80]}' not found.",
                       param="previous_response_id", code="previous_response_not_found")
    if prev.response["status"] in ("queued", "in_progress"):
        raise ApiError(400, f"Previous response with id '{req.previous_response_id[:80]}' is still "
                            f"{prev.response['status'].replace('_', ' ')}: continue it once it has completed.",
                       param="previous_response_id", code="previous_response_in_progress")
    return prev.history


def conversation_of(st: GatewayState, conv_id: str, param: str) -> Conversation:
    conv = st.conversations.get(conv_id)
    if conv is None:
        raise ApiError(404, f"Conversation with id '{conv_id[:80]}' not found.", param=param, code="not_found")
    return conv


def without_first(turns: Sequence[ChatTurn], k: int) -> list[ChatTurn]:
    """turns less their first k turns that are not system or developer turns, and the tool
    results that then answer no call."""
    out, dropped, orphan = [], 0, False
    for t in turns:
        if t.role in KEPT:
            out.append(t)
        elif dropped < k:
            dropped += 1
            orphan = True
        elif orphan and t.role == "tool":
            continue
        else:
            orphan = False
            out.append(t)
    return out


async def encode(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...],
                 drop: int = 0) -> ChatPrompt:
    chat = req.chat
    system = [ChatTurn(role="system", content=req.instructions)] if req.instructions else []
    turns = without_first(list(history) + list(chat.messages), drop)
    return await chat_prompt(st, chat.model, system + turns, chat.tools_json, chat.template_kwargs_json)


def fits(prompt: ChatPrompt, context_length: int, max_tokens: int | None) -> bool:
    try:
        check_context(context_length, len(prompt.token_ids), max_tokens, "input")
    except ApiError:
        return False
    return True


async def truncated(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...],
                    context_length: int, too_long: ApiError) -> ChatPrompt:
    """The prompt with the fewest leading turns dropped that fits context_length; raises too_long
    (the full prompt's error) when keeping only the last turn does not fit either."""
    droppable = sum(1 for t in list(history) + list(req.chat.messages) if t.role not in KEPT) - 1
    if droppable < 1:
        raise too_long
    best = await encode(st, req, history, droppable)
    if not fits(best, context_length, req.chat.max_tokens):
        raise too_long
    lo, hi = 0, droppable          # dropping lo turns is too long, dropping hi fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = await encode(st, req, history, mid)
        if fits(p, context_length, req.chat.max_tokens):
            hi, best = mid, p
        else:
            lo = mid
    log.info("responses truncation dropped turns", model=req.chat.model, dropped=hi,
             prompt_tokens=len(best.token_ids), context_length=context_length)
    return best


def context_of(st: GatewayState, model: str) -> int:
    """The model's context length as its worker reported it (0 while that is not known)."""
    info = next((m for m in st.models.models() if m.id == model), None)
    return info.context_length if info is not None else 0
