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


_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


class _ArgsScanner:
    """Finds where a JSON object that starts at text[start] ends, reading it as it grows."""

    def __init__(self, start: int):
        self.pos, self.depth, self.in_str, self.esc = start, 0, False, False
        self.done = False

    def advance(self, text: str) -> int:
        """Scans what arrived; returns the end (exclusive) of the object seen so far."""
        while self.pos < len(text) and not self.done:
            c = text[self.pos]
            self.pos += 1
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
            elif c == '"':
                self.in_str = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                self.done = self.depth == 0
        return self.pos


class CallStream:
    """One streamed choice with tools. Content goes out as it comes until the answer turns out
    to be a call (a leading JSON object, or a <tool_call> block anywhere). From there a call whose
    JSON starts with its name and then its arguments object is streamed as the model writes it:
    a first tool_calls delta with id, type and name, then the arguments text piece by piece.
    Calls written any other way are read whole at the end. Held text that is no call is
    released as content."""

    def __init__(self, names: set[str]):
        self.names = names
        self.held = ""
        self.mode = "undecided"   # undecided | content | call
        self.streamed = 0         # calls whose deltas went out
        self._scan: _ArgsScanner | None = None   # the call being streamed
        self._sent_to = 0         # held[:_sent_to] is accounted for (content or streamed calls)

    def push(self, text: str) -> tuple[str, list[dict]]:
        """(content to send now, tool_calls deltas to send now)."""
        self.held += text
        if self.mode == "undecided":
            s = self.held.lstrip()
            if not s or (OPEN.startswith(s) and s != OPEN):
                return "", []
            if s.startswith("{") or s.startswith(OPEN):
                self.mode = "call"
            else:
                self.mode = "content"
        if self.mode == "call":
            return "", self._stream_calls()
        i = self.held.find(OPEN)
        if i >= 0:
            out, self.held, self.mode = self.held[:i], self.held[i:], "call"
            return out, self._stream_calls()
        keep = next((k for k in range(min(len(OPEN) - 1, len(self.held)), 0, -1)
                     if self.held.endswith(OPEN[:k])), 0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out, []

    def _stream_calls(self) -> list[dict]:
        deltas = []
        while True:
            if self._scan is not None:
                end = self._scan.advance(self.held)
                if end > self._sent_to:
                    piece = self.held[self._sent_to:end]
                    if deltas and deltas[-1]["index"] == self.streamed - 1:    # the call's first delta
                        deltas[-1]["function"]["arguments"] += piece
                    else:
                        deltas.append({"index": self.streamed - 1, "function": {"arguments": piece}})
                    self._sent_to = end
                if not self._scan.done:
                    return deltas
                self._scan = None
            head = self._next_head()
            if head is None:
                return deltas
            name, args_at = head
            call = ToolCall("call_" + uuid.uuid4().hex[:24], name, "")
            deltas.append(call.body(self.streamed))
            self.streamed += 1
            self._scan, self._sent_to = _ArgsScanner(args_at), args_at

    def _next_head(self) -> tuple[str, int] | None:
        """The next call's name and where its arguments object starts, once both are written."""
        rest = self.held[self._sent_to:]
        if self.streamed == 0 and rest.lstrip().startswith("{"):
            at = self._sent_to + len(rest) - len(rest.lstrip())
        else:
            j = rest.find(OPEN)
            if j < 0:
                return None
            k = j + len(OPEN)
            at = self._sent_to + k + len(rest[k:]) - len(rest[k:].lstrip())
        m = _HEAD.match(self.held, at)
        if m is None:
            return None
        try:
            name = json.loads(m.group(1))
        except ValueError:
            return None
        if name not in self.names:
            return None
        return name, m.end()

    def finish(self) -> tuple[str, list[dict]]:
        """(content still to send, tool_calls deltas still to send). A call cut short (the
        answer hit its length) keeps the arguments sent so far."""
        held = self.held
        self.held = ""
        if self.mode != "call":
            return held, []
        if self.streamed:
            if self.cut_short:
                return "", []
            _, more = parse_tool_calls(held[self._sent_to:], self.names)
            return "", [c.body(self.streamed + k) for k, c in enumerate(more)]
        content, calls = parse_tool_calls(held, self.names)
        if calls:
            return content, [c.body(k) for k, c in enumerate(calls)]
        return held, []

    def step(self, text: str, last: bool) -> tuple[str, list[dict], bool]:
        """One piece of the answer (`last` on its final piece): (content to send, tool_calls
        deltas to send, whether the choice ends as tool calls, i.e. with complete calls)."""
        out, deltas = self.push(text)
        if not last:
            return out, deltas, False
        rest, more = self.finish()
        return out + rest, deltas + more, bool(self.streamed or more) and not self.cut_short

    @property
    def cut_short(self) -> bool:
        """A streamed call's arguments were still open when the answer ended."""
        return self._scan is not None
