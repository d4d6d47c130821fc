"""`context_management: [{"type": "compaction", "compact_threshold": N}]` on a response: when its
prompt (instructions, the conversation it continues, its input) is over N tokens (by default
DEFAULT_SHARE of the model's context: over_threshold), the turns before its last user turn are
summarized by the model first (compact, with responses_summary.py; a background response does
this in its run, after it has answered `queued`) and the response is made from [system and
developer turns, the summary, the last user turn and what follows it]. The summary is the response's first output
item, a compaction item that stands for every turn before that user turn: sent back in a later
input, or held by a stored response or a conversation, it rebuilds the same prompt
(responses_request.with_compaction), so the conversation stays short from then on.
"""
from __future__ import annotations

from npuflow.gateway.client import ChatTurn
from npuflow.gateway.responses_compaction import compaction_item, summary_turn
from npuflow.gateway.generation import ChatPrompt
from npuflow.gateway.responses_prompt import context_of, encode
from npuflow.gateway.responses_request import KEPT, ResponsesRequest, with_compaction
from npuflow.gateway.responses_summary import summarize
from npuflow.gateway.state import GatewayState
from npuflow.logs import get_logger

log = get_logger("gateway")
DEFAULT_SHARE = 0.8     # compact_threshold null: compaction once the prompt is over this share of the context


class Compaction:
    def __init__(self, item: dict, usage: dict):
        self.item = item      # the compaction output item
        self.usage = usage    # the summary's own usage (added to the response's)


async def over_threshold(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...]
                         ) -> tuple[bool, ChatPrompt | None]:
    """(whether this request is to be compacted, the prompt encoded for the check, or None when
    it asks for no compaction). It is not when the prompt is within the threshold or when nothing
    before its last user turn can be summarized."""
    if req.compact_at is None:
        return False, None
    threshold = req.compact_at or int(context_of(st, req.chat.model) * DEFAULT_SHARE)
    if threshold <= 0:
        return False, None
    prompt = await encode(st, req, history)
    turns = list(history) + list(req.chat.messages)
    last = _last_user(turns)
    return len(prompt.token_ids) > threshold and not all(t.role in KEPT for t in turns[:last]), prompt


def _last_user(turns: list[ChatTurn]) -> int:
    return max((i for i, t in enumerate(turns) if t.role == "user"), default=len(turns))


async def compact(st: GatewayState, req: ResponsesRequest, history: tuple[ChatTurn, ...], now: float,
                  arrived: float) -> tuple[tuple[ChatTurn, ...], Compaction]:
    """Summarize the turns before the last user turn (over_threshold said so): (the history to make
    the response from, the compaction made). req.chat.messages becomes the turns from the last
    user turn on."""
    turns = list(history) + list(req.chat.messages)
    last = _last_user(turns)
    answer = await summarize(st, req.chat.model, req.instructions, turns[:last], now, arrived)
    item = compaction_item(answer.out.text().strip(), replaces_all=True)
    # the prompt a later input holding the item rebuilds (with_compaction), cut after the summary
    rebuilt = with_compaction(turns, summary_turn(item, "compaction"), True)
    cut = sum(1 for t in turns[:last] if t.role in KEPT) + 1
    req.chat.messages = rebuilt[cut:]
    usage = answer.body("completed")["usage"]
    log.info("response context compacted", model=req.chat.model, summarized_turns=last,
             summary_input_tokens=usage["input_tokens"], summary_tokens=usage["output_tokens"])
    return tuple(rebuilt[:cut]), Compaction(item, usage)
