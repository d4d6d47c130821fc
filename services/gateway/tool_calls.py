"""The model's tool calls, read back from its text.

Two shapes are recognised, matching what the tokenizer puts in the prompt (tool_prompt.py) and
what tool-trained models of the ChatML family write: one or more
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (text before the first block
stays the message content), or an answer that is nothing but such a JSON object (what a forced
tool_choice produces; Llama-style "parameters" is accepted for "arguments"). Anything else is
plain content.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
OPEN = "<tool_call>"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str   # JSON text

    def body(self, index: int | None = None) -> dict:
        d = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            d = {"index": index, **d}
        return d


def _call(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return ToolCall("call_" + uuid.uuid4().hex[:24], obj["name"], json.dumps(args, ensure_ascii=False))


def parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """(content left over, calls). Calls of functions not in `names` are not calls."""
    calls: list[ToolCall] = []
    head = text
    if OPEN in text:
        head = text[:text.index(OPEN)]
        for m in _BLOCK.finditer(text):
            try:
                c = _call(json.loads(m.group(1)))
            except ValueError:
                c = None
            if c is not None and c.name in names:
                calls.append(c)
        if calls:
            return head.strip(), calls
        return text, []
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            c = _call(json.loads(stripped))
        except ValueError:
            c = None
        if c is not None and c.name in names:
            return "", [c]
    return text, []


class CallStream:
    """One streamed choice with tools: content goes out as it comes until the answer turns out to
    be a call (a leading JSON object, or a <tool_call> block anywhere); from there on the text is
    held and read as calls at the end. Held text that is not a call is released as content."""

    def __init__(self, names: set[str]):
        self.names = names
        self.held = ""
        self.mode = "undecided"   # undecided | content | call

    def push(self, text: str) -> str:
        self.held += text
        if self.mode == "call":
            return ""
        if self.mode == "undecided":
            s = self.held.lstrip()
            if not s or (OPEN.startswith(s) and s != OPEN):
                return ""
            self.mode = "call" if s.startswith("{") or s.startswith(OPEN) else "content"
            if self.mode == "call":
                return ""
        i = self.held.find(OPEN)
        if i >= 0:
            out, self.held, self.mode = self.held[:i], self.held[i:], "call"
            return out
        keep = next((k for k in range(min(len(OPEN) - 1, len(self.held)), 0, -1)
                     if self.held.endswith(OPEN[:k])), 0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still to send, calls)."""
        held, self.held = self.held, ""
        if self.mode == "call":
            content, calls = parse_tool_calls(held, self.names)
            if calls:
                return content, calls
        return held, []
