"""A response's output items, built piece by piece as the model writes, with the typed stream
events that announce each step. One builder serves both ways of answering: a streamed response
writes the events as they come, a whole one only keeps the items.

Items, in the order the model writes them: a `reasoning` item (a thinking model's block,
as `reasoning_text` content), a `message` item (the answer's text as one `output_text` part,
with its logprobs when asked), and a `function_call` item per tool call (tool_calls.CallStream
tells calls from content, streaming a call's arguments as they are written). Text after a call
opens a new message item.
"""
from __future__ import annotations

import uuid

from npuflow.gateway.openai_chat import chat_logprobs
from npuflow.gateway.tool_calls import CallStream


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputItems:
    def __init__(self, names: set[str] | None, logprobs: bool):
        self.items: list[dict] = []
        self.events: list[dict] = []     # not yet sent (the caller takes them: take_events)
        self.calls = CallStream(names) if names is not None else None
        self.called = False              # the answer ended as complete tool calls
        self._logprobs = logprobs
        self._reasoning: int | None = None   # output index of the open reasoning item
        self._message: int | None = None     # ... of the open message item
        self._call_items: dict[int, int] = {}   # CallStream's call index -> output index
        self._held_lps: list = []

    def take_events(self) -> list[dict]:
        out, self.events = self.events, []
        return out

    def _open(self, item: dict) -> int:
        self.items.append(item)
        i = len(self.items) - 1
        shown = dict(item, status="in_progress")
        if "content" in item:
            shown["content"] = list(item["content"])
        self.events.append({"type": "response.output_item.added", "output_index": i, "item": shown})
        return i

    def add_done(self, item: dict) -> None:
        """An item that is whole already (a compaction item): added and done at once."""
        self.items.append(item)
        i = len(self.items) - 1
        self.events += [{"type": "response.output_item.added", "output_index": i, "item": item},
                        {"type": "response.output_item.done", "output_index": i, "item": item}]

    def _part_event(self, kind: str, i: int, part: dict) -> None:
        self.events.append({"type": kind, "item_id": self.items[i]["id"], "output_index": i, "content_index": 0,
                            "part": part})

    def _close(self, i: int | None, status: str) -> None:
        if i is None:
            return
        item = self.items[i]
        item["status"] = status
        iid = item["id"]
        if item["type"] == "reasoning":
            text = item["content"][0]["text"]
            self.events.append({"type": "response.reasoning_text.done", "item_id": iid, "output_index": i,
                                "content_index": 0, "text": text})
            self._part_event("response.content_part.done", i, dict(item["content"][0]))
        elif item["type"] == "message":
            part = item["content"][0]
            self.events.append({"type": "response.output_text.done", "item_id": iid, "output_index": i,
                                "content_index": 0, "text": part["text"], "logprobs": part["logprobs"]})
            self._part_event("response.content_part.done", i, dict(part))
        else:
            self.events.append({"type": "response.function_call_arguments.done", "item_id": iid, "output_index": i,
                                "name": item["name"], "arguments": item["arguments"]})
        self.events.append({"type": "response.output_item.done", "output_index": i, "item": item})

    def _thought(self, text: str) -> None:
        if self._reasoning is None:
            self._reasoning = self._open({"type": "reasoning", "id": item_id("rs"), "summary": [],
                                          "content": []})
            self.items[self._reasoning]["content"].append({"type": "reasoning_text", "text": ""})
            self._part_event("response.content_part.added", self._reasoning, {"type": "reasoning_text", "text": ""})
        part = self.items[self._reasoning]["content"][0]
        part["text"] += text
        self.events.append({"type": "response.reasoning_text.delta", "item_id": self.items[self._reasoning]["id"],
                            "output_index": self._reasoning, "content_index": 0, "delta": text})

    def _text(self, text: str, lps: list) -> None:
        entries = chat_logprobs(lps)["content"] if self._logprobs and lps else []
        if not text and not entries:
            return
        if self._message is None:
            self._message = self._open({"type": "message", "id": item_id("msg"), "role": "assistant",
                                        "content": []})
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.items[self._message]["content"].append(dict(empty, annotations=[], logprobs=[]))
            self._part_event("response.content_part.added", self._message, empty)
        part = self.items[self._message]["content"][0]
        part["text"] += text
        part["logprobs"].extend(entries)
        self.events.append({"type": "response.output_text.delta", "item_id": self.items[self._message]["id"],
                            "output_index": self._message, "content_index": 0, "delta": text, "logprobs": entries})

    def _call_deltas(self, deltas: list[dict]) -> None:
        for d in deltas:
            k = d["index"]
            fn = d.get("function", {})
            if k not in self._call_items:
                self._close(self._message, "completed")
                self._message = None
                self._call_items[k] = self._open({"type": "function_call", "id": item_id("fc"), "call_id": d["id"],
                                                  "name": fn.get("name", ""), "arguments": ""})
            i = self._call_items[k]
            piece = fn.get("arguments", "")
            if piece:
                self.items[i]["arguments"] += piece
                self.events.append({"type": "response.function_call_arguments.delta",
                                    "item_id": self.items[i]["id"], "output_index": i, "delta": piece})

    def feed(self, thought: str, text: str, lps: list, last: bool) -> None:
        """One piece: its reasoning text, its answer text (and that text's logprobs); `last` on the
        answer's final piece."""
        if thought:
            self._thought(thought)
        elif self._reasoning is not None and (text or last):
            self._close(self._reasoning, "completed")
            self._reasoning = None
        if self.calls is None:
            self._text(text, lps)
            return
        # text that may be a call is held with its logprobs; they go out with the text they spell
        text, deltas, called = self.calls.step(text, last)
        self.called = self.called or called
        self._held_lps.extend(lps)
        if text:
            self._text(text, self._held_lps)
            self._held_lps = []
        self._call_deltas(deltas)

    def finish(self, status: str) -> None:
        """Close the items still open: `completed`, or `incomplete` (cut by max_output_tokens)."""
        self._close(self._reasoning, status)
        self._close(self._message, status)
        self._reasoning = self._message = None
        for i in self._call_items.values():
            if self.items[i].get("status") is None:
                self._close(i, status)

    def text(self) -> str:
        """The answer's text over its message items (what the SDK's `output_text` gives)."""
        return "".join(c["text"] for it in self.items if it["type"] == "message" for c in it["content"])

    def calls_made(self) -> list[tuple[str, str, str, str]]:
        """(call id, "function", name, arguments) of each function call item: chat's tool_calls."""
        return [(it["call_id"], "function", it["name"], it["arguments"]) for it in self.items
                if it["type"] == "function_call"]
