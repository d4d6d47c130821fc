"""Compaction items of the Responses API: what POST /v1/responses/compact returns in place of a
conversation's assistant turns and tool traffic, and what a later request sends back in its
`input` to continue from that point.

The item carries the model's summary of the conversation in `encrypted_content`. This server
holds no key, so the content is not encrypted: it is the summary's UTF-8 text in base64 behind a
version prefix, opaque to a client as the API promises, readable by anyone who holds the item,
and checked when it comes back (anything else is a 400 naming the item). In a prompt the summary
is an assistant turn, so the user turns kept before it and the next user turn after it alternate
as chat templates expect. An item made by `context_management` inside a response stands for
everything before it: in an input, the turns before it (system and developer turns aside) are
left out.
"""
from __future__ import annotations

import base64
import binascii
from npuflow.gateway.client import ChatTurn
from npuflow.gateway.errors import bad_param
from npuflow.gateway.responses_output import item_id
from npuflow.gateway.validation import type_error

PREFIX = "npuflow.compaction.v1:"
PREFIX_ALL = "npuflow.compaction.v1.all:"    # made inside a response: it stands for every turn before it
INTRO = "Summary of the conversation so far:\n"


def compaction_item(summary: str, replaces_all: bool = False) -> dict:
    """A compaction item holding summary; `replaces_all` (context_management's) when it stands for
    every turn before it, user turns included, rather than for all but the user turns kept
    before it (POST /v1/responses/compact's)."""
    content = (PREFIX_ALL if replaces_all else PREFIX) + base64.b64encode(summary.encode()).decode()
    return {"id": item_id("cmp"), "type": "compaction", "encrypted_content": content}


def replaces_all(item: dict) -> bool:
    content = item.get("encrypted_content")
    return isinstance(content, str) and content.startswith(PREFIX_ALL)


def summary_of(item: dict, param: str) -> str:
    """The summary a compaction item holds; a 400 naming param.encrypted_content when it is not
    one this server wrote."""
    content = item.get("encrypted_content")
    if not isinstance(content, str):
        raise type_error(f"{param}.encrypted_content", "a string", content)
    try:
        prefix = next((p for p in (PREFIX_ALL, PREFIX) if content.startswith(p)), None)
        if prefix is None:
            raise ValueError
        return base64.b64decode(content[len(prefix):], validate=True).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_param(f"{param}.encrypted_content", "This compaction item was not made by this server: send "
                                                      "the item POST /v1/responses/compact returned, unchanged.",
                        code="invalid_encrypted_content") from None


def summary_turn(item: dict, param: str) -> ChatTurn:
    return ChatTurn(role="assistant", content=INTRO + summary_of(item, param))


def listed(item: dict) -> dict:
    """A compaction input item as GET .../input_items lists it."""
    return {"id": item.get("id") or item_id("cmp"), "type": "compaction", "encrypted_content": item["encrypted_content"]}

