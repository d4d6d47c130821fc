"""A conversation summarized by its own model, for POST /v1/responses/compact and for
`context_management` compaction inside a response (responses_context.py): the turns, then a last
user turn asking for a summary (PROMPT), answered greedily with thinking off in at most
SUMMARY_TOKENS tokens (a quarter of the context on a smaller model, and no more than the context
leaves after the prompt, but at least 16), cut from its start as `truncation: "auto"` cuts a
conversation that still does not fit. Nothing is stored.
"""
from __future__ import annotations

from typing import Sequence

from npuflow.gateway.client import ChatTurn
from npuflow.gateway.generation import deadline_unix_ms
from npuflow.gateway.responses_answer import Answer, generate, prepared
from npuflow.gateway.responses_prompt import context_of, encode
from npuflow.gateway.responses_request import MIN_OUTPUT_TOKENS, parse_responses
from npuflow.gateway.state import GatewayState

SUMMARY_TOKENS = 512
PROMPT = ("Summarize the conversation above for someone who will continue it without seeing it: the user's "
          "goals, what has been decided, found or done (with names, numbers and code), and what is still open. "
          "Reply with the summary only.")


async def summarize(st: GatewayState, model: str, instructions: str | None, turns: Sequence[ChatTurn],
                    now: float, arrived: float) -> Answer:
    """The finished Answer whose text (`answer.out.text()`) is the summary of turns."""
    req = parse_responses({"model": model, "input": [], "instructions": instructions, "store": False,
                           "truncation": "auto", "temperature": 0, "reasoning": {"effort": "none"}})
    req.chat.messages = list(turns) + [ChatTurn(role="user", content=PROMPT)]
    context = context_of(st, model)
    budget = min(SUMMARY_TOKENS, max(MIN_OUTPUT_TOKENS, context // 4)) if context else SUMMARY_TOKENS
    encoded = None
    if context:   # a shorter summary rather than turns dropped from a conversation that nearly fills the context
        encoded = await encode(st, req, ())
        budget = max(MIN_OUTPUT_TOKENS, min(budget, context - len(encoded.token_ids)))
    req.chat.max_tokens = budget     # (the prompt's encoding does not depend on it)
    answer, params, ticket = await prepared(st, req, (), now, deadline_unix_ms(st, now), encoded)
    with ticket:
        await generate(st, answer, params, arrived)
    answer.out.finish("completed")
    return answer
